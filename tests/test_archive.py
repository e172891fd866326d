"""The archive's storage: deleted rows kept as compressed arrays in chunk tables, read through views
with the names and columns of the tenant tables (migration 0009)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyflows.models import Tenant

from .helpers import set_raw_context, write_flow_tree

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

ARCHIVE = ("clients", "engagements", "discovery_flows", "data_imports", "raw_import_records", "import_field_mappings",
           "assets", "asset_dependencies")

# Incompressible text of about n kB (hex digests), so sizes survive compression.
def noise(seed: object, kilobytes: int) -> str:
    """About `kilobytes` kB of text that compresses poorly (md5 digests in hex), passed as a value: on Citus
    a subquery may not stand in an INSERT or an UPDATE."""
    return "".join(hashlib.md5(f"{g}{seed}".encode()).hexdigest() for g in range(1, kilobytes * 32 + 1))


def columns(conn: psycopg.Connection[Any], relation: str) -> list[tuple[str, str]]:
    return conn.execute(
        "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
        "where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped order by a.attnum",
        (relation,)).fetchall()


@pytest.mark.parametrize("table", ARCHIVE)
def test_the_archive_has_the_columns_of_its_tenant_table(owner: psycopg.Connection[Any], table: str) -> None:
    # A migration that changes a tenant table must change its archive row type and view alike.
    tenant = columns(owner, f"pyflows.{table}")
    assert columns(owner, f"pyflows_audit.{table}_row") == tenant
    assert columns(owner, f"pyflows_audit.{table}") == [("event_id", "bigint"), *tenant]
    kind = owner.execute("select relkind from pg_class where oid = %s::regclass", (f"pyflows_audit.{table}",))
    assert kind.fetchone() == ("v",)


def live_rows(conn: psycopg.Connection[Any], tenant: Tenant) -> dict[str, list[tuple[Any, ...]]]:
    """The client's rows of every table below the engagement, as text, in order."""
    return {t: conn.execute(sql.SQL("select t::text from {} as t where client_id = %s order by 1").format(
        sql.Identifier("pyflows", t)), (tenant.client_id,)).fetchall() for t in ARCHIVE[2:]}


def assert_archived(conn: psycopg.Connection[Any], flow_id: Any, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    """The one event of the flow holds exactly these rows, one chunk a table, and counts them."""
    event, deleted = conn.execute("select id, deleted from pyflows_audit.events where flow_id = %s",
                                  (flow_id,)).fetchone()
    for table, expected in rows.items():
        archived = conn.execute(sql.SQL("select (row({}))::{}::text from {} as a where a.event_id = %s order by 1")
                                .format(sql.SQL(", ").join(sql.Identifier("a", c) for c, _ in
                                                           columns(conn, f"pyflows.{table}")),
                                        sql.Identifier("pyflows", table), sql.Identifier("pyflows_audit", table)),
                                (event,)).fetchall()
        assert archived == expected, table
        chunks = conn.execute(sql.SQL("select count(*), sum(row_count) from {} where event_id = %s").format(
            sql.Identifier("pyflows_audit", f"{table}_chunks")), (event,)).fetchone()
        assert chunks == (1, len(expected)) and deleted[table] == len(expected), table


def test_archived_rows_are_the_deleted_rows(owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", records=4, assets=5)
    before = live_rows(owner, tenant_a)
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        owner.execute("delete from pyflows.discovery_flows where id = %s", (target.flow_id,))
    assert_archived(owner, target.flow_id, before)


def test_one_statement_over_two_clients_archives_each_clients_rows_under_an_event_of_its_own(
        owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant) -> None:
    # A trigger whose rows are one client's writes them in one statement; rows of several clients go
    # client by client (migration 0024): both must archive exactly what was deleted.
    with owner.transaction():
        a = write_flow_tree(owner, tenant_a, status="paused", records=3, assets=2)
        b = write_flow_tree(owner, tenant_b, status="paused", records=4, assets=5)
    before = {tenant.client_id: live_rows(owner, tenant) for tenant in (tenant_a, tenant_b)}
    with owner.transaction():
        owner.execute("delete from pyflows.discovery_flows where id = any(%s)", ([a.flow_id, b.flow_id],))
    for tenant, target in ((tenant_a, a), (tenant_b, b)):
        assert owner.execute("select action, client_id from pyflows_audit.events where flow_id = %s",
                             (target.flow_id,)).fetchall() == [("sql.delete", tenant.client_id)]
        assert_archived(owner, target.flow_id, before[tenant.client_id])


def test_bulk_tables_chunk_by_blocks_of_ids_and_large_rows_alone(owner: psycopg.Connection[Any],
                                                                   tenant_a: Tenant) -> None:
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", records=0, assets=0)
        ids = (tenant_a.client_id, tenant_a.engagement_id, target.import_id)
        owner.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, id, row_number, "
                      "data) select %s, %s, %s, g, g, jsonb_build_object('Host', 'h' || g) "
                      "from generate_series(1, 25000) as g", ids)
        for n in (30001, 30002):  # two records of about 64 kB each
            owner.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, id, "
                          "row_number, data) values (%s, %s, %s, %s, %s, to_jsonb(%s::text))",
                          (*ids, n, n, noise(n, 64)))
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        owner.execute("delete from pyflows.discovery_flows where id = %s", (target.flow_id,))
    chunks = owner.execute("select c.row_count, pg_column_size(c.rows) > 16384 * c.row_count "
                           "from pyflows_audit.raw_import_records_chunks as c order by 1").fetchall()
    # ids 1-9,999, 10,000-19,999 and 20,000-25,000 (a block holds at most 10,000 ids), then each
    # large record in a chunk of its own.
    assert chunks == [(1, True), (1, True), (5001, False), (9999, False), (10000, False)]
    assert owner.execute("select count(*), count(distinct id) from pyflows_audit.raw_import_records "
                         "where client_id = %s", (tenant_a.client_id,)).fetchone() == (25002, 25002)


