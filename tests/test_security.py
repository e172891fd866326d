"""The privilege model read back from the catalog: SECURITY DEFINER functions and EXECUTE grants.

A new function, or a changed grant, fails here until this file says who may run it and why.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pyflows.testing import Tenant

from .helpers import fingerprint, write_flow_tree

# Every SECURITY DEFINER function, the roles granted EXECUTE on it, and why it runs as the owner.
DEFINER: dict[str, tuple[frozenset[str], str]] = {
    "pyflows.start_flow(text,text)": (frozenset({"pyflows_app"}), "writes the flow.start audit event"),
    "pyflows.start_import(text,text,bigint,text)": (frozenset({"pyflows_app"}), "writes the flow.start audit event"),
    "pyflows.resume_flow(uuid)": (frozenset({"pyflows_app"}), "writes the flow.resume audit event"),
    "pyflows._delete_flow(uuid,text,boolean,boolean)": (
        frozenset({"pyflows_app"}), "delete_flow's and delete_flows' work: opens and completes the flow.delete event"),
    "pyflows._delete_flow_batch(uuid[],text,boolean)": (
        frozenset({"pyflows_app"}), "delete_flows' atomic batch: opens and completes one flow.delete event per flow"),
    "pyflows.restore_flow(bigint)": (frozenset({"pyflows_app"}), "reads the archive, writes the flow.restore event"),
    "pyflows._purge_begin(uuid,text,boolean,integer)": (
        frozenset({"pyflows_app"}), "opens the flow.purge event (purge_flow commits, so it cannot be a definer)"),
    "pyflows._purge_batch(uuid,bigint,integer,integer)": (
        frozenset({"pyflows_app"}), "opens the running flow.purge event for the rows of its own batch"),
    "pyflows._purge_finish(uuid,bigint,integer)": (frozenset({"pyflows_app"}), "completes the flow.purge event"),
    "pyflows._require_admin()": (frozenset({"pyflows_app"}), "reads the owner's attributes; checks session_user"),
    "pyflows._require_owner_across_tenants()": (frozenset(), "reads the owner's attributes; called by definers only"),
    "pyflows._require_tenant_admin()": (
        frozenset({"pyflows_app"}), "reads the owner's attributes and the schema's owner; checks session_user"),
    "pyflows.add_client(text,uuid)": (
        frozenset({"pyflows_app"}), "writes reference data; refuses all but pyflows_admin and the schema owner"),
    "pyflows.add_engagement(uuid,text,uuid)": (
        frozenset({"pyflows_app"}), "writes reference data; refuses all but pyflows_admin and the schema owner"),
    "pyflows.list_tenants()": (
        frozenset({"pyflows_app"}), "reads every tenant; refuses all but pyflows_admin and the schema owner"),
    "pyflows.admin_list_incomplete_flows(interval)": (
        frozenset({"pyflows_app"}), "reads every tenant; refuses non-members of pyflows_admin itself"),
    "pyflows.admin_metrics()": (
        frozenset({"pyflows_app"}), "counts across tenants; refuses non-members of pyflows_admin itself"),
    "pyflows.claim_file_cleanups(integer,interval)": (
        frozenset({"pyflows_app"}), "reads every tenant's queue; refuses non-members of pyflows_admin itself"),
    "pyflows.finish_file_cleanup(bigint,text)": (
        frozenset({"pyflows_app"}), "updates every tenant's queue; refuses non-members of pyflows_admin itself"),
    "pyflows.prune_audit(interval,text)": (
        frozenset({"pyflows_app"}), "removes old audit rows; refuses non-members of pyflows_admin itself"),
    "pyflows.admin_list_audit_events(timestamp with time zone,text,integer)": (
        frozenset({"pyflows_app"}), "reads every tenant's events; refuses non-members of pyflows_admin itself"),
    "pyflows_audit._begin_event(text,uuid,text,jsonb,jsonb,boolean,jsonb)": (frozenset(), "called by definers only"),
    "pyflows_audit._open_event(bigint)": (frozenset(), "called by definers only"),
    "pyflows._engagement_exists(uuid,uuid)": (
        frozenset({"pyflows_app"}), "says only whether an engagement is a client's, as set_context does"),
    "pyflows_audit._begin_events(text,uuid[],text,jsonb[],jsonb[],boolean,jsonb)": (
        frozenset(), "called by definers only"),
    "pyflows_audit._end_event()": (frozenset(), "called by definers only"),
    "pyflows_audit._close_events(bigint[])": (frozenset(), "called by definers only"),
    "pyflows_audit._statement_event(text,uuid,bigint,uuid,bigint,uuid)": (
        frozenset(), "called by the triggers"),
}
# The delete trigger of each audited table (migration 0012 generates one function per table).
DEFINER |= {f"pyflows_audit._on_delete_{table}()": (
    frozenset(), "trigger: archives deleted rows, queues deleted imports' files")
    for table in ("clients", "engagements", "discovery_flows", "data_imports", "raw_import_records",
                  "import_field_mappings", "assets", "asset_dependencies")}

FUNCTIONS = """
    select p.oid::regprocedure::text as signature, n.nspname as schema, p.prosecdef as definer,
           coalesce(p.proconfig, '{}') as config, p.proacl is null as default_acl,
           coalesce((select array_agg(case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end
                                      order by 1)
                       from aclexplode(p.proacl) as a
                      where a.privilege_type = 'EXECUTE' and a.grantee <> p.proowner), '{}') as grantees
      from pg_proc as p join pg_namespace as n on n.oid = p.pronamespace
     where n.nspname in ('pyflows', 'pyflows_audit')
