"""Attacks on pyflows by a hostile application login (a plain login granted only pyflows_app), a careless
worker and a DBA: each test reproduces one, and fails if the defence it names is taken away.

Where it can, the attack is generated from the catalog (every routine pyflows_app may execute, every type
and relation the code names), so a new function or table is attacked without anyone editing this file.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyflows.api import Flows
from pyflows.errors import FlowBusy, InvalidRequest
from pyflows.files import Storages, drain
from pyflows.testing import CitusCluster, Tenant, bind

from .helpers import (
    FLOW_TREE_TABLES,
    acting,
    app_routines,
    call_routine,
    fingerprint,
    mark_deleting,
    set_raw_context,
    write_flow_tree,
)
from .test_delete import tree
from .test_isolation_matrix import World, admin_routines, argument, world  # noqa: F401  (world is a fixture)

# Every attack holds on Citus too; where the cluster refuses the attack itself, the test says so
# (docs/scale-out.md).
pytestmark = pytest.mark.citus

Connect = Callable[..., psycopg.Connection[Any]]
BINDERS = {"set_context", "set_session_context", "clear_context"}


def sqlstate_of(conn: psycopg.Connection[Any], statement: str, *params: Any) -> str:
    """Run a statement in its own transaction: 'ok' (committed) or the SQLSTATE it failed with."""
    try:
        with conn.transaction():
            conn.execute(statement, params)
        return "ok"
    except psycopg.Error as exc:
        return exc.sqlstate or "?"


# ---- 1. no SECURITY DEFINER path can be hijacked through pg_temp ------------------------------------------

EVIL = """
    create function pg_temp.evil(pg_catalog.text) returns pg_catalog.bool language plpgsql as $$
    begin
        if current_user operator(pg_catalog.<>) session_user then
            raise exception 'HIJACKED: % ran the caller''s code', current_user;
        end if;
        return true;
    end
    $$"""

# Base types the code names: those of every column and signature in both schemas, and every base type
# of pg_catalog whose name appears as a word in a function body (local variables, casts).
TYPES = r"""
    with code as (select string_agg(p.prosrc, ' ') as src from pg_proc p
                   where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)),
    used as (
        select a.atttypid as oid from pg_attribute a join pg_class c on c.oid = a.attrelid
         where c.relnamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace) and a.attnum > 0
        union select unnest(p.proargtypes) from pg_proc p
         where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
        union select p.prorettype from pg_proc p
         where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
        union select t.oid from pg_type t, code where t.typnamespace = 'pg_catalog'::regnamespace
           and code.src ~* ('\m' || t.typname || '\M'))
    select distinct coalesce(e.typname, t.typname)
      from used join pg_type t on t.oid = used.oid left join pg_type e on e.oid = t.typelem and t.typcategory = 'A'
     where coalesce(e.typtype, t.typtype) = 'b'
       and coalesce(e.typnamespace, t.typnamespace) = 'pg_catalog'::regnamespace
     order by 1"""

# Relations the code could name unqualified: every relation of both schemas, and every relation of
# pg_catalog whose name appears in a function body.
RELATIONS = r"""
    with code as (select string_agg(p.prosrc, ' ') as src from pg_proc p
                   where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace))
    select distinct c.relnamespace::regnamespace::text, c.relname
      from pg_class c, code
     where c.relkind in ('r', 'v', 'p')
       and (c.relnamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
            or (c.relnamespace = 'pg_catalog'::regnamespace and code.src ~* ('\m' || c.relname || '\M')))
     order by 2"""


def plant_lookalikes(owner: psycopg.Connection[Any], conn: psycopg.Connection[Any]) -> tuple[list[str], list[str]]:
    """In conn's session: a temporary domain named like every type the code uses and a temporary view
    named like every relation it reads, each calling pg_temp.evil, which refuses to run as anyone but
    the session's own login."""
    types = [r[0] for r in owner.execute(TYPES).fetchall()]
    relations = owner.execute(RELATIONS).fetchall()
    with conn.transaction():
        conn.execute(EVIL)
        for name in types:
            conn.execute(sql.SQL("create domain pg_temp.{} as pg_catalog.{} "
                                 "check (pg_temp.evil(value::pg_catalog.text))").format(sql.Identifier(name),
                                                                                       sql.Identifier(name)))
        readable = []
        for schema, name in relations:
            if not owner.execute("select has_table_privilege('pyflows_test_app', %s, 'SELECT')",
                                 (f"{schema}.{name}",)).fetchone()[0]:
                continue
            columns = [r[0] for r in owner.execute(
                "select a.attname from pg_attribute a join pg_type ty on ty.oid = a.atttypid where a.attrelid = "
                "%s::regclass and a.attnum > 0 and not a.attisdropped and ty.typtype <> 'p' order by a.attnum",
                (f"{schema}.{name}",)).fetchall()]
            conn.execute(sql.SQL("create view pg_temp.{} as select {} from {} as t "
                                 "where pg_temp.evil(t::pg_catalog.text)").format(
                sql.Identifier(name), sql.SQL(", ").join(sql.Identifier("t", c) for c in columns),
                sql.Identifier(schema, name)))
            readable.append(name)
    return types, readable


def test_the_repro_an_app_login_becoming_superuser_fails(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                          pyflows_connect: Connect) -> None:
    conn = pyflows_connect("app")
    with conn.transaction():
        conn.execute("""create function pg_temp.evil(pg_catalog.text) returns pg_catalog.bool language plpgsql as
                        $$begin execute format('alter role %I superuser', session_user); return true; end$$""")
        conn.execute("create domain pg_temp.text as pg_catalog.text check (pg_temp.evil(value))")
    outcome = sqlstate_of(conn, "select pyflows.set_context(%s, %s, 'x'), pyflows.start_flow('x')",
                          tenant_a.client_id, tenant_a.engagement_id)
    assert outcome == "ok"
    assert owner.execute("select rolsuper from pg_roles where rolname = 'pyflows_test_app'").fetchone() == (False,)


