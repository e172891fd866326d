"""delete_flows' atomic batch, set-based: each flow's event records exactly what deleting the flows one
after the other records (the per-flow mode is the oracle), and the batch restores row for row."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from pyflows.models import Tenant

from .helpers import fingerprint, set_raw_context

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

Connect = Callable[..., psycopg.Connection[Any]]
ARCHIVE = ("discovery_flows", "data_imports", "raw_import_records", "import_field_mappings", "assets",
           "asset_dependencies")

# Flows 0..n-1 (the batch is the first `batch` of them, in a drawn order), each with assets; edges
# between any two assets of any flows, owned by any flow.
shapes = st.integers(2, 4).flatmap(lambda n: st.fixed_dictionaries({
    "flows": st.just(n),
    "batch": st.permutations(range(n)).flatmap(lambda order: st.integers(1, n).map(lambda k: list(order[:k]))),
    "imports": st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=n, max_size=n),
    "assets": st.lists(st.integers(0, 3), min_size=n, max_size=n),
    "edges": st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 11), st.integers(0, 11)), max_size=10),
}))


def build(conn: psycopg.Connection[Any], tenant: Tenant, shape: dict[str, Any]) -> list[uuid.UUID]:
    set_raw_context(conn, tenant)
    ids = (tenant.client_id, tenant.engagement_id)
    flows: list[uuid.UUID] = []
    assets: list[int] = []
    for n in range(shape["flows"]):
        flow = conn.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                            "values (%s, %s, %s, 'cancelled') returning id", (*ids, f"flow {n}")).fetchone()[0]
        flows.append(flow)
        for i in range(shape["imports"][n][0] and 1):
            imp = conn.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, "
                               "storage_uri, byte_size) values (%s, %s, %s, 'f', %s, 1) returning id",
                               (*ids, flow, f"file:///tmp/pyflows-test/{flow}/{i}")).fetchone()[0]
            for r in range(shape["imports"][n][0]):
                conn.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, "
                             "row_number, data) values (%s, %s, %s, %s, '{}')", (*ids, imp, r + 1))
            for m in range(shape["imports"][n][1]):
                conn.execute("insert into pyflows.import_field_mappings (client_id, engagement_id, import_id, "
                             "source_field) values (%s, %s, %s, %s)", (*ids, imp, f"field{m}"))
        for a in range(shape["assets"][n]):
            assets.append(conn.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, "
                                       "asset_type) values (%s, %s, %s, %s, 'server') returning id",
                                       (*ids, flow, f"a{a}")).fetchone()[0])
    for owner_flow, s, t in shape["edges"]:
        if len(assets) > 1 and assets[s % len(assets)] != assets[t % len(assets)]:
            conn.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                         "target_asset_id, dependency_type) values (%s, %s, %s, %s, %s, 'x') on conflict do nothing",
                         (*ids, flows[owner_flow], assets[s % len(assets)], assets[t % len(assets)]))
    return [flows[i] for i in shape["batch"]]


def recorded(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> dict[uuid.UUID, dict[str, Any]]:
    """For each (flow, ok, event) result row: the event's impact, counts, archived rows and queued files."""
    out = {}
    for flow, ok, event, code, message in rows:
        assert ok, (code, message)
        e = conn.execute("select impact, deleted from pyflows_audit.events where id = %s", (event,)).fetchone()
        archived = {t: sorted(r[0] for r in conn.execute(sql.SQL(
            "select (a.*)::text from {} as a where a.event_id = %s").format(sql.Identifier("pyflows_audit", t)),
            (event,)).fetchall()) for t in ARCHIVE}
        # The archived rows without the event id (the first column), which differs between the two runs.
        archived = {t: sorted(r.split(",", 1)[1] for r in rows_) for t, rows_ in archived.items()}
        files = sorted(r[0] for r in conn.execute(
            "select storage_uri from pyflows.file_cleanup_queue where event_id = %s", (event,)).fetchall())
        out[flow] = {"impact": e[0], "deleted": e[1], "archived": archived, "files": files}
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes)
def test_an_atomic_batch_records_what_deleting_one_by_one_records(pyflows_connect: Connect, tenant_a: Tenant,
                                                                  shape: dict[str, Any]) -> None:
    conn = pyflows_connect("owner")
    try:
        batch = build(conn, tenant_a, shape)
        conn.execute("select pyflows.set_context(%s, %s, 'test')", (tenant_a.client_id, tenant_a.engagement_id))
        before = fingerprint(conn)
        conn.execute("savepoint one_by_one")
        oracle = recorded(conn, conn.execute("select * from pyflows.delete_flows(%s, 'oracle', true, false)",
                                             (batch,)).fetchall())
        conn.execute("rollback to savepoint one_by_one")
        assert fingerprint(conn) == before
        rows = conn.execute("select * from pyflows.delete_flows(%s, 'batch', true, true)", (batch,)).fetchall()
        assert [r[0] for r in rows] == batch
        assert recorded(conn, rows) == oracle
        for flow in batch:  # what the batch counted beforehand is what it deleted
            impact, deleted = oracle[flow]["impact"], oracle[flow]["deleted"]
            assert {k: v for k, v in impact["counts"].items() if v} == deleted
        # Restored last flow first, every row is back as it was.
        for _, _, event, _, _ in reversed(rows):
            conn.execute("select pyflows.restore_flow(%s)", (event,))
        after, flow_tables = fingerprint(conn), [f"pyflows.{t}" for t in ARCHIVE]
        assert {t: after[t] for t in flow_tables} == {t: before[t] for t in flow_tables}
    finally:
        conn.rollback()
        conn.close()


def test_a_row_of_no_flow_of_the_batch_is_refused(pyflows_connect: Connect, tenant_a: Tenant) -> None:
    """With a batch's events open, a deleted row that belongs to none of its flows (another transaction
    wrote it while the batch ran) fails the statement with PF423: it is never archived under a guess."""
    conn = pyflows_connect("owner")
    try:
        first, second, third = build(conn, tenant_a, {"flows": 3, "batch": [0, 1, 2], "imports": [(0, 0)] * 3,
                                                      "assets": [1, 1, 2], "edges": [(2, 2, 3)]})
        before = fingerprint(conn)
        conn.execute("select pyflows.set_context(%s, %s, 'test')", (tenant_a.client_id, tenant_a.engagement_id))
        conn.execute("savepoint s")
        conn.execute("select pyflows_audit._begin_events('flow.delete', %s, 'test', %s::jsonb[], %s::jsonb[])",
                     ([first, second], ["{}", "{}"], ["{}", "{}"]))
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("delete from pyflows.asset_dependencies where flow_id = %s", (third,))
        assert caught.value.sqlstate == "PF423", caught.value
        conn.execute("rollback to savepoint s")
        assert fingerprint(conn) == before
    finally:
        conn.rollback()
        conn.close()
