"""Work whose cost must not hang on the statistics. Foreign-key lookups read the right index: the plans,
read on a freshly migrated database that has rows but no statistics (autovacuum off), for every foreign
key, both ways. A large flow's impact counts the external edges from the smaller side: the index scans
it starts, counted under statistics another tenant's larger flow dominates. A load's batch finds the
import's last row by one index entry."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyflows.testing import Tenant

from .helpers import set_raw_context

FOREIGN_KEYS = """
    select c.conname, c.conrelid::regclass::text, c.confrelid::regclass::text,
           array(select a.attname::text from unnest(c.conkey) with ordinality k(n, o)
                 join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.o),
           array(select a.attname::text from unnest(c.confkey) with ordinality k(n, o)
                 join pg_attribute a on a.attrelid = c.confrelid and a.attnum = k.n order by k.o),
           array(select format_type(a.atttypid, null) from unnest(c.conkey) with ordinality k(n, o)
                 join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.n order by k.o)
      from pg_constraint c
     where c.contype = 'f' and c.connamespace = 'pyflows'::regnamespace
     order by 1"""


def load_without_statistics(owner: psycopg.Connection[Any], tenant: Tenant, rows: int) -> None:
    """A flow of `rows` assets, edges, records and mappings, written in one transaction, never analyzed."""
    for (table,) in owner.execute("select oid::regclass::text from pg_class where relkind = 'r' "
                                  "and relnamespace = 'pyflows'::regnamespace").fetchall():
        owner.execute(sql.SQL("alter table {} set (autovacuum_enabled = off)").format(sql.SQL(table)))
    with owner.transaction():
        set_raw_context(owner, tenant)
        ids = {"c": tenant.client_id, "e": tenant.engagement_id, "n": rows}
        flow = owner.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name) "
                             "values (%(c)s, %(e)s, 'big') returning id", ids).fetchone()[0]
        ids["f"] = flow
        owner.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status, phases_completed) "
                      "select %(c)s, %(e)s, 'old ' || g, 'cancelled', '{}' from generate_series(1, %(n)s / 10) g", ids)
        imp = owner.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, "
                            "storage_uri, byte_size) values (%(c)s, %(e)s, %(f)s, 'a.csv', 'file:///u/a.csv', 1) "
                            "returning id", ids).fetchone()[0]
        ids["i"] = imp
        owner.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
                      "select %(c)s, %(e)s, %(i)s, g, '{}' from generate_series(1, %(n)s) g", ids)
        owner.execute("insert into pyflows.import_field_mappings (client_id, engagement_id, import_id, source_field) "
                      "select %(c)s, %(e)s, %(i)s, 'f' || g from generate_series(1, %(n)s / 10) g", ids)
        owner.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                      "select %(c)s, %(e)s, %(f)s, 'h' || g, 'server' from generate_series(1, %(n)s) g", ids)
        owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                      "target_asset_id, dependency_type) select client_id, engagement_id, flow_id, id, id + 1, 'n' "
                      "from pyflows.assets where flow_id = %(f)s and id < (select max(id) from pyflows.assets)", ids)
    assert owner.execute("select count(*) from pg_stats where schemaname = 'pyflows'").fetchone() == (0,)


def generic_plan(conn: psycopg.Connection[Any], statement: sql.Composable, types: list[str]) -> str:
    with conn.transaction(force_rollback=True):
        conn.execute("set local plan_cache_mode = force_generic_plan")
        conn.execute(sql.SQL("prepare lookup ({}) as {}").format(sql.SQL(", ").join(map(sql.SQL, types)), statement))
        try:
            args = sql.SQL(", ").join(sql.SQL("null") for _ in types)
            return "\n".join(r[0] for r in conn.execute(sql.SQL("explain execute lookup ({})").format(args)))
        finally:
            conn.execute("deallocate lookup")


def equalities(columns: list[str]) -> sql.Composable:
    """`a = $1 and b = $2 ...`: what a referential trigger's query compares."""
    return sql.SQL(" and ").join(sql.SQL("{} = ${}").format(sql.Identifier(c), sql.SQL(str(n)))
                                 for n, c in enumerate(columns, 1))


def only(owner: psycopg.Connection[Any], table: str) -> sql.Composable:
    """ONLY, but for a partitioned table: as PostgreSQL's ri_triggers.c writes its queries."""
    partitioned = owner.execute("select relkind = 'p' from pg_class where oid = %s::regclass", (table,)).fetchone()
    return sql.SQL("" if partitioned and partitioned[0] else "only ")


def reads_by_index_on(plan: str, columns: list[str]) -> bool:
    """The plan reads the table through one index whose condition names every column, and filters nothing."""
    conditions = " ".join(re.findall(r"Index Cond: (.*)", plan))
    return ("Index Scan" in plan or "Index Only Scan" in plan) and "Filter:" not in plan \
        and all(re.search(rf"\b{c}\b", conditions) for c in columns)


def test_every_foreign_key_lookup_uses_its_own_index_without_statistics(owner: psycopg.Connection[Any],
                                                                         tenant_a: Tenant) -> None:
    load_without_statistics(owner, tenant_a, 3000)
    problems = []
    keys = owner.execute(FOREIGN_KEYS).fetchall()
    assert len(keys) >= 9
    for name, child, parent, columns, parent_columns, types in keys:
        # What the referential triggers run: the check of a new child row, and the cascade of a parent's delete.
        check = sql.SQL("select 1 from {}{} as x where {} for key share of x").format(
            only(owner, parent), sql.SQL(parent), equalities(parent_columns))
        cascade = sql.SQL("delete from {}{} as x where {}").format(only(owner, child), sql.SQL(child),
                                                                   equalities(columns))
        for kind, statement, cols in (("check", check, parent_columns), ("cascade", cascade, columns)):
            plan = generic_plan(owner, statement, list(types))
            if not reads_by_index_on(plan, cols):
                problems.append(f"{name} ({kind} on {parent if kind == 'check' else child}):\n{plan}")
    assert problems == [], "\n".join(problems)


