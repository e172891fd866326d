"""Small helpers shared by pyflows' tests: writing a flow tree and reading the catalog."""

from __future__ import annotations

import dataclasses
import re
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pyflows.testing import Tenant

TENANT_TABLES = (
    "clients", "engagements", "discovery_flows", "data_imports", "raw_import_records",
    "import_field_mappings", "assets", "asset_dependencies", "file_cleanup_queue",
)
FLOW_TREE_TABLES = (
    "discovery_flows", "data_imports", "raw_import_records", "import_field_mappings", "assets",
    "asset_dependencies",
)


@dataclass(frozen=True)
class FlowTree:
    flow_id: uuid.UUID
    import_id: uuid.UUID
    asset_ids: tuple[int, ...]


def acting(tenant: Tenant, actor: str) -> Tenant:
    """The same tenant context with an actor (what destructive calls need)."""
    return dataclasses.replace(tenant, actor=actor)


def set_raw_context(conn: psycopg.Connection[Any], tenant: Tenant) -> None:
    conn.execute("select set_config('pyflows.client_id', %s, true), set_config('pyflows.engagement_id', %s, true)",
                 (str(tenant.client_id), str(tenant.engagement_id)))


def write_flow_tree(conn: psycopg.Connection[Any], tenant: Tenant, *, status: str = "running",
                    name: str = "flow", records: int = 3, assets: int = 3) -> FlowTree:
    """One flow with an import, its records and mappings, assets and a chain of dependencies.

    Runs in the caller's transaction, under the tenant's context (works for any role that may write).
    """
    set_raw_context(conn, tenant)
    ids = (tenant.client_id, tenant.engagement_id)
    row = conn.execute(
        "insert into pyflows.discovery_flows (client_id, engagement_id, name, status, phases_completed) "
        "select %s, %s, %s, %s, case when %s = 'completed' then array_agg(phase) else '{}' end from pyflows.phases "
        "returning id", (*ids, name, status, status)).fetchone()
    assert row is not None
    flow_id = row[0]
    row = conn.execute(
        "insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, storage_uri, byte_size) "
        "values (%s, %s, %s, 'cmdb.csv', %s, 100) returning id",
        (*ids, flow_id, f"file:///tmp/pyflows-test/{flow_id}.csv")).fetchone()
    assert row is not None
    import_id = row[0]
    for n in range(1, records + 1):
        conn.execute(
            "insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
            "values (%s, %s, %s, %s, %s::jsonb)", (*ids, import_id, n, f'{{"Host": "host-{n}"}}'))
    for field in ("Host", "IP"):
        conn.execute(
            "insert into pyflows.import_field_mappings (client_id, engagement_id, import_id, source_field, "
            "target_attribute, confidence) values (%s, %s, %s, %s, %s, 0.9)",
            (*ids, import_id, field, field.lower()))
    asset_ids: list[int] = []
    for n in range(assets):
        row = conn.execute(
            "insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
            "values (%s, %s, %s, %s, 'server') returning id", (*ids, flow_id, f"host-{n}")).fetchone()
        assert row is not None
        asset_ids.append(row[0])
    for source, target in zip(asset_ids, asset_ids[1:], strict=False):
        conn.execute(
            "insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
            "target_asset_id, dependency_type) values (%s, %s, %s, %s, %s, 'network')",
            (*ids, flow_id, source, target))
    return FlowTree(flow_id, import_id, tuple(asset_ids))


def mark_deleting(conn: psycopg.Connection[Any], tenant: Tenant, flow_id: uuid.UUID) -> int:
    """Mark a flow 'deleting' the only way there is: a purge's first step (forced, so a terminal flow
    may be marked too), left running. Runs in the caller's transaction; returns the purge's event id."""
    row = conn.execute("select pyflows.set_context(%s, %s, 'purger'), pyflows._purge_begin(%s, 'left running', "
                       "true, 1000)", (tenant.client_id, tenant.engagement_id, flow_id)).fetchone()
    assert row is not None
    return int(row[1])


def count_rows(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier("pyflows", table))).fetchone()
    assert row is not None
    return int(row[0])


def schema_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """What the pyflows schemas contain, in a comparable form (names, definitions, flags)."""
    queries = {
        "relations": """
            select n.nspname, c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity
              from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where n.nspname in ('pyflows', 'pyflows_audit') order by 1, 2""",
        "columns": """
            select table_schema, table_name, column_name, data_type, is_nullable, column_default
              from information_schema.columns
             where table_schema in ('pyflows', 'pyflows_audit') order by 1, 2, 3""",
        "constraints": """
            select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
              from pg_constraint where connamespace = 'pyflows'::regnamespace order by 1, 2""",
        "indexes": """
            select tablename, indexname, indexdef from pg_indexes
             where schemaname in ('pyflows', 'pyflows_audit') order by 1, 2""",
        "policies": """
            select tablename, policyname, cmd, qual, with_check from pg_policies
             where schemaname = 'pyflows' order by 1, 2""",
        "functions": """
            select p.oid::regprocedure::text, p.prosecdef, p.provolatile, coalesce(p.proconfig, '{}')::text,
                   coalesce(p.proacl, '{}')::text
              from pg_proc p where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
             order by 1""",
        "triggers": """
            select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger
             where not tgisinternal and tgrelid in (
                select c.oid from pg_class c where c.relnamespace = 'pyflows'::regnamespace) order by 1, 2""",
        "grants": """
            select table_schema, table_name, grantee, privilege_type
              from information_schema.role_table_grants
             where table_schema in ('pyflows', 'pyflows_audit') order by 1, 2, 3, 4""",
    }
    return {name: conn.execute(q).fetchall() for name, q in queries.items()}