def test_lookalike_types_and_relations_never_run_as_the_owner(world: World,  # noqa: F811
                                                              owner: psycopg.Connection[Any],
                                                              pyflows_connect: Connect) -> None:
    conn = pyflows_connect("app")
    types, relations = plant_lookalikes(owner, conn)
    assert {"text", "uuid", "jsonb", "tid"} <= set(types)
    assert {"pg_roles", "discovery_flows", "events"} <= set(relations)
    problems = []
    # Every routine pyflows_app may execute, on tenant A's own rows (so the deep paths run), rolled back.
    for routine in app_routines(owner):
        if routine.name in BINDERS:
            continue
        args = [argument(world, n, t) for n, t in zip(routine.arg_names, routine.arg_types, strict=True)]
        outcome, shown = call_routine(conn, routine, args, world.a, keep=False)
        if "HIJACKED" in shown:
            problems.append(f"{routine.signature}: {shown[:300]}")
    # The trigger paths: deletes (archive, file queue), updates (flow rules), inserts (purge guard).
    for statement in (
            "delete from pyflows.discovery_flows where id = %(flow)s",
            "delete from pyflows.assets where flow_id = %(flow)s",
            "update pyflows.discovery_flows set status = 'running' where id = %(flow)s",
            "update pyflows.discovery_flows set status = 'deleting' where id = %(flow)s",
            "insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
            "values (%(client)s, %(engagement)s, %(flow)s, 'n', 'server')"):
        try:
            with conn.transaction(force_rollback=True):
                bind(conn, world.a)
                conn.execute(statement, {"flow": world.a_flow, "client": world.a.client_id,
                                         "engagement": world.a.engagement_id})
        except psycopg.Error as exc:
            if "HIJACKED" in str(exc):
                problems.append(f"{statement}: {exc}")
    assert problems == [], "\n".join(problems)
    assert owner.execute("select rolsuper from pg_roles where rolname = 'pyflows_test_app'").fetchone() == (False,)


def test_the_policy_helpers_resolve_nothing_through_the_callers_path(owner: psycopg.Connection[Any],
                                                                      tenant_a: Tenant,
                                                                      pyflows_connect: Connect) -> None:
    # The three helpers inlined into the policies have no SET clause (it would stop the inlining): they
    # must name every type by schema, so the caller's own look-alikes are never even used.
    conn = pyflows_connect("app")
    with conn.transaction():
        conn.execute("""create function pg_temp.tattle(pg_catalog.text) returns pg_catalog.bool language sql
                        as $$ select pg_catalog.set_config('pyflows_test.tattled', $1, false) is not null $$""")
        for name in ("uuid", "text"):
            conn.execute(sql.SQL("create domain pg_temp.{} as pg_catalog.{} "
                                 "check (pg_temp.tattle(value::pg_catalog.text))").format(sql.Identifier(name),
                                                                                         sql.Identifier(name)))
    with conn.transaction():
        conn.execute("select pg_catalog.set_config('pyflows.client_id', %s::pg_catalog.text, true), "
                     "pg_catalog.set_config('pyflows.engagement_id', %s::pg_catalog.text, true), "
                     "pg_catalog.set_config('pyflows.actor', 'me', true)", (tenant_a.client_id, tenant_a.engagement_id))
        conn.execute("select pyflows.current_client_id(), pyflows.current_engagement_id(), pyflows.current_actor()")
        conn.execute("select count(*) from pyflows.discovery_flows")  # the policies, inlined
        assert conn.execute("select current_setting('pyflows_test.tattled', true)").fetchone() in ((None,), ("",))


# ---- 2. nothing a client can set decides which event rows are archived under -------------------------------

def statement_event(setting: str) -> int:
    """The sql.delete event a statement opened last, from the setting pyflows.audit_event on the node that
    opened it ('<transaction>@<statement start>|<ids>')."""
    return int(setting.rsplit("|", 1)[1].split(",")[-1])


def statement_mark(conn: psycopg.Connection[Any]) -> str:
    """The value the last sql.delete of the caller's tenant left in pyflows.audit_event, rebuilt from its
    event, which the tenant reads: on Citus the trigger set it on the worker, where no client reads it."""
    row = conn.execute("select e.txid || '@' || (e.details ->> 'statement_at') || '|' || e.id "
                       "from pyflows_audit.events as e where e.action = 'sql.delete' order by e.id desc limit 1"
                       ).fetchone()
    assert row is not None
    return str(row[0])


def forge(conn: psycopg.Connection[Any], audit_event: str) -> None:
    """The audit's settings as an API call would have them, with SET LOCAL: what reaches the workers of a
    Citus cluster (set_config() does not), and the same thing on one node."""
    for name, value in (("audit_event", audit_event), ("audit_statement", "api"),
                        ("audit_open", "0:999999999999999999")):
        conn.execute(sql.SQL("set local {} = {}").format(sql.Identifier("pyflows", name), sql.Literal(value)))