def _flow_of(owner: psycopg.Connection[Any], tenant: Tenant, assets: int, edges_per_asset: int = 2) -> Any:
    """A cancelled flow of `assets` assets and about `edges_per_asset` edges an asset among them."""
    ids = {"c": tenant.client_id, "e": tenant.engagement_id, "n": assets, "k": edges_per_asset}
    with owner.transaction():
        ids["f"] = owner.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                                 "values (%(c)s, %(e)s, 'f', 'cancelled') returning id", ids).fetchone()[0]
        owner.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                      "select %(c)s, %(e)s, %(f)s, 'h' || g, 'server' from generate_series(1, %(n)s) g", ids)
        owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                      "target_asset_id, dependency_type) select a.client_id, a.engagement_id, a.flow_id, a.id, b.id, "
                      "'k' || k from pyflows.assets a join pyflows.assets b on b.flow_id = a.flow_id "
                      "and b.id = a.id + 1, generate_series(1, %(k)s) k where a.flow_id = %(f)s", ids)
    return ids["f"]


@pytest.mark.parametrize("counter", ["_deletion_counts", "_batch_deletion_counts"])
@pytest.mark.parametrize("others", ["none", "few edges", "more edges than assets"])
def test_a_large_flows_external_edges_are_counted_the_cheap_way_whatever_the_statistics(
        owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant, others: str, counter: str) -> None:
    """The external edges of a flow of many assets: from the other flows' edges when they are fewer than the
    flow's assets, else from the flow's assets; chosen from counts, not from the planner's estimates, which
    are far off once another tenant's larger flow is in the statistics (here 600 assets, estimated far
    below). Counted by the index scans the count starts on the edges: two an asset the other way. The same
    for the impact of one flow and of a batch (delete_flows), whose own edges are counted by flow."""
    _flow_of(owner, tenant_b, 4000)  # another client's larger flow
    flow = _flow_of(owner, tenant_a, 600)
    theirs = None if others == "none" else _flow_of(owner, tenant_a, 3, 1 if others == "few edges" else 400)
    expected = 0
    if theirs is not None:
        with owner.transaction():
            set_raw_context(owner, tenant_a)
            edge = ("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                    "target_asset_id, dependency_type) select %s, %s, %s, s, t, 'x' from "
                    "(select min(id) from pyflows.assets where flow_id = %s) o(s), "
                    "(select min(id) from pyflows.assets where flow_id = %s) m(t)")
            owner.execute(edge, (tenant_a.client_id, tenant_a.engagement_id, theirs, flow, theirs))  # from ours
            owner.execute(edge, (tenant_a.client_id, tenant_a.engagement_id, theirs, theirs, flow))  # into ours
        expected = 2
    owner.execute("analyze pyflows.assets")
    owner.execute("analyze pyflows.asset_dependencies")
    owner.execute("analyze pyflows.discovery_flows")
    with owner.transaction(force_rollback=True):
        set_raw_context(owner, tenant_a)
        scans = ("select idx_scan from pg_catalog.pg_stat_xact_user_tables "
                 "where relid = 'pyflows.asset_dependencies'::regclass")
        before = owner.execute(scans).fetchone()[0]
        if counter == "_deletion_counts":
            counts = owner.execute("select pyflows._deletion_counts(%s)", (flow,)).fetchone()[0]
        else:
            counts = owner.execute("select pyflows._batch_deletion_counts(array[%s])",
                                   (flow,)).fetchone()[0][str(flow)]
        started = owner.execute(scans).fetchone()[0] - before
    assert counts["counts"]["assets"] == 600
    assert counts["external_dependencies"] == expected
    assert counts["counts"]["asset_dependencies"] == 1198 + expected
    if others == "more edges than assets":
        assert started >= 1200  # by the flow's asset ids: the source and target indexes, once an asset
    else:
        assert started <= 5, f"{started} index scans on the edges"


@pytest.mark.parametrize("call", ["begin_copy_records(%s)", "add_records(%s, '[{\"Host\": \"h\"}]')"])
def test_a_load_finds_the_imports_last_row_by_one_index_entry_without_statistics(
        owner: psycopg.Connection[Any], tenant_a: Tenant, call: str) -> None:
    """Each batch of a load numbers its rows after the import's last one: it reads one entry of the import's
    key, not every row the import already has (max() did, on a table without statistics), and the next
    number is still the last one's successor."""
    load_without_statistics(owner, tenant_a, 3000)
    imported = owner.execute("select import_id from pyflows.raw_import_records where client_id = %s "
                             "group by 1 order by count(*) desc limit 1", (tenant_a.client_id,)).fetchone()[0]
    # The index entries this transaction's scans of the records' import key returned so far.
    read = "select pg_stat_get_xact_tuples_returned('pyflows.raw_import_records_default_import_row_key'::regclass)"
    with owner.transaction(force_rollback=True):
        set_raw_context(owner, tenant_a)
        before = owner.execute(read).fetchone()[0]
        answer = owner.execute(sql.SQL("select pyflows.{}").format(sql.SQL(call)), (imported,)).fetchone()[0]
        assert owner.execute(read).fetchone()[0] - before <= 2
        numbered = owner.execute("select max(row_number) from pyflows.raw_import_records where import_id = %s",
                                 (imported,)).fetchone()[0]
        if call.startswith("begin"):  # it answers the next number
            assert (answer["next_row_number"], numbered) == (3001, 3000)
        else:  # it gave that number to the row it loaded
            assert (answer["loaded"], numbered) == (1, 3001)
