"""The bulk path: copy_records, copy_mappings, copy_assets and copy_dependencies (sync and async) as an
application login under row-level security, and the SQL patterns behind them (a staging table and
load_*, or JSON batches and add_*)."""

from __future__ import annotations

import ipaddress
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

import pyflows.api
from pyflows.errors import FlowBusy, FlowNotFound, InvalidRequest
from pyflows.testing import Tenant, bind

from .helpers import acting, fingerprint, mark_deleting, write_flow_tree
from .lifecycle_support import ApiFactory

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus


def test_a_flow_is_loaded_in_bulk_with_ids_for_its_edges(api: ApiFactory, tenant_a: Tenant,
                                                         owner: psycopg.Connection[Any]) -> None:
    flows = api(acting(tenant_a, "loader"))
    started = flows.start_import("cmdb.csv", "file:///uploads/cmdb.csv", 10)
    records = [{"Host": f"h{n}", "IP": f"10.0.0.{n}"} for n in range(1, 301)] + [None, [1, 2], "text"]
    first = flows.copy_records(started.import_id, iter(records))  # any iterable, streamed
    assert (first.loaded, first.record_count, first.flow_id) == (303, 303, started.flow_id)
    again = flows.copy_records(started.import_id, [{"Host": "late"}])
    assert (again.loaded, again.record_count) == (1, 304)
    stored = owner.execute("select row_number, data from pyflows.raw_import_records where import_id = %s "
                           "order by row_number", (started.import_id,)).fetchall()
    assert [r[0] for r in stored] == list(range(1, 305))
    assert [r[1] for r in stored] == [*records, {"Host": "late"}]  # JSON null stays JSON null
    assert owner.execute("select record_count from pyflows.data_imports where id = %s",
                         (started.import_id,)).fetchone() == (304,)

    mapped = flows.copy_mappings(started.import_id, [
        {"source_field": "Host", "target_attribute": "hostname", "confidence": 0.9},
        {"source_field": "IP", "target_attribute": "ip_address", "confidence": 1, "status": "approved"}])
    assert mapped.loaded == 2

    assets = [{"name": f"h{n}", "asset_type": "server", "ip_address": f"10.0.0.{n}",
               "attributes": {"rack": n}} for n in range(1, 201)]
    ids = flows.copy_assets(started.flow_id, assets)
    rows = dict(owner.execute("select id, name from pyflows.assets where flow_id = %s",
                              (started.flow_id,)).fetchall())
    assert len(ids) == 200 and [rows[i] for i in ids] == [a["name"] for a in assets]  # in the order given
    edges = flows.copy_dependencies(started.flow_id, [(ids[n], ids[n + 1], "network") for n in range(199)]
                                    + [{"source_asset_id": ids[0], "target_asset_id": ids[-1],
                                        "dependency_type": "database"}])
    assert edges.loaded == 200
    counts = flows.details(started.flow_id).counts
    assert counts == {"data_imports": 1, "raw_import_records": 304, "import_field_mappings": 2, "assets": 200,
                      "asset_dependencies": 200}


