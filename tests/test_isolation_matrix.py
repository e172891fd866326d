"""Tenant isolation, generated from the catalog: every tenant table and every routine pyflows_app may
execute, tried by tenant B against tenant A's rows, by pyflows_app without a context, and (for the
admin routines) by a role that is not in pyflows_admin. A table or routine added later is covered
without editing this file.

Tested as pyflows_test_app, a LOGIN role that is not a superuser (superusers bypass row-level security).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from pyflows.api import Flows
from pyflows.testing import Tenant, bind

from .helpers import Routine, app_routines, call_routine, fingerprint, write_flow_tree

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

Connect = Callable[..., psycopg.Connection[Any]]

# The routines that bind a context: pyflows_app is trusted to bind the context of the tenant it acts
# for (docs/security.md); the matrix is about what a bound (or unbound) session can reach.
# _set_local is the SET LOCAL they (and the lock bounds) go through, no more than the role's own SET LOCAL.
BINDERS = {"set_context", "set_session_context", "clear_context", "_set_local"}
# The context's readers answer NULL without a context; that is their documented answer. layout()
# describes the database (its engine and how its tables are laid out), no tenant's rows.
CONTEXT_READERS = {"current_client_id", "current_engagement_id", "current_actor", "layout"}
# Internal helpers (names starting with "_") that pyflows_app may execute, because the API functions
# running as the caller use them, do nothing the role could not do with plain SQL; when they are
# refused, it is by the same checks plain SQL meets: row-level security or privilege (42501), a key
# (23503, 23505) or a check constraint (23514). docs/security.md says so.
PLAIN_SQL_REFUSALS = {"42501", "23503", "23505", "23514"}
MARKER = "secret-of-tenant-a"


@dataclass
class World:
    a: Tenant
    b: Tenant
    a_flow: uuid.UUID
    a_done_flow: uuid.UUID
    a_event: int
    a_purge_event: int
    a_queue_id: int
    b_flow: uuid.UUID

    def secrets(self, given: list[Any]) -> list[str]:
        """Text about tenant A that must never appear in anything tenant B is shown, except what B
        itself passed in (an error may echo the caller's own arguments)."""
        echoed = " ".join(str(g) for g in given)
        known = [str(self.a.client_id), str(self.a.engagement_id), str(self.a_flow), str(self.a_done_flow), MARKER,
                 "a-admin"]
        return [s for s in known if s not in echoed]


@pytest.fixture
def world(owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant,
          pyflows_role_dsn: Callable[[str], str]) -> World:
    with owner.transaction():
        a_flow = write_flow_tree(owner, tenant_a, status="paused", name=f"{MARKER} paused").flow_id
        doomed = write_flow_tree(owner, tenant_a, status="completed", name=f"{MARKER} doomed").flow_id
        a_done = write_flow_tree(owner, tenant_a, status="completed", name=f"{MARKER} done").flow_id
        purged = write_flow_tree(owner, tenant_a, status="cancelled", name=f"{MARKER} purged").flow_id
        b_flow = write_flow_tree(owner, tenant_b, status="completed", name="b's own").flow_id
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        deleted = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "a-admin").delete(
            doomed, f"{MARKER} reason", force=True)
        purging = conn.execute(  # a purge left running (as after a crash): its event is still open
            "select pyflows.set_session_context(%s, %s, 'a-admin'), "
            "pyflows._purge_begin(%s, 'left running', true, 10)",
            (tenant_a.client_id, tenant_a.engagement_id, purged)).fetchone()[1]
        conn.execute("select pyflows.clear_context()")
    queue_id = owner.execute("select id from pyflows.file_cleanup_queue where event_id = %s",
                             (deleted.event_id,)).fetchone()[0]
    return World(tenant_a, tenant_b, a_flow, a_done, deleted.event_id, purging, queue_id, b_flow)


def argument(world: World, name: str, type_: str) -> Any:
    """A value aimed at tenant A's rows (ids) or one that passes validation (everything else)."""
    if type_ == "uuid":
        if "client" in name:
            return world.a.client_id
        if "engagement" in name:
            return world.a.engagement_id
        return world.a_flow
    if type_ == "uuid[]":
        return [world.a_flow, world.a_done_flow]
    if type_ == "bigint":
        return {"p_id": world.a_queue_id, "p_event": world.a_purge_event}.get(name, world.a_event)
    if type_ == "bigint[]":
        return [world.a_event, world.a_purge_event, world.a_queue_id]
    text_values = {"p_status": "paused", "p_phase": "data_import", "p_filter": "all", "p_table": "assets",
                   "p_storage_uri": "file:///tmp/probe.csv", "p_filename": "probe.csv"}
    scalar: dict[str, Any] = {
        "text": text_values.get(name, "probe"), "integer": 0 if name in ("p_offset", "p_batches") else 10,
        "boolean": True, "interval": timedelta(seconds=1), "jsonb": Jsonb({}), "text[]": ["paused"],
        "timestamp with time zone": datetime(2000, 1, 1, tzinfo=UTC)}
    if type_ not in scalar:
        raise AssertionError(f"no probe value for a {type_} argument ({name}): teach this test that type")
    return scalar[type_]