def after_an_api_call(conn: psycopg.Connection[Any], owner: psycopg.Connection[Any],
                      citus: CitusCluster | None, attack: Callable[[], Any]) -> Any:
    """Run attack (an API call, then the application login's own DELETE) in one transaction of conn and
    return what it returns. On Citus a transaction may modify a shard group as one login only: the API
    call's writes are the owner's, so the login's DELETE on that tenant is refused (25001) and the attack
    cannot be made there: then None, once nothing is found written."""
    before = fingerprint(owner)
    try:
        with conn.transaction():
            return attack()
    except psycopg.Error as exc:
        assert citus is not None and exc.sqlstate == "25001", exc
        assert "modified in this transaction by a different user" in str(exc)
        assert fingerprint(owner) == before
        return None


def events(owner: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return owner.execute("select id, action, client_id, flow_id, deleted, statement is not null "
                         "from pyflows_audit.events order by id").fetchall()


def test_forged_settings_cannot_archive_another_tenants_delete_under_an_event(
        owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant, pyflows_connect: Connect) -> None:
    a_flow, b_flow = tree(owner, tenant_a, status="paused"), tree(owner, tenant_b, status="paused")
    conn = pyflows_connect("app")
    with conn.transaction():
        bind(conn, tenant_a)
        conn.execute("delete from pyflows.assets where client_id = %s and flow_id = %s and id = %s",
                     (tenant_a.client_id, a_flow.flow_id, a_flow.asset_ids[0]))
        forged = statement_mark(conn)
        forge(conn, forged)
        bind(conn, tenant_b)
        conn.execute("delete from pyflows.discovery_flows where client_id = %s and id = %s",
                     (tenant_b.client_id, b_flow.flow_id))
    rows = events(owner)
    a_event = [r for r in rows if r[0] == statement_event(forged)]
    assert a_event and a_event[0][2] == tenant_a.client_id and a_event[0][4] == {"assets": 1, "asset_dependencies": 1}
    b_events = [r for r in rows if r[2] == tenant_b.client_id]
    assert [(r[1], r[3], r[5]) for r in b_events] == [("sql.delete", b_flow.flow_id, True)]
    assert b_events[0][4]["discovery_flows"] == 1 and b_events[0][4]["assets"] == 3
    # B's trail shows B's delete.
    b_conn = pyflows_connect("app")
    bind(b_conn, tenant_b)
    assert b_conn.execute("select count(*) from pyflows_audit.events").fetchone() == (1,)


def test_forged_settings_cannot_hide_a_delete_under_a_lifecycle_event(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Connect,
        pyflows_citus: CitusCluster | None) -> None:
    target = tree(owner, tenant_a, status="paused")
    conn = pyflows_connect("app")

    def attack() -> Any:
        bind(conn, tenant_a)
        resumed = conn.execute("select pyflows.resume_flow(%s)", (target.flow_id,)).fetchone()[0]
        resume_event = owner.execute("select coalesce(max(id), 0) + 1 from pyflows_audit.events").fetchone()[0]
        forge(conn, str(resume_event))
        conn.execute("delete from pyflows.raw_import_records where client_id = %s and import_id = %s",
                     (tenant_a.client_id, target.import_id))
        return resumed

    resumed = after_an_api_call(conn, owner, pyflows_citus, attack)
    if resumed is None:
        return
    assert resumed["resumed"]
    rows = events(owner)
    assert [(r[1], r[4]) for r in rows] == [("flow.resume", {}), ("sql.delete", {"raw_import_records": 3})]
    assert rows[1][5]  # the statement is recorded


def test_an_event_stays_closed_after_its_api_call(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                  pyflows_connect: Connect,
                                                  pyflows_citus: CitusCluster | None) -> None:
    doomed, other = tree(owner, tenant_a, status="paused"), tree(owner, tenant_a, status="completed")
    conn = pyflows_connect("app")

    def attack() -> Any:
        bind(conn, acting(tenant_a, "dba"))
        deleted = conn.execute("select pyflows.delete_flow(%s, 'x')", (doomed.flow_id,)).fetchone()[0]
        forge(conn, str(deleted["event_id"]))
        conn.execute("delete from pyflows.assets where client_id = %s and flow_id = %s",
                     (tenant_a.client_id, other.flow_id))
        return deleted

    deleted = after_an_api_call(conn, owner, pyflows_citus, attack)
    if deleted is None:
        return
    rows = events(owner)
    assert rows[0][1] == "flow.delete" and rows[0][4] == deleted["deleted"]
    assert [(r[1], r[3], r[4]) for r in rows[1:]] == [("sql.delete", other.flow_id,
                                                       {"assets": 3, "asset_dependencies": 2})]
    assert owner.execute("select count(*) from pyflows_audit.events where details ? 'open_txid'").fetchone() == (0,)


# ---- 3. restore reads only the caller's tenant ----------------------------------------------------------

def test_restore_never_writes_into_another_tenant(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                  tenant_b: Tenant, pyflows_connect: Connect) -> None:
    a_flow, b_flow = tree(owner, tenant_a, status="paused"), tree(owner, tenant_b, status="paused")
    conn = pyflows_connect("app")
    with conn.transaction():  # the forged delete of item 2, whatever became of it
        bind(conn, tenant_a)
        conn.execute("delete from pyflows.assets where client_id = %s and id = %s",
                     (tenant_a.client_id, a_flow.asset_ids[0]))
        forged = statement_mark(conn)
        forge(conn, forged)
        bind(conn, tenant_b)
        conn.execute("delete from pyflows.discovery_flows where client_id = %s and id = %s",
                     (tenant_b.client_id, b_flow.flow_id))
    before = fingerprint(owner, tenant_b.client_id)
    with conn.transaction(force_rollback=True):
        bind(conn, acting(tenant_a, "a-user"))
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select pyflows.restore_flow(%s)", (statement_event(forged),))
    assert caught.value.sqlstate in ("PF404", "PF422")
    assert fingerprint(owner, tenant_b.client_id) == before
    assert owner.execute("select count(*) from pyflows.discovery_flows where id = %s",
                         (b_flow.flow_id,)).fetchone() == (0,)


# ---- 4. a purge batch deletes only its own flow's rows ----------------------------------------------------

def test_a_purge_batch_refuses_any_flow_but_its_purges(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                       pyflows_connect: Connect) -> None:
    purged, bystander = tree(owner, tenant_a, status="cancelled"), tree(owner, tenant_a, status="completed")
    with owner.transaction():
        event = mark_deleting(owner, tenant_a, purged.flow_id)
    conn = pyflows_connect("app")
    before = fingerprint(owner)
    for step in range(1, 6):
        with conn.transaction(force_rollback=True):
            bind(conn, acting(tenant_a, "x"))
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("select pyflows._purge_batch(%s, %s, 1000, %s)", (bystander.flow_id, event, step))
        assert caught.value.sqlstate == "PF422", step  # not 'deleting'
    with owner.transaction():  # another flow being purged, but under someone else's event
        other_event = mark_deleting(owner, tenant_a, bystander.flow_id)
    before = fingerprint(owner)
    with conn.transaction(force_rollback=True):
        bind(conn, acting(tenant_a, "x"))
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select pyflows._purge_batch(%s, %s, 1000, 2)", (bystander.flow_id, event))
    assert caught.value.sqlstate == "PF404" and fingerprint(owner) == before
    with conn.transaction():  # its own event: it works
        bind(conn, acting(tenant_a, "x"))
        assert conn.execute("select pyflows._purge_batch(%s, %s, 1000, 2)",
                            (bystander.flow_id, other_event)).fetchone() == (3,)


# ---- 5. only purge_flow marks a flow 'deleting' ------------------------------------------------------------

def test_a_raw_update_cannot_hide_a_flow_as_deleting(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                     pyflows_connect: Connect) -> None:
    target = tree(owner, tenant_a, status="paused")
    conn = pyflows_connect("app")
    before = fingerprint(owner)
    for statement in ("update pyflows.discovery_flows set status = 'deleting' where id = %s",):
        with conn.transaction(force_rollback=True):
            bind(conn, tenant_a)
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(statement, (target.flow_id,))
        assert caught.value.sqlstate == "PF422"
    bind(conn, tenant_a)
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                     "values (%s, %s, 'hidden', 'deleting')", (tenant_a.client_id, tenant_a.engagement_id))
    assert caught.value.sqlstate == "PF422"
    conn.rollback()
    assert fingerprint(owner) == before
    flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "x")
    assert not flows.gate().can_start and [f.flow_id for f in flows.list_incomplete()] == [target.flow_id]


