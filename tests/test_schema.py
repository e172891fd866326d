"""The schema as the catalog sees it: cascades, indexes, tenant-leading keys, RLS, roles, derived progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyflows.testing import Tenant

from .helpers import (
    FLOW_TREE_TABLES,
    TENANT_TABLES,
    constraint_of,
    count_rows,
    mark_deleting,
    set_raw_context,
    write_flow_tree,
)

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

# The declared cascade map: (child table, its columns) -> (parent table, its columns, ON DELETE).
CASCADE_MAP = {
    ("engagements", ("client_id",)): ("clients", ("id",), "CASCADE"),
    ("discovery_flows", ("client_id", "engagement_id")): ("engagements", ("client_id", "id"), "CASCADE"),
    ("data_imports", ("client_id", "engagement_id", "flow_id")):
        ("discovery_flows", ("client_id", "engagement_id", "id"), "CASCADE"),
    ("raw_import_records", ("client_id", "engagement_id", "import_id")):
        ("data_imports", ("client_id", "engagement_id", "id"), "CASCADE"),
    ("import_field_mappings", ("client_id", "engagement_id", "import_id")):
        ("data_imports", ("client_id", "engagement_id", "id"), "CASCADE"),
    ("assets", ("client_id", "engagement_id", "flow_id")):
        ("discovery_flows", ("client_id", "engagement_id", "id"), "CASCADE"),
    ("asset_dependencies", ("client_id", "engagement_id", "flow_id")):
        ("discovery_flows", ("client_id", "engagement_id", "id"), "CASCADE"),
    ("asset_dependencies", ("client_id", "engagement_id", "source_asset_id")):
        ("assets", ("client_id", "engagement_id", "id"), "CASCADE"),
    ("asset_dependencies", ("client_id", "engagement_id", "target_asset_id")):
        ("assets", ("client_id", "engagement_id", "id"), "CASCADE"),
}

INCOMPLETE = ("initialized", "running", "paused", "waiting_for_user", "failed")
ALL_PHASES = ("data_import", "data_validation", "field_mapping", "data_cleansing", "asset_inventory",
              "dependency_analysis", "tech_debt_analysis")

FOREIGN_KEYS = """
    select c.conrelid::regclass::text, c.confrelid::regclass::text, c.confdeltype,
           array(select a.attname::text from unnest(c.conkey) with ordinality k(n, i)
                 join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.i),
           array(select a.attname::text from unnest(c.confkey) with ordinality k(n, i)
                 join pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.n order by k.i)
      from pg_constraint c
     where c.contype = 'f' and c.connamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
       and c.conparentid = 0  -- a partition's keys are its parent's