def test_a_bad_row_loads_nothing_and_says_why(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyflows.api, "BATCH_ROWS", 5)
    monkeypatch.setattr(pyflows.api, "COPY_ROWS", 5)
    flows = api(acting(tenant_a, "loader"))
    started = flows.start_import("cmdb.csv", "file:///uploads/cmdb.csv", 10)
    ids = flows.copy_assets(started.flow_id, [{"name": "a", "asset_type": "server"},
                                              {"name": "b", "asset_type": "server"}])
    before = fingerprint(owner)
    bad_loads = [
        lambda: flows.copy_assets(started.flow_id, [{"name": "ok", "asset_type": "server"},
                                                    {"name": " ", "asset_type": "server"}]),
        lambda: flows.copy_assets(started.flow_id, [{"name": "x", "asset_type": "server", "colour": "red"}]),
        lambda: flows.copy_mappings(started.import_id, [{"source_field": "Host"}, {"source_field": "Host"}]),
        lambda: flows.copy_mappings(started.import_id, [{"source_field": "Host", "confidence": 7}]),
        lambda: flows.copy_dependencies(started.flow_id, [(ids[0], 999_999_999, "network")]),
        lambda: flows.copy_dependencies(started.flow_id, [(ids[0], ids[1], "network"), (ids[0], ids[1], "network")]),
        # Edges go as arrays of ids: a float that would round to an asset's id, a bool, a type that is not
        # text, a key that names no column, a bad edge in the second batch.
        lambda: flows.copy_dependencies(started.flow_id, [(ids[0], ids[1] + 0.25, "network")]),
        lambda: flows.copy_dependencies(started.flow_id, [(ids[0], True, "network")]),
        lambda: flows.copy_dependencies(started.flow_id, [(ids[0], ids[1], 7)]),
        lambda: flows.copy_dependencies(started.flow_id, [{"source_asset_id": ids[0], "target_asset_id": ids[1],
                                                           "dependency_type": "network", "weight": 2}]),
        lambda: flows.copy_dependencies(started.flow_id, [(ids[0], ids[1], f"t{n}") for n in range(5)]
                                        + [(ids[0], ids[1], None)]),
        lambda: flows.copy_records(started.import_id, [{"ok": 1}, "a NUL \x00 has no place in jsonb"]),
        lambda: flows.copy_assets(started.flow_id, [{"name": "x", "asset_type": "server", "ip_address": "nope"}]),
        lambda: flows.copy_assets(started.flow_id, [("x", "server")]),  # not a mapping
        lambda: flows.copy_assets(started.flow_id, [{"asset_type": "server"}]),  # no name
        lambda: flows.copy_assets(started.flow_id, [{"name": "x", "asset_type": "server", "attributes": [1]}]),
        # A bad row in the second batch: the first batch, already COPYed, goes with it.
        lambda: flows.copy_assets(started.flow_id, [{"name": f"h{n}", "asset_type": "server"}
                                                    for n in range(5)] + [{"name": ""}]),
        lambda: flows.copy_records(started.import_id, [*range(5), {"x": object()}]),
    ]
    for load in bad_loads:
        with pytest.raises(InvalidRequest):
            load()
    assert fingerprint(owner) == before


def test_loads_refuse_finished_purged_foreign_and_locked_flows(api: ApiFactory, tenant_a: Tenant, tenant_b: Tenant,
                                                               owner: psycopg.Connection[Any],
                                                               pyflows_dsn: str) -> None:
    with owner.transaction():
        done = write_flow_tree(owner, tenant_a, status="completed")
        purged = write_flow_tree(owner, tenant_a, status="cancelled")
        mark_deleting(owner, tenant_a, purged.flow_id)
        theirs = write_flow_tree(owner, tenant_b, status="paused")
    flows = api(acting(tenant_a, "loader"))
    asset = [{"name": "n", "asset_type": "server"}]
    before = fingerprint(owner)
    with pytest.raises(InvalidRequest):
        flows.copy_assets(done.flow_id, asset)
    with pytest.raises(InvalidRequest):
        flows.copy_records(done.import_id, [{}])
    for flow_id, import_id in ((purged.flow_id, purged.import_id), (theirs.flow_id, theirs.import_id),
                               (uuid.uuid4(), uuid.uuid4())):
        with pytest.raises(FlowNotFound):
            flows.copy_assets(flow_id, asset)
        with pytest.raises(FlowNotFound):
            flows.copy_records(import_id, [{}])
        with pytest.raises(FlowNotFound):
            flows.copy_dependencies(flow_id, [])
    assert fingerprint(owner) == before
    with owner.transaction():
        open_flow = write_flow_tree(owner, tenant_a, status="paused")
    with psycopg.connect(pyflows_dsn) as worker:
        worker.execute("select 1 from pyflows.discovery_flows where client_id = %s and id = %s for update",
                       (tenant_a.client_id, open_flow.flow_id))
        with pytest.raises(FlowBusy):
            flows.copy_assets(open_flow.flow_id, asset)