def test_a_deleting_flow_with_no_purge_running_is_purged_only_when_forced(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_role_dsn: Callable[[str], str]) -> None:
    # Marked before pyflows refused it (or by an owner who disabled the rules): its state before is unknown.
    done = tree(owner, tenant_a, status="completed")
    with owner.transaction():
        if owner.execute("select current_setting('citus.enable_unsafe_triggers', true) is not null").fetchone()[0]:
            owner.execute("set local citus.enable_unsafe_triggers = on")  # Citus' DDL on triggers needs it
        owner.execute("alter table pyflows.discovery_flows disable trigger discovery_flows_rules")
        owner.execute("update pyflows.discovery_flows set status = 'deleting' where id = %s", (done.flow_id,))
        owner.execute("alter table pyflows.discovery_flows enable trigger discovery_flows_rules")
    flows = Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "dba")
    with pytest.raises(FlowBusy) as caught:
        flows.purge(done.flow_id, "clean up")
    assert [b["code"] for b in caught.value.detail["blockers"]] == ["deleting"]
    assert owner.execute("select count(*) from pyflows_audit.events").fetchone() == (0,)
    purged = flows.purge(done.flow_id, "clean up", force=True)
    assert purged.deleted["discovery_flows"] == 1


# ---- 6. file paths: refused at the door, removed only under the storage roots -------------------------------

@pytest.mark.parametrize("uri", [
    "file://relative/path.csv", "file:relative.csv", "file:///uploads/../etc/passwd", "file:///uploads/./a.csv",
    "file:///uploads/%2e%2e/etc/passwd", "file:///uploads/%2E./x", "file:///uploads/a%2fb.csv",
    "file:///uploads/a%00.csv", "FILE:///uploads/..", "file://localhost/uploads/../x"])
def test_imports_refuse_file_paths_that_could_climb(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                    pyflows_connect: Connect, uri: str) -> None:
    conn = pyflows_connect("app")
    flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "x")
    before = fingerprint(owner)
    with pytest.raises(InvalidRequest):
        flows.start_import("a.csv", uri, 1)
    started = flows.start_import("a.csv", "file:///uploads/a.csv", 1)
    after_start = fingerprint(owner)
    with pytest.raises(InvalidRequest):
        flows.add_import(started.flow_id, "b.csv", uri, 1)
    assert fingerprint(owner) == after_start != before


def queue_files(owner: psycopg.Connection[Any], tenant: Tenant, paths: list[str]) -> None:
    """Imports naming these paths, deleted: their files queued for the drain, as a tenant could make happen."""
    with owner.transaction():
        flow = write_flow_tree(owner, tenant, status="paused").flow_id
        for path in paths:
            owner.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, "
                          "storage_uri, byte_size) values (%s, %s, %s, 'f', %s, 1)",
                          (tenant.client_id, tenant.engagement_id, flow, Path(path).as_uri()))
        owner.execute("delete from pyflows.discovery_flows where id = %s", (flow,))