"""
DELTYPE = {"c": "CASCADE", "a": "NO ACTION", "r": "RESTRICT", "n": "SET NULL", "d": "SET DEFAULT"}


def _strip(name: str) -> str:
    return name.removeprefix("pyflows.")


def test_foreign_keys_equal_the_declared_cascade_map(owner: psycopg.Connection[Any]) -> None:
    actual = {
        (_strip(child), tuple(cols)): (_strip(parent), tuple(pcols), DELTYPE[deltype])
        for child, parent, deltype, cols, pcols in owner.execute(FOREIGN_KEYS)
    }
    assert actual == CASCADE_MAP


def test_every_foreign_key_has_an_index_leading_with_its_columns(owner: psycopg.Connection[Any]) -> None:
    indexes: dict[str, list[list[str]]] = {}
    for table, columns in owner.execute("""
            select i.indrelid::regclass::text,
                   array(select a.attname::text from unnest(i.indkey) with ordinality k(n, o)
                         join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.n order by k.o)
              from pg_index i join pg_class c on c.oid = i.indrelid
             where c.relnamespace = 'pyflows'::regnamespace and i.indpred is null"""):
        indexes.setdefault(_strip(table), []).append(list(columns))
    missing = []
    for child, _, _, cols, _ in owner.execute(FOREIGN_KEYS):
        # The index's leading columns are the key's, in any order (since migration 0011 the key's own
        # column comes first): every lookup the key makes is an equality on all of them.
        if not any(set(index[: len(cols)]) == set(cols) for index in indexes.get(_strip(child), [])):
            missing.append((child, cols))
    assert missing == []


def test_every_key_of_a_tenant_table_contains_the_tenant(owner: psycopg.Connection[Any]) -> None:
    # Every primary, unique and foreign key of a flow-owned table contains (client_id, engagement_id), so
    # no child can point at another tenant's parent and a distributed engine can co-locate a tenant.
    rows = owner.execute("""
        select c.conrelid::regclass::text, c.conname, c.contype,
               array(select a.attname::text from unnest(c.conkey) with ordinality k(n, i)
                     join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.i)
          from pg_constraint c
         where c.connamespace = 'pyflows'::regnamespace and c.contype in ('p', 'u', 'f')""").fetchall()
    checked = set()
    for table, name, contype, columns in rows:
        table = _strip(table)
        if table not in TENANT_TABLES:
            continue
        checked.add(table)
        tenant = {"id"} if table == "clients" and contype != "f" else {"client_id"}
        if table not in ("clients", "engagements"):
            tenant = {"client_id", "engagement_id"}
        assert tenant <= set(columns), f"{name} on {table} lacks {tenant - set(columns)}: {columns}"
    assert checked == set(TENANT_TABLES)


def test_keys_lead_with_their_own_column_so_each_lookup_has_one_index(owner: psycopg.Connection[Any]) -> None:
    # Which index each lookup uses must not depend on statistics (tests/test_plans.py reads the plans):
    # no two indexes of a flow-owned table may lead with the same column, unless partial.
    rows = owner.execute("""
        select c.relname, i.indexrelid::regclass::text, a.attname
          from pg_index i join pg_class c on c.oid = i.indrelid
          join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
         where c.relnamespace = 'pyflows'::regnamespace and i.indpred is null
           and c.relname in ('data_imports', 'raw_import_records', 'import_field_mappings', 'assets',
                             'asset_dependencies', 'discovery_flows')""").fetchall()
    leading: dict[tuple[str, str], list[str]] = {}
    for table, index, column in rows:
        leading.setdefault((table, column), []).append(index)
    assert [v for v in leading.values() if len(v) > 1] == []
    assert len(rows) >= 11


def test_tenant_tables_are_exactly_those_with_a_client_id(owner: psycopg.Connection[Any]) -> None:
    rows = owner.execute("""
        select c.relname from pg_class c
         where c.relnamespace = 'pyflows'::regnamespace and c.relkind in ('r', 'p') and not c.relispartition
           and (exists (select from pg_attribute a where a.attrelid = c.oid and a.attname = 'client_id')
                or c.relname = 'clients')""").fetchall()
    assert {r[0] for r in rows} == set(TENANT_TABLES)


def test_rls_is_enabled_and_forced_with_one_symmetric_policy_per_tenant_table(
        owner: psycopg.Connection[Any]) -> None:
    rows = owner.execute("""
        select c.relname, c.relrowsecurity, c.relforcerowsecurity,
               (select count(*) from pg_policy p where p.polrelid = c.oid),
               (select bool_and(p.polcmd = '*' and p.polpermissive
                                and pg_get_expr(p.polqual, p.polrelid) = pg_get_expr(p.polwithcheck, p.polrelid))
                  from pg_policy p where p.polrelid = c.oid),
               (select pg_get_expr(p.polqual, p.polrelid) from pg_policy p where p.polrelid = c.oid limit 1)
          from pg_class c
         where c.relnamespace = 'pyflows'::regnamespace and c.relname = any(%s)""",
                         (list(TENANT_TABLES),)).fetchall()
    assert len(rows) == len(TENANT_TABLES)
    for table, enabled, forced, policies, symmetric, qual in rows:
        assert enabled and forced, table
        assert policies == 1 and symmetric, table
        assert "current_client_id()" in qual, (table, qual)
        if table != "clients":
            assert "current_engagement_id()" in qual, (table, qual)


def test_policy_helpers_are_inlinable(owner: psycopg.Connection[Any]) -> None:
    rows = owner.execute("""
        select p.proname, l.lanname, p.provolatile, p.prosecdef, p.proconfig
          from pg_proc p join pg_language l on l.oid = p.prolang
         where p.pronamespace = 'pyflows'::regnamespace
           and p.proname in ('current_client_id', 'current_engagement_id', 'current_actor')""").fetchall()
    assert len(rows) == 3
    for name, language, volatility, security_definer, config in rows:
        assert (language, volatility, security_definer, config) == ("sql", "s", False, None), name



def test_functions_that_fold_the_context_are_called_by_tenant_checks_alone(owner: psycopg.Connection[Any]) -> None:
    """An IMMUTABLE function that reads the context (or the COPY a statement was opened for) is folded into
    the value it had when a statement was prepared: what the partitions' CHECK constraints want (they are
    prepared a statement at a time, migrations 0023 and 0025), wrong wherever a plan outlives its statement
    (a function's cached plans, a prepared statement, a view, a policy, an index) or the planner reasons
    with a constraint (a validated CHECK)."""
    folding = dict(owner.execute("""
        select p.oid, p.proname from pg_proc p
         where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace) and p.provolatile = 'i'
           and p.prosrc ~ 'current_setting|current_client_id|current_engagement_id|current_actor'""").fetchall())
    assert sorted(folding.values()) == ["_statement_client_id", "_statement_copy_key", "_statement_engagement_id"]
    users = owner.execute("""
        select pg_describe_object(d.classid, d.objid, d.objsubid),
               coalesce(k.contype = 'c' and not k.convalidated, false)
          from pg_depend d left join pg_constraint k on d.classid = 'pg_constraint'::regclass and k.oid = d.objid
         where d.refclassid = 'pg_proc'::regclass and d.refobjid = any(%s)""", (list(folding),)).fetchall()
    assert users and all(unvalidated_check for _, unvalidated_check in users), users
    callers = owner.execute("""
        select p.oid::regprocedure::text from pg_proc p
         where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace) and p.oid <> all(%s)
           and exists (select from unnest(%s::text[]) n where strpos(p.prosrc, n) > 0)""",
                            (list(folding), list(folding.values()))).fetchall()
    assert callers == [("pyflows._check_partition_tenant(regclass)",)]  # which writes the constraints

def test_policies_use_the_tenant_index_not_a_scan(owner: psycopg.Connection[Any],
                                                  make_tenant: Callable[..., Tenant]) -> None:
    tenant = make_tenant()
    with owner.transaction():
        owner.execute("set local role pyflows_test_app")
        owner.execute("set local enable_seqscan = off")
        set_raw_context(owner, tenant)
        plan = "\n".join(r[0] for r in owner.execute("explain select * from pyflows.discovery_flows"))
    assert "Index" in plan and "current_client_id" not in plan, plan  # inlined into an index condition


def test_partial_unique_index_lists_exactly_the_incomplete_statuses(owner: psycopg.Connection[Any]) -> None:
    row = owner.execute("""
        select pg_get_expr(i.indpred, i.indrelid), i.indisunique
          from pg_index i where i.indexrelid = 'pyflows.discovery_flows_one_incomplete'::regclass""").fetchone()
    assert row is not None
    predicate, unique = row
    assert unique
    assert sorted(s for s in INCOMPLETE if f"'{s}'" in predicate) == sorted(INCOMPLETE)
    for terminal in ("completed", "cancelled", "deleting"):
        assert f"'{terminal}'" not in predicate


def test_phases_are_seeded_in_order(owner: psycopg.Connection[Any]) -> None:
    rows = owner.execute("select phase, title, next_step from pyflows.phases order by position").fetchall()
    assert tuple(r[0] for r in rows) == ALL_PHASES
    assert all(title and next_step for _, title, next_step in rows)


def test_roles_are_nologin_and_unprivileged(owner: psycopg.Connection[Any]) -> None:
    rows = owner.execute("""
        select rolname, rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb
          from pg_roles where rolname in ('pyflows_app', 'pyflows_admin')""").fetchall()
    assert sorted(rows) == [("pyflows_admin", False, False, False, False, False),
                            ("pyflows_app", False, False, False, False, False)]


def test_app_role_grants_are_least_privilege(owner: psycopg.Connection[Any]) -> None:
    def privileges(table: str) -> set[str]:
        return {p for p in ("select", "insert", "update", "delete", "truncate", "references", "trigger")
                if owner.execute("select has_table_privilege('pyflows_app', %s, %s)",
                                 (f"pyflows.{table}", p)).fetchone() == (True,)}

    for table in ("clients", "engagements", "phases", "file_cleanup_queue"):
        assert privileges(table) == {"select"}, table
    for table in FLOW_TREE_TABLES:
        assert privileges(table) == {"select", "insert", "update", "delete"}, table
    assert privileges("installed_sql") == {"select"}  # what is installed, for pyflows check (migration 0013)
    public_exec = owner.execute("""
        select p.oid::regprocedure::text from pg_proc p
         where p.pronamespace = 'pyflows'::regnamespace
           and has_function_privilege('public', p.oid, 'execute')""").fetchall()
    assert public_exec == []


def test_security_definer_functions_pin_search_path(owner: psycopg.Connection[Any]) -> None:
    rows = owner.execute("""
        select p.oid::regprocedure::text, p.proconfig from pg_proc p
         where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
           and p.prosecdef""").fetchall()
    for name, config in rows:
        assert config and any(c.startswith("search_path=") for c in config), name


# ---- behaviour the schema enforces ---------------------------------------------------------------------


def _insert_flow(conn: psycopg.Connection[Any], tenant: Tenant, **columns: Any) -> dict[str, Any]:
    set_raw_context(conn, tenant)
    columns = {"name": "flow", **columns}
    query = sql.SQL(
        "insert into pyflows.discovery_flows (client_id, engagement_id, {names}) values (%(c)s, %(e)s, {values}) "
        "returning status, current_phase, phases_completed, progress_percentage, id").format(
        names=sql.SQL(", ").join(sql.Identifier(k) for k in columns),
        values=sql.SQL(", ").join(sql.Placeholder(k) for k in columns))
    row = conn.execute(query, {"c": tenant.client_id, "e": tenant.engagement_id, **columns}).fetchone()
    assert row is not None
    return dict(zip(("status", "current_phase", "phases_completed", "progress_percentage", "id"), row, strict=True))


def test_progress_is_derived_from_phases_completed(owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    flow = _insert_flow(owner, tenant_a, status="cancelled",
                        phases_completed=["field_mapping", "data_import", "data_import"])
    assert flow["phases_completed"] == ["data_import", "field_mapping"]  # ordered, de-duplicated
    assert str(flow["progress_percentage"]) == "28.57"
    full = _insert_flow(owner, tenant_a, status="completed", phases_completed=list(ALL_PHASES))
    assert str(full["progress_percentage"]) == "100.00"
    fresh = _insert_flow(owner, tenant_a)
    assert (fresh["status"], fresh["current_phase"], str(fresh["progress_percentage"])) == \
        ("initialized", "data_import", "0.00")


def test_progress_follows_updates_and_cannot_be_written(owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    _insert_flow(owner, tenant_a)
    row = owner.execute("update pyflows.discovery_flows set phases_completed = '{data_import,data_validation}' "
                        "returning progress_percentage").fetchone()
    assert row is not None and str(row[0]) == "28.57"
    with pytest.raises(psycopg.Error) as caught:
        owner.execute("update pyflows.discovery_flows set progress_percentage = 99")
    assert caught.value.sqlstate == "PF422"
    with pytest.raises(psycopg.Error) as caught:
        _insert_flow(owner, tenant_a, status="cancelled", progress_percentage=50)
    assert caught.value.sqlstate == "PF422"
    assert str(owner.execute("select progress_percentage from pyflows.discovery_flows").fetchone()[0]) == "28.57"


@pytest.mark.parametrize("column, value", [
    ("phases_completed", ["data_import", "no_such_phase"]),
    ("phases_completed", [None]),
    ("current_phase", "no_such_phase"),
])
def test_unknown_phases_are_refused(owner: psycopg.Connection[Any], tenant_a: Tenant, column: str,
                                    value: Any) -> None:
    with pytest.raises(psycopg.Error) as caught:
        _insert_flow(owner, tenant_a, **{column: value})
    assert caught.value.sqlstate == "PF422"
    assert count_rows(owner, "discovery_flows") == 0


@pytest.mark.parametrize("column, value", [
    ("status", "deleted"), ("status", "archived"), ("name", ""), ("name", "   "), ("name", "x" * 201),
])
def test_invalid_flow_values_are_refused(owner: psycopg.Connection[Any], tenant_a: Tenant, column: str,
                                         value: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        _insert_flow(owner, tenant_a, **{column: value})
    assert count_rows(owner, "discovery_flows") == 0


def test_one_incomplete_flow_per_context(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                         make_tenant: Callable[..., Tenant]) -> None:
    _insert_flow(owner, tenant_a, status="completed", phases_completed=list(ALL_PHASES))
    _insert_flow(owner, tenant_a, status="cancelled")
    _insert_flow(owner, tenant_a, status="paused")
    for status in INCOMPLETE:
        with pytest.raises(psycopg.errors.UniqueViolation) as caught, owner.transaction():
            _insert_flow(owner, tenant_a, status=status)
        assert constraint_of(caught.value) == "discovery_flows_one_incomplete"
    # Another engagement of the same client is another context.
    other = make_tenant()
    with owner.transaction():
        owner.execute("insert into pyflows.engagements (client_id, id, name) "
                      "select %s, gen_random_uuid(), 'second' returning id", (other.client_id,))
    _insert_flow(owner, other, status="running")
    assert count_rows(owner, "discovery_flows") == 4


def test_deleting_a_flow_cascades_through_its_tree(owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    kept = write_flow_tree(owner, tenant_a, status="completed", name="kept")
    gone = write_flow_tree(owner, tenant_a, status="running", name="gone")
    before = {t: count_rows(owner, t) for t in FLOW_TREE_TABLES}
    owner.execute("delete from pyflows.discovery_flows where id = %s", (gone.flow_id,))
    after = {t: count_rows(owner, t) for t in FLOW_TREE_TABLES}
    assert after == {t: n // 2 for t, n in before.items()}
    assert owner.execute("select count(*) from pyflows.assets where flow_id = %s",
                         (kept.flow_id,)).fetchone() == (3,)


def test_composite_keys_refuse_a_child_under_another_tenants_parent(
        owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant) -> None:
    tree = write_flow_tree(owner, tenant_a)
    set_raw_context(owner, tenant_b)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        owner.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                      "values (%s, %s, %s, 'x', 'server')",
                      (tenant_b.client_id, tenant_b.engagement_id, tree.flow_id))


def test_deleting_a_client_cascades_to_its_flows_only(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                      tenant_b: Tenant) -> None:
    write_flow_tree(owner, tenant_a)
    write_flow_tree(owner, tenant_b)
    owner.execute("delete from pyflows.clients where id = %s", (tenant_a.client_id,))
    for table in FLOW_TREE_TABLES:
        query = sql.SQL("select count(*), count(*) filter (where client_id = %s) from {}").format(
            sql.Identifier("pyflows", table))
        assert owner.execute(query, (tenant_b.client_id,)).fetchone() == (count_rows(owner, table),) * 2, table


# The lifecycle, written out pair by pair (not derived from the trigger's own rule). 'deleting' is
# reached only through a purge's first step (tested below), never by a plain UPDATE.
ALLOWED_TRANSITIONS = {
    "initialized": {"running", "paused", "waiting_for_user", "failed", "cancelled", "completed"},
    "running": {"paused", "waiting_for_user", "failed", "cancelled", "completed"},
    "paused": {"running", "waiting_for_user", "failed", "cancelled", "completed"},
    "waiting_for_user": {"running", "paused", "failed", "cancelled", "completed"},
    "failed": {"running", "paused", "waiting_for_user", "cancelled", "completed"},
    "completed": set(),
    "cancelled": set(),
    "deleting": set(),
}


def test_status_transitions_follow_the_lifecycle(owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    refused = []
    for source, targets in ALLOWED_TRANSITIONS.items():
        for target in ALLOWED_TRANSITIONS:
            if target == source:
                continue
            with owner.transaction(force_rollback=True):
                flow = _insert_flow(owner, tenant_a, status="cancelled" if source == "deleting" else source,
                                    phases_completed=list(ALL_PHASES))
                if source == "deleting":
                    mark_deleting(owner, tenant_a, flow["id"])
                try:
                    with owner.transaction():
                        owner.execute("update pyflows.discovery_flows set status = %s", (target,))
                except psycopg.Error as exc:
                    assert exc.sqlstate == "PF422", (source, target, exc)
                    refused.append((source, target))
            assert ((source, target) not in refused) == (target in targets), (source, target)


def test_completion_needs_every_phase(owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    _insert_flow(owner, tenant_a, status="running", phases_completed=list(ALL_PHASES[:-1]))
    with pytest.raises(psycopg.Error) as caught:
        owner.execute("update pyflows.discovery_flows set status = 'completed'")
    assert caught.value.sqlstate == "PF422"
    row = owner.execute("update pyflows.discovery_flows set status = 'completed', phases_completed = %s "
                        "returning current_phase, completed_at is not null", (list(ALL_PHASES),)).fetchone()
    assert row == (None, True)