def test_the_staging_pattern_from_sql(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                      pyflows_connect: Any) -> None:
    # What a backend in any language does: COPY into its own temporary table, then one call.
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=0)
    conn = pyflows_connect("app")
    bind(conn, acting(tenant_a, "loader"))
    conn.execute("create temp table stage_assets (ord bigint, name text, asset_type text, hostname text, "
                 "ip_address inet, operating_system text, attributes jsonb) on commit drop")
    with conn.cursor().copy("copy stage_assets (ord, name, asset_type) from stdin") as copy:
        for n in range(1, 51):
            copy.write_row((n, f"host-{n}", "server"))
    ids = conn.execute("select ord, asset_id from pyflows.load_assets(%s, 'pg_temp.stage_assets')",
                       (target.flow_id,)).fetchall()
    conn.commit()
    assert [o for o, _ in ids] == list(range(1, 51)) and len({i for _, i in ids}) == 50
    bind(conn, acting(tenant_a, "loader"))
    for stage in ("stage_nope", "pg_temp.stage_assets; drop table x", "pyflows.assets", None):
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select pyflows.load_assets(%s, %s)", (target.flow_id, stage))
        assert caught.value.sqlstate == "PF422", stage
        conn.rollback()
        bind(conn, acting(tenant_a, "loader"))