def documented(routine: Routine, outcome: str) -> bool:
    return outcome == "ok" or outcome.startswith("PF") or (
        routine.name.startswith("_") and outcome in PLAIN_SQL_REFUSALS)


def admin_routines(routines: list[Routine]) -> list[Routine]:
    return [r for r in routines if r.name == "_require_admin" or "pyflows._require_admin()" in r.source]


def test_the_catalog_yields_the_api(owner: psycopg.Connection[Any]) -> None:
    names = {r.name for r in app_routines(owner)}
    assert {"start_flow", "delete_flow", "restore_flow", "purge_flow", "prune_audit", "list_audit_events"} <= names
    assert len(admin_routines(app_routines(owner))) >= 5


def probe_every_routine(world: World, owner: psycopg.Connection[Any], conn: psycopg.Connection[Any],
                        tenant: Tenant | None) -> list[str]:
    """Call every routine (but the binders) aimed at tenant A's rows, bound to tenant, and say what went wrong."""
    before = fingerprint(owner, world.a.client_id)
    problems = []
    for routine in app_routines(owner):
        if routine.name in BINDERS:
            continue
        args = [argument(world, n, t) for n, t in zip(routine.arg_names, routine.arg_types, strict=True)]
        outcome, shown = call_routine(conn, routine, args, tenant, keep=True)
        leaked = [s for s in world.secrets(args) if s in shown]
        if leaked:
            problems.append(f"{routine.signature}: shows {leaked}: {shown[:300]}")
        if not documented(routine, outcome):
            problems.append(f"{routine.signature}: refused with {outcome}, not its documented code: {shown[:300]}")
        if routine in admin_routines([routine]) and outcome != "PF403":
            problems.append(f"{routine.signature}: an admin routine answered a non-admin with {outcome}")
        if tenant is None and not routine.name.startswith("_") and routine.name not in CONTEXT_READERS and \
                outcome not in ("PF401", "PF403"):
            problems.append(f"{routine.signature}: an API routine answered without a context ({outcome})")
        if fingerprint(owner, world.a.client_id) != before:
            problems.append(f"{routine.signature}: changed tenant A's rows")
            before = fingerprint(owner, world.a.client_id)
    return problems


def test_tenant_b_reaches_nothing_of_tenant_a_through_any_routine(
        world: World, owner: psycopg.Connection[Any], pyflows_connect: Connect) -> None:
    problems = probe_every_routine(world, owner, pyflows_connect("app"), world.b)
    assert problems == [], "\n".join(problems)


def test_without_a_context_no_routine_reaches_any_tenant(world: World, owner: psycopg.Connection[Any],
                                                         pyflows_connect: Connect) -> None:
    before = fingerprint(owner)
    problems = probe_every_routine(world, owner, pyflows_connect("app"), None)
    assert problems == [], "\n".join(problems)
    assert fingerprint(owner) == before