def test_the_drain_removes_files_only_under_its_roots(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                      tenant_b: Tenant, pyflows_connect: Connect,
                                                      tmp_path: Path) -> None:
    uploads, outside = tmp_path / "uploads", tmp_path / "secrets"
    mine, theirs = uploads / str(tenant_a.client_id), uploads / str(tenant_b.client_id)
    for folder in (mine, theirs, outside):
        folder.mkdir(parents=True)
    files = {name: folder / f"{name}.csv" for name, folder in
             (("mine", mine), ("theirs", theirs), ("outside", outside), ("linked", outside))}
    for path in files.values():
        path.write_text("x")
    (mine / "link.csv").symlink_to(files["linked"])
    queue_files(owner, tenant_a, [str(files["mine"]), str(files["theirs"]), str(files["outside"]),
                                  str(mine / "link.csv")])
    admin = Flows(pyflows_connect("admin", autocommit=True))

    refused = drain(admin, lease=timedelta(seconds=1))  # no root at all: nothing is removed
    assert refused.removed == 0 and refused.failed == 5 and all(p.exists() for p in files.values())
    assert all("no storage root" in e[2] for e in refused.errors if e[1].startswith("file://"))
    owner.execute("update pyflows.file_cleanup_queue set lease_until = now() - interval '1 second'")

    report = drain(admin, lease=timedelta(seconds=1), roots=[str(uploads / "{client_id}")])
    # Only tenant A's own file: not B's upload, not the file outside, not the one behind A's symbolic link
    # (nor the flow tree's own import, which lives outside the roots).
    assert (report.removed, report.failed) == (1, 4)
    assert not files["mine"].exists() and files["theirs"].exists() and files["outside"].exists()
    assert files["linked"].exists() and (mine / "link.csv").is_symlink()
    assert all("outside every storage root" in e[2] for e in report.errors)
    assert owner.execute("select count(*) from pyflows.file_cleanup_queue where done_at is null").fetchone() == (4,)


def test_the_drain_uses_backends_from_entry_points_and_one_failure_stops_nothing(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Connect, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A real installed distribution (its dist-info on sys.path) declares two backends: one that works
    # and one that fails to load.
    package = tmp_path / "site"
    (package / "memstore").mkdir(parents=True)
    (package / "memstore" / "__init__.py").write_text(
        "REMOVED = []\n"
        "class Store:\n"
        "    def remove(self, uri):\n"
        "        REMOVED.append(uri)\n"
        "def broken():\n"
        "    raise RuntimeError('no credentials')\n")
    dist = package / "memstore-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: memstore\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pyflows.storage]\nmem = memstore:Store\nbroken = memstore:broken\n")
    monkeypatch.syspath_prepend(str(package))
    with owner.transaction():
        flow = write_flow_tree(owner, tenant_a, status="paused").flow_id
        for uri in ("mem://bucket/a.csv", "broken://x/y.csv", "gopher://x/z.csv", "mem://bucket/b.csv"):
            owner.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, "
                          "storage_uri, byte_size) values (%s, %s, %s, 'f', %s, 1)",
                          (tenant_a.client_id, tenant_a.engagement_id, flow, uri))
        owner.execute("delete from pyflows.discovery_flows where id = %s", (flow,))
    report = drain(Flows(pyflows_connect("admin", autocommit=True)), roots=["/tmp"])
    import memstore  # type: ignore[import-not-found]

    assert sorted(memstore.REMOVED) == ["mem://bucket/a.csv", "mem://bucket/b.csv"]
    errors = {uri: error for _, uri, error in report.errors}
    assert set(errors) == {"broken://x/y.csv", "gopher://x/z.csv"}
    assert "no credentials" in errors["broken://x/y.csv"] and "no storage backend for gopher" in errors["gopher://x/z.csv"]
    assert report.removed == 3 and "mem" in Storages()


# ---- 7. restore and the drain -------------------------------------------------------------------------------

def test_restore_waits_for_nothing_and_never_restores_an_import_whose_file_a_drain_removes(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Connect, tmp_path: Path) -> None:
    target = tree(owner, tenant_a, status="paused")
    stored = tmp_path / "cmdb.csv"
    stored.write_text("x")
    owner.execute("update pyflows.data_imports set storage_uri = %s where id = %s", (stored.as_uri(), target.import_id))
    flows = Flows(pyflows_connect("app", autocommit=True)).tenant(tenant_a.client_id, tenant_a.engagement_id, "x")
    event = flows.delete(target.flow_id, "oops").event_id
    admin = Flows(pyflows_connect("admin", autocommit=True))
    claimed = admin.claim_file_cleanups(10)  # a drain has claimed the file ...
    assert [c.storage_uri for c in claimed] == [stored.as_uri()]
    before = fingerprint(owner)
    with pytest.raises(FlowBusy, match="file drain"):  # ... so the restore is refused, and writes nothing
        flows.restore(event)
    assert fingerprint(owner) == before
    stored.unlink()  # the drain removes it and records it: no PF404, no abort
    assert admin.finish_file_cleanup(claimed[0].id).done
    restored = flows.restore(event)
    assert restored.missing_files == [stored.as_uri()] and restored.files_kept == 0