def test_a_load_of_many_batches_keeps_the_order_the_numbers_and_the_count(
        api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of 7 rows: 20 records are three COPY statements (three add_records calls on Citus), 16
    # assets three.
    monkeypatch.setattr(pyflows.api, "BATCH_ROWS", 7)
    monkeypatch.setattr(pyflows.api, "COPY_ROWS", 7)
    flows = api(acting(tenant_a, "loader"))
    started = flows.start_import("cmdb.csv", "file:///uploads/cmdb.csv", 10)
    first = flows.copy_records(started.import_id, ({"n": n} for n in range(1, 21)))
    assert (first.loaded, first.record_count) == (20, 20)
    exact = flows.copy_records(started.import_id, [{"n": n} for n in range(21, 28)])  # one full batch, then none
    assert (exact.loaded, exact.record_count) == (7, 27)
    stored = owner.execute("select row_number, data ->> 'n' from pyflows.raw_import_records where import_id = %s "
                           "order by row_number", (started.import_id,)).fetchall()
    assert stored == [(n, str(n)) for n in range(1, 28)]
    assets = [{"name": f"h{n}", "asset_type": "server"} for n in range(1, 17)]
    ids = flows.copy_assets(started.flow_id, assets)
    names = dict(owner.execute("select id, name from pyflows.assets where flow_id = %s", (started.flow_id,)).fetchall())
    assert [names[i] for i in ids] == [a["name"] for a in assets]
    assert flows.copy_dependencies(started.flow_id, [(ids[n], ids[n + 1], "network") for n in range(15)]).loaded == 15
    assert flows.copy_records(started.import_id, []).record_count == 27  # an empty load is one call
    assert flows.copy_assets(started.flow_id, []) == []
    # A batch that fails after others were sent leaves nothing of the load.
    before = fingerprint(owner)
    with pytest.raises(InvalidRequest):
        flows.copy_assets(started.flow_id, [*assets[:10], {"name": " ", "asset_type": "server"}])
    assert fingerprint(owner) == before


def test_values_json_has_no_type_for(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    flows = api(acting(tenant_a, "loader"))
    started = flows.start_import("cmdb.csv", "file:///uploads/cmdb.csv", 10)
    exact = [{"source_field": "Host", "confidence": Decimal("0.875")}]
    assert flows.copy_mappings(started.import_id, exact).loaded == 1
    flows.copy_assets(started.flow_id, [{"name": "a", "asset_type": "server",
                                         "ip_address": ipaddress.ip_address("2001:db8::1")}])
    assert owner.execute("select confidence from pyflows.import_field_mappings where import_id = %s",
                         (started.import_id,)).fetchone() == (Decimal("0.875"),)
    assert owner.execute("select host(ip_address) from pyflows.assets where flow_id = %s",
                         (started.flow_id,)).fetchone() == ("2001:db8::1",)
    before = fingerprint(owner)
    for load in (lambda: flows.copy_records(started.import_id, [{"at": object()}]),
                 lambda: flows.copy_dependencies(started.flow_id, [(1, 2)])):
        with pytest.raises(InvalidRequest):
            load()
    assert fingerprint(owner) == before


def test_the_batch_pattern_from_sql(owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Any) -> None:
    # What a backend in any language does without a staging table: one JSON array a call (for edges, or
    # three arrays).
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=0)
    conn = pyflows_connect("app")
    bind(conn, acting(tenant_a, "loader"))
    ids = conn.execute("select ord, asset_id from pyflows.add_assets(%s, %s)", (target.flow_id, Jsonb(
        [{"name": f"host-{n}", "asset_type": "server"} for n in range(1, 4)]))).fetchall()
    assert [o for o, _ in ids] == [1, 2, 3]
    loaded = conn.execute("select pyflows.add_records(%s, '[1, \"two\", {\"three\": 3}]')",
                          (target.import_id,)).fetchone()[0]
    assert (loaded["loaded"], loaded["record_count"]) == (3, 3)
    edges = conn.execute("select pyflows.add_dependencies(%s, %s)", (target.flow_id, Jsonb(
        [{"source_asset_id": ids[0][1], "target_asset_id": ids[1][1], "dependency_type": "network"}]))).fetchone()[0]
    assert edges["loaded"] == 1
    # Or the edges as three arrays, edge n at position n of each.
    edges = conn.execute("select pyflows.add_dependencies(%s, %s, %s, %s)", (
        target.flow_id, [ids[1][1], ids[2][1]], [ids[2][1], ids[0][1]], ["network", "database"])).fetchone()[0]
    assert edges["loaded"] == 2
    assert conn.execute("select array_agg(array[source_asset_id, target_asset_id] order by id) "
                        "from pyflows.asset_dependencies where flow_id = %s", (target.flow_id,)).fetchone()[0] == [
        [ids[0][1], ids[1][1]], [ids[1][1], ids[2][1]], [ids[2][1], ids[0][1]]]
    conn.commit()
    before = fingerprint(owner)
    bind(conn, acting(tenant_a, "loader"))
    for call, batch in (("add_assets", '{"name": "x"}'), ("add_assets", "[1]"), ("add_records", '"one"'),
                        ("add_assets", '[{"name": "x", "asset_type": "server", "colour": "red"}]'),
                        ("add_mappings", '[{"source_field": "Host", "confidence": "high"}]'),
                        ("add_dependencies", None)):
        target_id = target.import_id if call in ("add_records", "add_mappings") else target.flow_id
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql.SQL("select * from pyflows.{}(%s, %s::jsonb)").format(sql.Identifier(call)),
                         (target_id, batch))
        assert caught.value.sqlstate == "PF422", (call, batch)
        conn.rollback()
        bind(conn, acting(tenant_a, "loader"))
    a, b = ids[0][1], ids[1][1]
    for sources, targets, types, says in (
            (None, [b], ["network"], "need all three"),
            ([a], [b], None, "need all three"),
            ([a, a], [b], ["network", "x"], "of one length (got 2, 1, 2)"),
            ([[a]], [[b]], [["network"]], "one dimension"),
            ([a], [a], ["network"], "asset_dependencies_not_self"),
            ([a], [b], [None], "not-null")):
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select pyflows.add_dependencies(%s, %s::bigint[], %s::bigint[], %s::text[])",
                         (target.flow_id, sources, targets, types))
        assert (caught.value.sqlstate, says in str(caught.value)) == ("PF422", True), (sources, targets, types)
        conn.rollback()
        bind(conn, acting(tenant_a, "loader"))
    assert fingerprint(owner) == before