"""


def functions(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(FUNCTIONS)
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_every_security_definer_function_is_known_pinned_and_granted_on_purpose(
        owner: psycopg.Connection[Any]) -> None:
    definers = {f["signature"]: f for f in functions(owner) if f["definer"]}
    assert set(definers) == set(DEFINER), "a SECURITY DEFINER function was added or removed: say who may run it"
    for signature, f in definers.items():
        assert set(f["grantees"]) == DEFINER[signature][0], signature


def test_no_function_is_executable_by_public(owner: psycopg.Connection[Any]) -> None:
    every = functions(owner)
    assert len(every) > 50
    open_to_public = [f["signature"] for f in every if f["default_acl"] or "PUBLIC" in f["grantees"]]
    assert open_to_public == []


# Functions that may not pin search_path, and why. Each names every type and function it uses by
# schema, so that the caller's path cannot change what it does (tests/test_hardening.py plants
# look-alikes and calls them).
UNPINNED: dict[str, str] = {
    "pyflows.current_client_id()": "inlined into every row-level security policy: a SET clause prevents inlining",
    "pyflows.current_engagement_id()": "inlined into every row-level security policy",
    "pyflows.current_actor()": "read like the two above, and as cheaply",
    "pyflows.purge_flow(uuid,text,integer,boolean)": (
        "a procedure that COMMITs may have no SET clause; it runs as its caller, with nothing of the owner's"),
}


def test_every_function_pins_search_path_with_pg_temp_last(owner: psycopg.Connection[Any]) -> None:
    # Without pg_temp in the path, PostgreSQL searches the caller's temporary schema first for relations
    # and types: a temporary domain named "text" would run the caller's code as the function's owner.
    every = functions(owner)
    assert len(every) > 50
    problems = []
    for f in every:
        paths = [c for c in f["config"] if c.startswith("search_path=")]
        if f["signature"] in UNPINNED:
            if paths or f["definer"]:
                problems.append(f"{f['signature']}: listed as unpinned, but pins {paths} or is a definer")
            continue
        schemas = paths[0].removeprefix("search_path=").split(", ") if len(paths) == 1 else []
        if not (len(schemas) >= 3 and schemas[0] == "pg_catalog" and schemas[-1] == "pg_temp"
                and f["schema"] in schemas):
            problems.append(f"{f['signature']}: search_path {paths}, not pg_catalog, {f['schema']}, ..., pg_temp")
    assert problems == [], "\n".join(problems)


def test_the_application_role_cannot_write_the_audit_or_read_the_archive(owner: psycopg.Connection[Any]) -> None:
    rows = owner.execute("""
        select c.relname, has_table_privilege('pyflows_app', c.oid, 'SELECT'),
               has_table_privilege('pyflows_app', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
          from pg_class c where c.relnamespace = 'pyflows_audit'::regnamespace and c.relkind in ('r', 'p', 'v')
         order by 1""").fetchall()
    assert rows, "no audit tables found"
    assert [(name, read) for name, read, write in rows if write] == []
    assert [name for name, read, _ in rows if read] == ["events"]


def test_truncate_of_any_tenant_table_is_refused_even_for_the_owner(owner: psycopg.Connection[Any],
                                                                     tenant_a: Tenant) -> None:
    # TRUNCATE fires no DELETE trigger: allowed, it would remove rows without an archive or an event.
    with owner.transaction():
        write_flow_tree(owner, tenant_a)
    before = fingerprint(owner)
    tables = [r[0] for r in owner.execute(
        "select c.oid::regclass::text from pg_class c where c.relnamespace = 'pyflows'::regnamespace "
        "and c.relkind in ('r', 'p') and (c.relrowsecurity or c.relispartition) order by 1").fetchall()]
    assert len(tables) >= 10 and "pyflows.raw_import_records_default" in tables  # partitions too
    for table in tables:
        with pytest.raises(psycopg.Error) as caught:
            owner.execute(f"truncate {table} cascade")
        assert caught.value.sqlstate == "PF403", table
    assert fingerprint(owner) == before