def test_a_drain_goes_on_when_an_entry_vanishes(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                pyflows_connect: Connect, tmp_path: Path) -> None:
    paths = [tmp_path / f"{n}.csv" for n in range(3)]
    for path in paths:
        path.write_text("x")
    queue_files(owner, tenant_a, [str(p) for p in paths])

    class Vanishing:
        def remove(self, uri: str) -> None:  # the entry is taken away while its file is being removed
            owner.execute("delete from pyflows.file_cleanup_queue where storage_uri = %s", (uri,))

    report = drain(Flows(pyflows_connect("admin", autocommit=True)), storages={"file": Vanishing()})
    assert report.failed == 4 and report.removed == 0
    assert all("vanished" in error for _, _, error in report.errors)


# ---- 8. no delete or write waits on a lock without a bound -----------------------------------------------

@pytest.fixture
def holder(pyflows_dsn: str) -> Callable[[str, Any], Any]:
    """Hold a row lock in another transaction (a worker mid-write) until the test ends."""
    opened: list[psycopg.Connection[Any]] = []

    def hold(statement: str, *params: Any) -> psycopg.Connection[Any]:
        conn = psycopg.connect(pyflows_dsn)
        opened.append(conn)
        conn.execute(statement, params)
        return conn

    yield hold  # type: ignore[misc]
    for conn in opened:
        conn.close()


def bounded(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    # A guard, not a measurement: a call that waited without a bound would end in 57014 instead.
    conn.execute("set statement_timeout = '20s'")
    conn.commit()
    return conn


def test_deletes_and_purges_do_not_queue_behind_a_worker_holding_a_child_row(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Connect, holder: Any) -> None:
    target = tree(owner, tenant_a, status="paused", records=5, assets=4)
    holder("update pyflows.assets set name = 'busy' where id = %s", target.asset_ids[1])
    conn = bounded(pyflows_connect("app"))
    flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "dba")
    before = fingerprint(owner)
    with pytest.raises(FlowBusy) as caught:
        flows.delete(target.flow_id, "x")
    assert "try again" in (caught.value.hint or "")
    results = flows.delete_many([target.flow_id], "x", atomic=False)
    assert [(r.ok, r.error_code) for r in results] == [(False, "PF423")]
    with pytest.raises(FlowBusy):
        flows.delete_many([target.flow_id], "x")
    assert fingerprint(owner) == before
    conn.autocommit = True
    with pytest.raises(FlowBusy):
        flows.purge(target.flow_id, "x", batch_rows=2)  # stops at the batch that meets the held row
    assert owner.execute("select status from pyflows.discovery_flows where id = %s",
                         (target.flow_id,)).fetchone() == ("deleting",)  # resumable once the worker is done


@pytest.mark.parametrize("call", [
    "select pyflows.record_progress(%(f)s, 'data_import')", "select pyflows.heartbeat(%(f)s)",
    "select pyflows.set_flow_status(%(f)s, 'paused')",
    "select pyflows.add_import(%(f)s, 'b.csv', 'file:///uploads/b.csv', 1)",
    "select pyflows.resume_flow(%(f)s)",
    "select pyflows.delete_flow(%(f)s, 'x')"])
def test_writers_never_wait_for_a_locked_flow(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                              pyflows_connect: Connect, holder: Any, call: str) -> None:
    target = tree(owner, tenant_a, status="running")
    holder("select 1 from pyflows.discovery_flows where client_id = %s and id = %s for update",
           tenant_a.client_id, target.flow_id)
    conn = bounded(pyflows_connect("app"))
    bind(conn, acting(tenant_a, "w"))
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(call, {"f": target.flow_id})
    assert caught.value.sqlstate == "PF423", caught.value


def test_loads_and_restores_do_not_queue_behind_a_row_another_flow_holds(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Connect, holder: Any) -> None:
    # An edge may point at another flow's asset; a worker (or a delete) holding that asset's row makes
    # the foreign-key check wait: at most pyflows.lock_timeout, then PF423, nothing written.
    deleted, other = tree(owner, tenant_a, status="cancelled"), tree(owner, tenant_a, status="completed")
    with owner.transaction():  # an edge of the deleted flow into the other flow's asset, for the restore
        set_raw_context(owner, tenant_a)
        owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                      "target_asset_id, dependency_type) values (%s, %s, %s, %s, %s, 'cross')",
                      (tenant_a.client_id, tenant_a.engagement_id, deleted.flow_id, deleted.asset_ids[0],
                       other.asset_ids[0]))
    flows = Flows(pyflows_connect("app", autocommit=True)).tenant(tenant_a.client_id, tenant_a.engagement_id, "x")
    event = flows.delete(deleted.flow_id, "to restore", force=True).event_id
    loading = flows.start("loading")
    mine = flows.copy_assets(loading.flow_id, [{"name": "n", "asset_type": "server"}])
    held = holder("select 1 from pyflows.assets where client_id = %s and id = %s for update", tenant_a.client_id,
                  other.asset_ids[0])
    conn = bounded(pyflows_connect("app"))
    conn.execute("create temp table stage_edges (source_asset_id bigint, target_asset_id bigint, "
                 "dependency_type text)")
    conn.execute("insert into stage_edges values (%s, %s, 'cross')", (mine[0], other.asset_ids[0]))
    conn.commit()
    before = fingerprint(owner)
    for call, params, done in (("select pyflows.load_dependencies(%s, 'pg_temp.stage_edges')", loading.flow_id,
                                "loaded"),
                               ("select pyflows.restore_flow(%s)", event, "restored")):
        bind(conn, acting(tenant_a, "x"))
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(call, (params,))
        assert caught.value.sqlstate == "PF423" and f"cannot be {done} now" in str(caught.value)
        conn.rollback()
    assert fingerprint(owner) == before
    held.rollback()  # the worker is done: the load goes through
    bind(conn, acting(tenant_a, "x"))
    assert conn.execute("select pyflows.load_dependencies(%s, 'pg_temp.stage_edges') ->> 'loaded'",
                        (loading.flow_id,)).fetchone() == ("1",)