def test_the_copy_pattern_from_sql(owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Any,
                                   pyflows_citus: Any) -> None:
    """What a backend in any language does to COPY raw records (sql/080_bulk.sql): begin_copy_records, then
    COPY into the table it names, numbered from next_row_number, in the same transaction. The partition's
    triggers keep record_count and refuse rows of a flow being deleted; on Citus it names no table."""
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=2)
        purged = write_flow_tree(owner, tenant_a, status="cancelled", name="purged", assets=0, records=0)
        mark_deleting(owner, tenant_a, purged.flow_id)
    conn = pyflows_connect("app")
    bind(conn, acting(tenant_a, "loader"))
    opened = conn.execute("select pyflows.begin_copy_records(%s)", (target.import_id,)).fetchone()[0]
    if pyflows_citus is not None:
        assert opened["copy_table"] is None  # add_records instead (docs/scale-out.md)
        return
    assert opened["copy_table"] == "pyflows.raw_import_records_default"
    assert (opened["next_row_number"], opened["flow_id"]) == (3, str(target.flow_id))
    start = opened["record_count"]
    with conn.cursor().copy("copy pyflows.raw_import_records_default "
                            "(client_id, engagement_id, import_id, row_number, data) from stdin") as copy:
        for n in range(5):
            copy.write_row((tenant_a.client_id, tenant_a.engagement_id, target.import_id, 3 + n, Jsonb({"n": n})))
    conn.commit()
    assert owner.execute("select record_count from pyflows.data_imports where id = %s",
                         (target.import_id,)).fetchone() == (start + 5,)
    assert owner.execute("select array_agg(row_number order by row_number) from pyflows.raw_import_records "
                         "where import_id = %s", (target.import_id,)).fetchone() == ([1, 2, 3, 4, 5, 6, 7],)
    # The partition takes rows only: reading, changing and deleting go through the parent's policies.
    before = fingerprint(owner)
    for statement in ("select count(*) from pyflows.raw_import_records_default",
                      "update pyflows.raw_import_records_default set data = '{}'",
                      "delete from pyflows.raw_import_records_default",
                      "truncate pyflows.raw_import_records_default"):
        bind(conn, acting(tenant_a, "loader"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        conn.rollback()
    # Refused, nothing written: a COPY no begin_copy_records opened, or without a context (PF422, PF401); a row
    # of another import than the one opened (PF422); a row of an import whose flow is being deleted, with the
    # setting begin_copy_records writes set by hand (which begin_copy_records refuses: PF404, as through the
    # parent).
    columns = ("copy pyflows.raw_import_records_default (client_id, engagement_id, import_id, row_number, data) "
               "from stdin")
    other = write_flow_tree(owner, tenant_a, status="cancelled", name="other", assets=0, records=0)
    owner.commit()
    before = fingerprint(owner)
    cases: list[tuple[str, Any, uuid.UUID, str]] = [
        ("select 1", (), target.import_id, "PF422"),
        ("select pyflows.clear_context()", (), target.import_id, "PF401"),
        ("select pyflows.begin_copy_records(%s)", (target.import_id,), other.import_id, "PF422"),
        ("select set_config('pyflows.copy_import', %s, true)", (str(purged.import_id),), purged.import_id, "PF404"),
        ("select set_config('pyflows.copy_import', 'not a uuid', true)", (), target.import_id, "PF422"),
    ]
    for opening, params, import_id, code in cases:
        bind(conn, acting(tenant_a, "loader"))
        conn.execute(opening, params)
        with pytest.raises(psycopg.Error) as caught, conn.cursor().copy(columns) as copy:
            copy.write_row((tenant_a.client_id, tenant_a.engagement_id, import_id, 100, Jsonb({})))
        assert caught.value.sqlstate == code, (opening, caught.value)
        conn.rollback()
    assert fingerprint(owner) == before
    # A second COPY of the same transaction is counted by itself, and an INSERT through the parent after them
    # takes a row of another import of the context.
    bind(conn, acting(tenant_a, "loader"))
    conn.execute("select pyflows.begin_copy_records(%s)", (target.import_id,))
    for first in (100, 200):
        with conn.cursor().copy(columns) as copy:
            for n in range(3):
                copy.write_row((tenant_a.client_id, tenant_a.engagement_id, target.import_id, first + n, Jsonb({})))
    conn.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
                 "values (%s, %s, %s, 1, '{}')", (tenant_a.client_id, tenant_a.engagement_id, other.import_id))
    conn.commit()
    assert owner.execute("select record_count, (select count(*) from pyflows.raw_import_records where import_id = "
                         "i.id) from pyflows.data_imports i where id = %s", (target.import_id,)).fetchone() == (
        start + 5 + 6, 2 + 5 + 6)
    assert owner.execute("select count(*) from pyflows.raw_import_records where import_id = %s",
                         (other.import_id,)).fetchone() == (1,)


_COPY_RECORDS = ("copy pyflows.raw_import_records_default (client_id, engagement_id, import_id, row_number, data) "
                 "from stdin")


def test_a_copy_opened_by_hand_waits_for_locks_only_as_long_as_the_bound(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Any, pyflows_dsn: str,
        pyflows_citus: Any) -> None:
    """A client that sets pyflows.copy_import itself and COPYs without begin_copy_records, its session's
    lock_timeout 0 (wait forever): the partition's statement trigger bounds the COPY's lock waits to
    pyflows.lock_timeout (55P03 with nothing written when the import's row is held FOR UPDATE), and
    puts the session's lock_timeout back after a COPY that succeeds."""
    if pyflows_citus is not None:
        pytest.skip("no COPY into the partitions on Citus (docs/scale-out.md)")
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=0)
    conn = pyflows_connect("app")
    # A failure to bound the wait fails the test here, after 20 s, instead of hanging it.
    conn.execute("set statement_timeout = '20s'")
    conn.commit()
    row = (tenant_a.client_id, tenant_a.engagement_id, target.import_id, 1, Jsonb({}))
    before = fingerprint(owner)
    with psycopg.connect(pyflows_dsn) as holder:
        holder.execute("select 1 from pyflows.data_imports where id = %s for update", (target.import_id,))
        bind(conn, acting(tenant_a, "loader"))
        conn.execute("select set_config('pyflows.copy_import', %s, true), set_config('pyflows.lock_timeout', "
                     "'300ms', true)", (str(target.import_id),))
        with pytest.raises(psycopg.errors.LockNotAvailable), conn.cursor().copy(_COPY_RECORDS) as copy:
            copy.write_row(row)
        conn.rollback()
        holder.rollback()
    assert fingerprint(owner) == before
    bind(conn, acting(tenant_a, "loader"))
    conn.execute("select set_config('pyflows.copy_import', %s, true)", (str(target.import_id),))
    with conn.cursor().copy(_COPY_RECORDS) as copy:
        copy.write_row(row)
    assert conn.execute("show lock_timeout").fetchone() == ("0",)
    conn.commit()
    assert owner.execute("select record_count from pyflows.data_imports where id = %s",
                         (target.import_id,)).fetchone() == (1,)