def fingerprint(conn: psycopg.Connection[Any], client_id: uuid.UUID | None = None) -> dict[str, str]:
    """A digest of every row of every table in both pyflows schemas (only client_id's rows when given,
    for the tables that have one): equal before and after means nothing was written."""
    tables = conn.execute("""
        select c.oid::regclass::text,
               exists (select from pg_attribute a where a.attrelid = c.oid and a.attname = 'client_id'
                         and not a.attisdropped)
          from pg_class c where c.relnamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
           and c.relkind in ('r', 'p') and not c.relispartition  -- a partition's rows are its parent's
         order by 1""").fetchall()
    digests = {}
    for name, has_client in tables:
        where = sql.SQL("where t.client_id = {}").format(sql.Literal(str(client_id))) if (
            client_id and has_client) else sql.SQL("")
        row = conn.execute(sql.SQL("select count(*) || ':' || coalesce(md5(string_agg(t::text, '|' "
                                   "order by t::text)), '') from {} as t {}").format(sql.SQL(name), where)).fetchone()
        assert row is not None
        digests[name] = row[0]
    return digests


@dataclass(frozen=True)
class Routine:
    """A function or procedure of schema pyflows that pyflows_app may execute, read from the catalog."""

    signature: str
    name: str
    kind: str  # 'f' function, 'p' procedure
    arg_names: tuple[str, ...]
    arg_types: tuple[str, ...]
    source: str

    def statement(self) -> sql.Composed:
        """CALL or SELECT of the routine with one typed placeholder per argument."""
        args = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(t)) for t in self.arg_types)
        verb = "call" if self.kind == "p" else "select * from"
        return sql.SQL("{} pyflows.{}({})").format(sql.SQL(verb), sql.Identifier(self.name), args)


def app_routines(conn: psycopg.Connection[Any]) -> list[Routine]:
    """Every routine of schema pyflows that pyflows_app may execute, except trigger functions."""
    rows = conn.execute("""
        select p.oid::regprocedure::text, p.proname, p.prokind,
               coalesce(p.proargnames[1:p.pronargs], '{}'),
               array(select format_type(t, null) from unnest(p.proargtypes) with ordinality as a(t, n) order by n),
               p.prosrc
          from pg_proc p
         where p.pronamespace = 'pyflows'::regnamespace and p.prorettype <> 'trigger'::regtype
           and has_function_privilege('pyflows_app', p.oid, 'EXECUTE')
         order by 1""").fetchall()
    return [Routine(sig, name, kind, tuple(names), tuple(types), src) for sig, name, kind, names, types, src in rows]


def call_routine(conn: psycopg.Connection[Any], routine: Routine, args: list[Any], tenant: Tenant | None, *,
                 keep: bool) -> tuple[str, str]:
    """Call a routine as the connection's role, bound to tenant (or to no context): ('ok', what it
    returned) or (SQLSTATE, everything the error said). A success is committed when keep is true (so a
    write that should not have happened stays, to be seen), rolled back otherwise; a procedure runs in
    autocommit with a session context, as it must."""
    try:
        if routine.kind == "p":
            conn.autocommit = True
            if tenant is not None:
                conn.execute("select pyflows.set_session_context(%s, %s, 'caller')",
                             (tenant.client_id, tenant.engagement_id))
            try:
                conn.execute(routine.statement(), args)
            finally:
                conn.execute("select pyflows.clear_context()")
            return "ok", ""
        conn.autocommit = False
        if tenant is not None:
            conn.execute("select pyflows.set_context(%s, %s, 'caller')", (tenant.client_id, tenant.engagement_id))
        rows = conn.execute(routine.statement(), args).fetchall()
        if keep:
            conn.commit()
        else:
            conn.rollback()
        return "ok", repr(rows)
    except psycopg.Error as exc:
        if not conn.autocommit:
            conn.rollback()
        diag = exc.diag
        return exc.sqlstate or "?", " ".join(str(x) for x in (diag.message_primary, diag.message_detail,
                                                              diag.message_hint, diag.context) if x)


def lock_waiters(owner: psycopg.Connection[Any], citus: bool) -> int:
    """How many transactions of this database wait for a lock: on Citus, on any node (the waits
    happen on the workers, where the rows are)."""
    query = ("select count(distinct waiting_gpid) from citus_lock_waits" if citus else
             "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")
    row = owner.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def constraint_of(error: psycopg.Error) -> str | None:
    """The constraint an error names. A violation found on a Citus worker arrives without
    constraint_name and names the shard's constraint in its message ("..._102043")."""
    if error.diag.constraint_name:
        return error.diag.constraint_name
    found = re.search(r'constraint "([^"]+)"', str(error))
    return re.sub(r"_[0-9]+$", "", found.group(1)) if found else None