def test_other_tables_chunk_by_size(owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        for n in range(5):  # five finished flows of about 4 MB each
            owner.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                          "values (%s, %s, %s, 'cancelled')",
                          (tenant_a.client_id, tenant_a.engagement_id, f"flow {n}"))
        owner.execute("update pyflows.discovery_flows set agent_insights = jsonb_build_array(%s::text) "
                      "where client_id = %s", (noise("x", 4096), tenant_a.client_id))
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        owner.execute("delete from pyflows.discovery_flows where client_id = %s", (tenant_a.client_id,))
    chunks = owner.execute("select row_count from pyflows_audit.discovery_flows_chunks").fetchall()
    assert len(chunks) >= 2 and sum(c[0] for c in chunks) == 5
    assert owner.execute("select count(*) from pyflows_audit.discovery_flows where agent_insights is not null "
                         "and pg_column_size(agent_insights) > 1000000").fetchone() == (5,)


def test_settings_naming_a_running_purge_never_take_rows_into_it(
        app_conn: Callable[[Tenant], psycopg.Connection[Any]], tenant_a: Tenant, tenant_b: Tenant,
        owner: psycopg.Connection[Any]) -> None:
    # A purge's event receives rows only while one of its own batches runs (the batch opens the event in
    # the events table); settings that name it, even the purge's own tenant's rows, get a sql.delete
    # event of their own. The owner bypasses row-level security, so its statements can mix tenants.
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", records=2, assets=3)
        b_flow = write_flow_tree(owner, tenant_b, status="paused", records=2, assets=3)
    a = app_conn(tenant_a)
    purge = a.execute("select pyflows._purge_begin(%s, 'by hand', false, 10)", (target.flow_id,)).fetchone()[0]
    a.commit()

    def delete_naming_the_purge(where: str, *params: Any) -> int:
        with owner.transaction():
            owner.execute("select set_config('pyflows.audit_event', %s, true), "
                          "set_config('pyflows.audit_open', %s, true), "
                          "set_config('pyflows.audit_statement', 'api', true)", (str(purge), f"{purge}:{purge}"))
            return owner.execute(f"delete from pyflows.raw_import_records where {where}", params).rowcount

    assert delete_naming_the_purge("row_number = 1") == 2  # one row of each tenant
    assert delete_naming_the_purge("client_id = %s", tenant_b.client_id) == 1  # another tenant's row
    assert delete_naming_the_purge("client_id = %s", tenant_a.client_id) == 1  # the purge's own tenant

    events = owner.execute("select id, action, client_id, deleted from pyflows_audit.events "
                           "where action in ('flow.purge', 'sql.delete') order by occurred_at, id").fetchall()
    assert events[0][:2] == (purge, "flow.purge") and events[0][3] == {}
    # One sql.delete event per client a statement deleted rows of: the first statement's two, then one each.
    got = [(action, client, deleted) for _, action, client, deleted in events[1:]]
    assert sorted(got[:2], key=str) == sorted([("sql.delete", tenant_a.client_id, {"raw_import_records": 1}),
                                               ("sql.delete", tenant_b.client_id, {"raw_import_records": 1})], key=str)
    assert got[2:] == [("sql.delete", tenant_b.client_id, {"raw_import_records": 1}),
                       ("sql.delete", tenant_a.client_id, {"raw_import_records": 1})]
    assert owner.execute("select count(*) from pyflows.raw_import_records where import_id = %s",
                         (b_flow.import_id,)).fetchone() == (0,)