def test_a_copy_with_the_statistics_off_counts_the_imports_rows(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_connect: Any, pyflows_citus: Any) -> None:
    """With track_counts off (a superuser's setting) the server counts no rows a statement inserts: the
    partition's AFTER STATEMENT trigger counts the import's rows instead, and record_count stays true."""
    if pyflows_citus is not None:
        pytest.skip("no COPY into the partitions on Citus (docs/scale-out.md)")
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=2)
    conn = pyflows_connect("owner")
    bind(conn, acting(tenant_a, "loader"))
    conn.execute("select pyflows.begin_copy_records(%s)", (target.import_id,))
    conn.execute("set local track_counts = off")
    for first in (10, 20):
        with conn.cursor().copy(_COPY_RECORDS) as copy:
            for n in range(4):
                copy.write_row((tenant_a.client_id, tenant_a.engagement_id, target.import_id, first + n, Jsonb({})))
    # Nothing counted by the server: the statement's own count would have added nothing.
    assert conn.execute("select pg_stat_get_xact_tuples_inserted('pyflows.raw_import_records_default'::regclass)"
                        ).fetchone() == (0,)
    conn.commit()
    assert owner.execute("select record_count, (select count(*) from pyflows.raw_import_records where import_id = "
                         "i.id) from pyflows.data_imports i where id = %s", (target.import_id,)).fetchone() == (10, 10)