def tenant_tables(owner: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(table, tenant column) of every table in schema pyflows with row-level security, and of every
    partition of one (which has none: the parent's policies guard it, or its own insert trigger)."""
    return owner.execute("""
        select c.relname, case when c.relname = 'clients' then 'id' else 'client_id' end
          from pg_class c where c.relnamespace = 'pyflows'::regnamespace and c.relkind in ('r', 'p')
           and (c.relrowsecurity or c.relispartition)
         order by 1""").fetchall()


# A partition without row-level security (one that takes COPY): what it must be to be safe.
PARTITIONS_WITHOUT_RLS = """
    select c.oid::regclass::text, p.relrowsecurity and p.relforcerowsecurity,
           coalesce((select array_agg(a.privilege_type::text order by a.privilege_type)
                       from aclexplode(c.relacl) a where a.grantee <> c.relowner), '{}'),
           exists (select from pg_constraint k where k.conrelid = c.oid and k.contype = 'c'
                     and pg_get_constraintdef(k.oid) like '%_row_of_another_tenant(client_id, engagement_id)%')
      from pg_class c
      join pg_inherits i on i.inhrelid = c.oid
      join pg_class p on p.oid = i.inhparent
     where c.relnamespace = 'pyflows'::regnamespace and c.relkind = 'r' and not c.relrowsecurity
     order by 1"""


def test_every_table_with_a_tenant_column_has_row_level_security(owner: psycopg.Connection[Any]) -> None:
    """Every table with a client_id has forced row-level security, but a partition: its parent has it, it
    grants no role but its owner anything but INSERT (nothing on Citus), and a CHECK constraint checks
    every inserted row's tenant before its keys do."""
    unprotected = owner.execute("""
        select c.oid::regclass::text from pg_class c
         where c.relnamespace = 'pyflows'::regnamespace and c.relkind in ('r', 'p') and not c.relispartition
           and exists (select from pg_attribute a where a.attrelid = c.oid and a.attname = 'client_id')
           and not (c.relrowsecurity and c.relforcerowsecurity)""").fetchall()
    assert unprotected == []
    assert len(tenant_tables(owner)) >= 10
    partitions = owner.execute(PARTITIONS_WITHOUT_RLS).fetchall()
    assert [p[0] for p in partitions] == ["pyflows.assets_default", "pyflows.raw_import_records_default"]
    on_citus = owner.execute("select exists (select from pg_extension where extname = 'citus')").fetchone()[0]
    for name, parent_protected, privileges, checked in partitions:
        # On Citus the application may not even insert (sql/090_scale_out.sql).
        assert parent_protected and privileges == ([] if on_citus else ["INSERT"]) and checked, name


@pytest.mark.parametrize("bound", ["tenant B", "no context"])
def test_no_table_statement_reaches_tenant_a(world: World, owner: psycopg.Connection[Any],
                                             pyflows_connect: Connect, bound: str) -> None:
    before = fingerprint(owner)
    conn = pyflows_connect("app")
    problems = []
    partitions = {p[0] for p in owner.execute(PARTITIONS_WITHOUT_RLS).fetchall()}
    for table, column in tenant_tables(owner):
        target = sql.Identifier("pyflows", table)
        victim = owner.execute(sql.SQL("select to_jsonb(t) from {} t where {} = %s limit 1").format(
            target, sql.Identifier(column)), (world.a.client_id,)).fetchone()
        assert victim is not None, f"the world has no {table} row of tenant A"
        statements = {
            "select": sql.SQL("select count(*) from {} where {} = %s").format(target, sql.Identifier(column)),
            "update": sql.SQL("update {} set {} = {} where {} = %s").format(
                target, sql.Identifier(column), sql.Identifier(column), sql.Identifier(column)),
            "delete": sql.SQL("delete from {} where {} = %s").format(target, sql.Identifier(column)),
        }
        for verb, statement in statements.items():
            if bound == "tenant B":
                bind(conn, world.b)
            try:
                cur = conn.execute(statement, (world.a.client_id,))
                reached = cur.fetchone()[0] if verb == "select" else cur.rowcount  # type: ignore[index]
                if reached:
                    problems.append(f"{verb} {table}: reached {reached} of tenant A's rows")
            except psycopg.Error as exc:
                if exc.sqlstate != "42501":  # no such privilege: refused before any row is read
                    problems.append(f"{verb} {table}: {exc.sqlstate} {exc}")
            conn.rollback()
        # Inserting tenant A's own row back: refused by the policy (or the privilege) before any
        # uniqueness check could tell that the row exists; or by the flow row rules, which judge the
        # values passed in (a flow is never inserted as 'deleting') and know nothing of tenant A.
        open_as_victim = f"pyflows.{table}" in partitions
        if bound == "tenant B":
            bind(conn, world.b)
        if open_as_victim:
            opened_for_victim(conn, victim[0])
        try:
            conn.execute(sql.SQL("insert into {} select * from jsonb_populate_record(null::{}, %s)").format(
                target, target), (Jsonb(victim[0]),))
            problems.append(f"insert into {table}: tenant A's row was accepted")
        except psycopg.Error as exc:
            if not refused_as_it_must(exc, table, bound, victim[0], partitions):
                problems.append(f"insert into {table}: {exc.sqlstate} {exc}")
        conn.rollback()
        # And by COPY, which PostgreSQL refuses into a table with row-level security; a partition that
        # takes it checks the rows by trigger.
        if bound == "tenant B":
            bind(conn, world.b)
        if open_as_victim:
            opened_for_victim(conn, victim[0])
        with owner.cursor().copy(sql.SQL("copy (select * from {} where {} = %s limit 1) to stdout").format(
                target, sql.Identifier(column)), (world.a.client_id,)) as out:
            line = b"".join(bytes(chunk) for chunk in out)
        try:
            with conn.cursor().copy(sql.SQL("copy {} from stdin").format(target)) as copy:
                copy.write(line)
            problems.append(f"copy into {table}: tenant A's row was accepted")
        except psycopg.Error as exc:
            copy_refused = exc.sqlstate == "0A000" and "row-level security" in str(exc)
            if not copy_refused and not refused_as_it_must(exc, table, bound, victim[0], partitions):
                problems.append(f"copy into {table}: {exc.sqlstate} {exc}")
        conn.rollback()
    assert problems == [], "\n".join(problems)
    assert fingerprint(owner) == before


def opened_for_victim(conn: psycopg.Connection[Any], victim: dict[str, Any]) -> None:
    """A COPY into a partition opened, by hand, for the victim row's own import and flow (the settings that
    begin_copy_* writes, which a client can set itself): the partition's own check of which import (flow) a
    COPY takes is passed, and the tenant check is what must refuse the row."""
    conn.execute("select set_config('pyflows.copy_import', %s, true), set_config('pyflows.copy_flow', %s, true)",
                 (victim.get("import_id") or "", victim.get("flow_id") or ""))


def refused_as_it_must(exc: psycopg.Error, table: str, bound: str, victim: dict[str, Any],
                       partitions: set[str]) -> bool:
    """Tenant A's row written back as the app login was refused as it must be: by the privilege or the
    policy (42501); a partition without row-level security, written straight with a COPY opened for the
    row's own import (flow), by its tenant CHECK constraint, PF403 in tenant B's context, and PF401 in
    none (by its statement trigger, before any row) (through its parent, the policy comes first); a
    flow row by the flow rules (never inserted as 'deleting'). On Citus an INSERT ... SELECT reaches
    the shards as a COPY, which PostgreSQL refuses on a table with row-level security before any row
    is written (docs/scale-out.md)."""
    citus_copy = exc.sqlstate == "0A000" and "COPY FROM not supported with row-level security" in str(exc)
    if citus_copy or exc.sqlstate == "42501" or (exc.sqlstate == "PF422" and victim.get("status") == "deleting"):
        return True
    if f"pyflows.{table}" in partitions:
        return exc.sqlstate == ("PF403" if bound == "tenant B" else "PF401")
    return False


def test_the_audit_shows_tenant_b_only_its_own_events(world: World, owner: psycopg.Connection[Any],
                                                       pyflows_connect: Connect) -> None:
    conn = pyflows_connect("app")
    bind(conn, world.b)
    assert conn.execute("select count(*) from pyflows_audit.events where client_id = %s",
                        (world.a.client_id,)).fetchone() == (0,)
    archives = [r[0] for r in owner.execute(
        "select c.relname from pg_class c where c.relnamespace = 'pyflows_audit'::regnamespace "
        "and c.relkind in ('r', 'v') and c.relname <> 'events'").fetchall()]
    assert len(archives) >= 16  # the archive views and their chunk tables
    for table in archives:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("select 1 from {} limit 1").format(sql.Identifier("pyflows_audit", table)))
        conn.rollback()
        bind(conn, world.b)


def test_a_context_naming_another_clients_engagement_is_refused(world: World, pyflows_connect: Connect) -> None:
    conn = pyflows_connect("app")
    for function in ("set_context", "set_session_context"):
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql.SQL("select pyflows.{}(%s, %s, 'b-user')").format(sql.Identifier(function)),
                         (world.b.client_id, world.a.engagement_id))
        assert caught.value.sqlstate == "PF404"
        shown = f"{caught.value.diag.message_primary} {caught.value.diag.message_detail}"
        assert world.secrets([world.b.client_id, world.a.engagement_id]) == [
            s for s in world.secrets([world.b.client_id, world.a.engagement_id]) if s not in shown]
        conn.rollback()


def test_every_admin_routine_refuses_a_role_outside_pyflows_admin(world: World, owner: psycopg.Connection[Any],
                                                                  pyflows_connect: Connect) -> None:
    # pyflows_test_app is in pyflows_app, not pyflows_admin: the routines run (EXECUTE is granted) and
    # refuse it themselves; pyflows_test_outsider is in neither: it may not even run them.
    app, outsider = pyflows_connect("app"), pyflows_connect("outsider")
    routines = admin_routines(app_routines(owner))
    for routine in routines:
        args = [argument(world, n, t) for n, t in zip(routine.arg_names, routine.arg_types, strict=True)]
        assert call_routine(app, routine, args, world.b, keep=True)[0] == "PF403", routine.signature
        assert call_routine(outsider, routine, args, None, keep=True)[0] == "42501", routine.signature