@pytest.mark.parametrize(("session", "setting", "waited"), [
    ("0", None, "200ms"), ("0", "1500", "1500ms"), ("0", "2s", "2s"), ("50ms", "10s", "50ms"), ("1h", "3s", "3s")])
def test_the_lock_wait_is_the_setting_or_the_sessions_shorter_one(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                                   pyflows_connect: Connect, holder: Any,
                                                                   session: str, setting: str | None,
                                                                   waited: str) -> None:
    target = tree(owner, tenant_a, status="paused")
    holder("update pyflows.assets set name = 'busy' where id = %s", target.asset_ids[0])
    conn = bounded(pyflows_connect("app"))
    bind(conn, acting(tenant_a, "w"))
    conn.execute("select set_config('lock_timeout', %s, true), set_config('pyflows.lock_timeout', %s, true)",
                 (session, setting or ""))
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("select pyflows.delete_flow(%s, 'x')", (target.flow_id,))
    assert caught.value.sqlstate == "PF423"
    assert json.loads(caught.value.diag.message_detail or "{}")["lock_timeout"] == waited


@pytest.mark.parametrize("value", ["0", "-5", "2min", "61s", "soon", "1.5s", "99999999999"])
def test_a_bad_lock_timeout_setting_is_refused(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                               pyflows_connect: Connect, value: str) -> None:
    target = tree(owner, tenant_a, status="paused")
    conn = pyflows_connect("app")
    bind(conn, acting(tenant_a, "w"))
    conn.execute("select set_config('pyflows.lock_timeout', %s, true)", (value,))
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("select pyflows.delete_flow(%s, 'x')", (target.flow_id,))
    assert caught.value.sqlstate == "PF422"


# ---- 9. crossing deletes: PF423, never a bare deadlock -----------------------------------------------------

def test_deletes_whose_edges_cross_never_deadlock(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                  pyflows_role_dsn: Callable[[str], str]) -> None:
    outcomes: list[str] = []
    for _ in range(12):
        with owner.transaction():
            first = write_flow_tree(owner, tenant_a, status="completed", assets=200, records=0)
            second = write_flow_tree(owner, tenant_a, status="completed", assets=200, records=0)
            ids = (tenant_a.client_id, tenant_a.engagement_id)
            for owner_flow, sources, targets in ((first, first.asset_ids, second.asset_ids),
                                                 (second, second.asset_ids, first.asset_ids)):
                owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, "
                              "source_asset_id, target_asset_id, dependency_type) "
                              "select %s, %s, %s, s, t, 'network' from unnest(%s::bigint[], %s::bigint[]) as x(s, t)",
                              (*ids, owner_flow.flow_id, list(sources), list(targets)))
        barrier = threading.Barrier(2)

        def delete(flow_id: uuid.UUID, barrier: threading.Barrier = barrier) -> None:
            with psycopg.connect(pyflows_role_dsn("app")) as conn:
                bind(conn, acting(tenant_a, "racer"))
                barrier.wait()
                try:
                    conn.execute("select pyflows.delete_flow(%s, 'race', true)", (flow_id,))
                    conn.commit()
                    outcomes.append("ok")
                except psycopg.Error as exc:
                    outcomes.append(exc.sqlstate or "?")

        threads = [threading.Thread(target=delete, args=(f.flow_id,)) for f in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(outcomes) == 24 and set(outcomes) <= {"ok", "PF423", "PF404"}, outcomes
    assert "ok" in outcomes
    # Whatever lost can be deleted now.
    flows = Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "x")
    for row in owner.execute("select id from pyflows.discovery_flows").fetchall():
        flows.delete(row[0], "after the race", force=True)


# ---- 10. the prune marker is no setting -------------------------------------------------------------------

def test_the_owner_cannot_delete_events_by_setting_a_marker(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                            pyflows_role_dsn: Callable[[str], str]) -> None:
    target = tree(owner, tenant_a, status="paused")
    Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "x").delete(target.flow_id, "x")
    before = fingerprint(owner)
    archive = [r[0] for r in owner.execute("select c.oid::regclass::text from pg_class c where c.relnamespace = "
                                           "'pyflows_audit'::regnamespace and c.relkind = 'r'").fetchall()]
    assert "pyflows_audit.events" in archive and len(archive) >= 9
    for table in archive:
        with pytest.raises(psycopg.Error) as caught, owner.transaction():
            owner.execute("select set_config('pyflows.audit_prune', txid_current()::text, true)")
            owner.execute(sql.SQL("delete from {}").format(sql.SQL(table)))
        assert caught.value.sqlstate == "PF403", table
    assert fingerprint(owner) == before


# ---- 11. restore is exact, column for column --------------------------------------------------------------

@pytest.mark.parametrize("how", ["delete", "purge"])
def test_restore_is_byte_identical(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                   pyflows_role_dsn: Callable[[str], str], how: str) -> None:
    target = tree(owner, tenant_a, status="failed", records=4, assets=3)
    owner.execute("update pyflows.discovery_flows set error = 'null'::jsonb, agent_insights = %s::jsonb "
                  "where id = %s", ('[null, {"a": null}]', target.flow_id))
    owner.execute("update pyflows.raw_import_records set data = 'null'::jsonb where row_number = 1")
    owner.execute("update pyflows.assets set attributes = '{\"k\": null}'::jsonb, hostname = null, "
                  "ip_address = '10.0.0.1' where id = %s", (target.asset_ids[0],))

    def rows() -> dict[str, list[str]]:
        return {t: [r[0] for r in owner.execute(sql.SQL("select t::text from {} as t order by t::text").format(
            sql.Identifier("pyflows", t))).fetchall()] for t in FLOW_TREE_TABLES}

    original = rows()
    assert any('"error": null' in r or ",null," in r for r in original["discovery_flows"])
    flows = Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "x")
    event = (flows.delete(target.flow_id, "x") if how == "delete"
             else flows.purge(target.flow_id, "x", batch_rows=2)).event_id
    assert rows() != original
    flows.restore(event)
    assert rows() == original