def test_the_copy_pattern_for_assets_from_sql(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                              pyflows_connect: Any, pyflows_citus: Any) -> None:
    """begin_copy_assets draws the ids first, in order, then the caller COPYs each asset with its id into
    the table it names; a count outside 0..1,000,000 is PF422 with nothing drawn or written."""
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=0)
    conn = pyflows_connect("app")
    before = fingerprint(owner)
    for count in (-1, 1_000_001, None):
        bind(conn, acting(tenant_a, "loader"))
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("select pyflows.begin_copy_assets(%s, %s)", (target.flow_id, count))
        assert caught.value.sqlstate == "PF422", count
        conn.rollback()
    assert fingerprint(owner) == before
    bind(conn, acting(tenant_a, "loader"))
    opened = conn.execute("select pyflows.begin_copy_assets(%s, 3)", (target.flow_id,)).fetchone()[0]
    if pyflows_citus is not None:
        assert (opened["copy_table"], opened["id_ranges"]) == (None, None)  # add_assets instead
        return
    assert opened["copy_table"] == "pyflows.assets_default"
    [(first, last)] = opened["id_ranges"]  # one run: no other session drew ids meanwhile
    ids = list(range(first, last + 1))
    assert len(ids) == 3
    with conn.cursor().copy("copy pyflows.assets_default (client_id, engagement_id, id, flow_id, name, asset_type) "
                            "from stdin") as copy:
        for n, asset_id in enumerate(ids):
            copy.write_row((tenant_a.client_id, tenant_a.engagement_id, asset_id, target.flow_id, f"h{n}", "server"))
    conn.commit()
    assert owner.execute("select array_agg(name order by id) from pyflows.assets where flow_id = %s and id = any(%s)",
                         (target.flow_id, ids)).fetchone() == (["h0", "h1", "h2"],)
    # The identity goes on after the ids drawn: an asset added through the parent gets a new one.
    bind(conn, acting(tenant_a, "loader"))
    later = conn.execute("select asset_id from pyflows.add_assets(%s, '[{\"name\": \"h3\", \"asset_type\": \"vm\"}]')",
                         (target.flow_id,)).fetchone()[0]
    conn.commit()
    assert later > ids[-1]


def test_begin_copy_assets_answers_the_ids_it_drew_as_their_runs(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                                  pyflows_connect: Any, pyflows_citus: Any) -> None:
    """No ids for a count of 0; ids that are not one run (here the sequence steps by 2, as when another session
    draws between two of them) come back as runs of their own, in the order drawn."""
    if pyflows_citus is not None:
        pytest.skip("no COPY into the partition on Citus: begin_copy_assets draws no ids there")
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=0)
    conn = pyflows_connect("app")
    bind(conn, acting(tenant_a, "loader"))
    assert conn.execute("select pyflows.begin_copy_assets(%s, 0) -> 'id_ranges'", (target.flow_id,)).fetchone() \
        == ([],)
    conn.rollback()
    owner.execute("alter sequence pyflows.assets_id_seq increment by 2")
    try:
        bind(conn, acting(tenant_a, "loader"))
        ranges = conn.execute("select pyflows.begin_copy_assets(%s, 3) -> 'id_ranges'",
                              (target.flow_id,)).fetchone()[0]
        conn.rollback()
    finally:
        owner.execute("alter sequence pyflows.assets_id_seq increment by 1")
    first = ranges[0][0]
    assert ranges == [[first, first], [first + 2, first + 2], [first + 4, first + 4]]


@pytest.mark.parametrize(("ids", "ranges"), [
    ([], []), ([7], [[7, 7]]), ([5, 6, 7], [[5, 7]]), ([5, 6, 7, 10, 12, 13], [[5, 7], [10, 10], [12, 13]]),
    ([13, 5, 12, 6], [[5, 6], [12, 13]]), ([None, 3, 3, 4], [[3, 4]]), (None, []),
    ([-2**63, 2**63 - 1], [[-2**63, -2**63], [2**63 - 1, 2**63 - 1]])])
def test_ids_drawn_while_another_session_draws_come_back_as_their_runs(
        owner: psycopg.Connection[Any], ids: list[int], ranges: list[list[int]]) -> None:
    # begin_copy_assets answers one [first, last] pair for ids that are one run, and these otherwise.
    assert owner.execute("select pyflows._id_ranges(%s::bigint[])", (ids,)).fetchone() == (ranges,)


def test_a_copy_waits_for_rows_another_transaction_holds_only_as_long_as_the_bound(
        api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any], pyflows_dsn: str) -> None:
    """The rows a COPY's keys lock (its import, KEY SHARE) held FOR UPDATE by another transaction: the
    COPY waits pyflows.lock_timeout (200 ms by default), then FlowBusy (PF423), nothing written."""
    flows = api(acting(tenant_a, "loader"))
    started = flows.start_import("cmdb.csv", "file:///uploads/cmdb.csv", 10)
    before = fingerprint(owner)
    with psycopg.connect(pyflows_dsn) as holder:
        holder.execute("set statement_timeout = '30s'")
        holder.execute("select 1 from pyflows.data_imports where client_id = %s and id = %s for update",
                       (tenant_a.client_id, started.import_id))
        with pytest.raises(FlowBusy):
            flows.copy_records(started.import_id, [{"n": 1}])
        holder.rollback()
    assert fingerprint(owner) == before


def test_the_tenant_check_reads_each_statements_context(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                         tenant_b: Tenant, pyflows_connect: Any,
                                                         pyflows_citus: Any) -> None:
    """The partitions' tenant CHECK reads the context once a statement (migration 0023), never once for a
    plan or a session: one transaction that changes its context between statements writes each tenant's
    rows through add_records (a function whose plans are cached) and a prepared INSERT, and a row of the
    earlier tenant, COPYed after the change, is PF403."""
    with owner.transaction():
        a = write_flow_tree(owner, tenant_a, status="paused", assets=0, records=0)
        b = write_flow_tree(owner, tenant_b, status="paused", assets=0, records=0)
    conn = pyflows_connect("app")
    insert = ("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
              "values (%s, %s, %s, %s, '{}')")
    for n, (tenant, target) in enumerate(((tenant_a, a), (tenant_b, b), (tenant_a, a))):
        bind(conn, acting(tenant, "loader"))
        conn.execute("select pyflows.add_records(%s, '[1]')", (target.import_id,))
        conn.execute(insert, (tenant.client_id, tenant.engagement_id, target.import_id, 100 + n), prepare=True)
    conn.commit()
    counts = dict(owner.execute("select import_id, count(*) from pyflows.raw_import_records where import_id in "
                                "(%s, %s) group by 1", (a.import_id, b.import_id)).fetchall())
    assert counts == {a.import_id: 4, b.import_id: 2}
    if pyflows_citus is not None:
        return  # no COPY into the partitions on Citus (docs/scale-out.md)
    before = fingerprint(owner)
    bind(conn, acting(tenant_a, "loader"))
    conn.execute("select pyflows.begin_copy_records(%s)", (a.import_id,))
    row = (tenant_a.client_id, tenant_a.engagement_id, a.import_id, 1000, Jsonb({}))
    columns = ("copy pyflows.raw_import_records_default (client_id, engagement_id, import_id, row_number, data) "
               "from stdin")
    with conn.cursor().copy(columns) as copy:
        copy.write_row(row)
    bind(conn, acting(tenant_b, "loader"))
    with pytest.raises(psycopg.Error) as caught, conn.cursor().copy(columns) as copy:
        copy.write_row(row)
    assert caught.value.sqlstate == "PF403", caught.value
    conn.rollback()
    assert fingerprint(owner) == before