# ---- 12. concurrent restores of one event ----------------------------------------------------------------

def test_a_second_restore_of_one_event_is_busy_then_already_restored(owner: psycopg.Connection[Any],
                                                                      tenant_a: Tenant,
                                                                      pyflows_connect: Connect) -> None:
    target = tree(owner, tenant_a, status="paused")
    first, second = bounded(pyflows_connect("app")), bounded(pyflows_connect("app"))
    event = Flows(pyflows_connect("app", autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "x").delete(target.flow_id, "x").event_id
    bind(first, acting(tenant_a, "one"))
    first.execute("select pyflows.restore_flow(%s)", (event,))  # not committed yet
    bind(second, acting(tenant_a, "two"))
    with pytest.raises(psycopg.Error) as caught:
        second.execute("select pyflows.restore_flow(%s)", (event,))
    assert caught.value.sqlstate == "PF423"
    second.rollback()
    first.commit()
    bind(second, acting(tenant_a, "two"))
    with pytest.raises(psycopg.Error) as caught:
        second.execute("select pyflows.restore_flow(%s)", (event,))
    assert caught.value.sqlstate == "PF422" and "already restored" in str(caught.value)


# ---- 13. hostile intervals to the admin routines -----------------------------------------------------------

def test_admin_routines_refuse_intervals_out_of_range(owner: psycopg.Connection[Any], pyflows_connect: Connect,
                                                      tenant_a: Tenant) -> None:
    conn = pyflows_connect("admin")
    routines = [r for r in admin_routines(app_routines(owner)) if "interval" in r.arg_types]
    assert {r.name for r in routines} >= {"admin_list_incomplete_flows", "prune_audit", "claim_file_cleanups"}
    before = fingerprint(owner)
    problems = []
    for routine in routines:
        for extreme in (timedelta.max, timedelta.min, timedelta(days=106_000_000), timedelta(days=-1)):
            args = [extreme if t == "interval" else (10 if t == "integer" else None) for t in routine.arg_types]
            outcome, shown = call_routine(conn, routine, args, tenant_a, keep=False)
            if outcome != "PF422":
                problems.append(f"{routine.signature} with {extreme!r}: {outcome} {shown[:200]}")
    assert problems == [], "\n".join(problems)
    assert fingerprint(owner) == before


def test_every_definer_reaches_the_audit_only_through_checked_paths(owner: psycopg.Connection[Any]) -> None:
    # No function but the event writers sets pyflows.audit_event or pyflows.audit_open: the settings are
    # hints they leave for each other, never something the triggers trust.
    def setters(setting: str) -> list[str]:
        return sorted(r[0] for r in owner.execute(
            "select p.oid::regprocedure::text from pg_proc p where p.pronamespace in "
            "('pyflows'::regnamespace, 'pyflows_audit'::regnamespace) and p.prosrc ~ %s",
            (f"(set_config|_set_local)\\('{setting}'",)).fetchall())

    begin = "pyflows_audit._begin_events(text,uuid[],text,jsonb[],jsonb[],boolean,jsonb)"
    statement = "pyflows_audit._statement_event(text,uuid,bigint,uuid,bigint,uuid)"
    assert setters("pyflows.audit_event") == [statement]
    assert setters("pyflows.audit_open") == sorted([begin, "pyflows_audit._open_event(bigint)",
                                                     "pyflows_audit._close_events(bigint[])"])
    # The delete triggers take the events that are open in this transaction by the events' own record.
    sources = owner.execute("select prosrc from pg_proc where proname like '\\_on\\_delete\\_%'").fetchall()
    assert len(sources) == 8
    for (source,) in sources:
        assert ("then pg_catalog.txid_current() else pyflows_audit._xact() end::text;" in source
                and "v_xact :=" in source and source.count("v_xact :=") == 1)
        assert source.count("and e.details ->> 'open_txid' = v_xact;") == 2


@pytest.mark.parametrize(("name", "value"), [("role", "postgres"), ("session_authorization", "postgres"),
                                             ("search_path", "public"), (None, "x"), ("lock_timeout", None),
                                             ("pyflows.client_id; reset all", "x")])
def test_set_local_sets_only_pyflows_own_settings(pyflows_connect: Connect, tenant_a: Tenant, name: str | None,
                                                  value: str | None) -> None:
    """_set_local, which the application role may call, refuses any other setting and a NULL (PF422),
    and leaves the transaction's settings as they were."""
    conn = pyflows_connect("app")
    bind(conn, tenant_a)
    before = conn.execute("select current_user, current_setting('search_path'), current_setting('lock_timeout'), "
                          "pyflows.current_client_id()").fetchone()
    conn.execute("savepoint probe")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("select pyflows._set_local(%s, %s)", (name, value))
    assert caught.value.sqlstate == "PF422", caught.value
    conn.execute("rollback to savepoint probe")
    after = conn.execute("select current_user, current_setting('search_path'), current_setting('lock_timeout'), "
                         "pyflows.current_client_id()").fetchone()
    assert after == before
