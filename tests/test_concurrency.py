"""Races, run for real on several connections at once, as pyflows_test_app.

After each: at most one incomplete flow per context, no orphan rows, exactly one audit event per
completed deletion (its archive holding what it counted), and no deadlock error reaching a caller.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyflows.api import Flows, TenantFlows
from pyflows.errors import FlowBusy, FlowNotFound, IncompleteFlowExists, InvalidRequest, PyflowsError
from pyflows.testing import Tenant

from .helpers import FLOW_TREE_TABLES, set_raw_context, write_flow_tree

ALLOWED = (FlowBusy, FlowNotFound, IncompleteFlowExists, InvalidRequest)


@pytest.fixture
def clients(pyflows_role_dsn: Callable[[str], str]) -> Iterator[Callable[[Tenant], TenantFlows]]:
    """Each call: the API on a new autocommit connection of pyflows_test_app (one per thread)."""
    opened: list[psycopg.Connection[Any]] = []

    def open_api(tenant: Tenant) -> TenantFlows:
        conn = psycopg.connect(pyflows_role_dsn("app"), autocommit=True)
        opened.append(conn)
        return Flows(conn).tenant(tenant.client_id, tenant.engagement_id, f"worker-{len(opened)}")

    yield open_api
    for conn in opened:
        conn.close()


def race(*actions: Callable[[], Any]) -> list[Any]:
    """Run the actions at once (released together); each one's result or the exception it raised."""
    barrier = threading.Barrier(len(actions))
    results: list[Any] = [None] * len(actions)

    def run(i: int, action: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = action()
        except BaseException as exc:  # returned to the test, which asserts on every one
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a racer hung"
    return results


def unexpected(results: list[Any]) -> list[BaseException]:
    """Exceptions other than the refusals a race may legitimately produce (a deadlock is not one)."""
    return [r for r in results if isinstance(r, BaseException) and not isinstance(r, ALLOWED)]


def check_invariants(owner: psycopg.Connection[Any]) -> None:
    crowded = owner.execute("select client_id, engagement_id from pyflows.discovery_flows "
                            "where status not in ('completed', 'cancelled') "
                            "group by 1, 2 having count(*) > 1").fetchall()
    assert crowded == []
    orphans = owner.execute("""
        select (select count(*) from pyflows.data_imports i where not exists (
                    select from pyflows.discovery_flows f
                     where f.client_id = i.client_id and f.engagement_id = i.engagement_id and f.id = i.flow_id))
             + (select count(*) from pyflows.assets a where not exists (
                    select from pyflows.discovery_flows f
                     where f.client_id = a.client_id and f.engagement_id = a.engagement_id and f.id = a.flow_id))
             + (select count(*) from pyflows.raw_import_records r where not exists (
                    select from pyflows.data_imports i
                     where i.client_id = r.client_id and i.engagement_id = r.engagement_id and i.id = r.import_id))
             + (select count(*) from pyflows.asset_dependencies d where not exists (
                    select from pyflows.assets a
                     where a.client_id = d.client_id and a.engagement_id = d.engagement_id
                       and a.id = d.source_asset_id))""").fetchone()
    assert orphans == (0,)
    # Every deletion event counted exactly what its archive holds, and named a flow that is gone.
    for event_id, flow_id, deleted in owner.execute(
            "select id, flow_id, deleted from pyflows_audit.events where action = 'flow.delete'").fetchall():
        for table in FLOW_TREE_TABLES:
            archived = owner.execute(sql.SQL("select count(*) from {} where event_id = %s").format(
                sql.Identifier("pyflows_audit", table)), (event_id,)).fetchone()[0]
            assert archived == deleted.get(table, 0), (event_id, table)
        assert owner.execute("select count(*) from pyflows.discovery_flows where id = %s",
                             (flow_id,)).fetchone() == (0,)
    duplicates = owner.execute("select flow_id from pyflows_audit.events where action = 'flow.delete' "
                               "group by 1 having count(*) > 1").fetchall()
    assert duplicates == []


@pytest.mark.citus  # holds on Citus too (docs/scale-out.md)
def test_a_start_storm_on_a_few_contexts(clients: Callable[[Tenant], TenantFlows],
                                         make_tenant: Callable[..., Tenant], owner: psycopg.Connection[Any]) -> None:
    contexts = [make_tenant(f"client {i}", f"engagement {i}") for i in range(3)]

    def worker(seed: int) -> tuple[int, int]:
        rng = random.Random(seed)
        apis = {c: clients(c) for c in contexts}
        started = refused = 0
        for _ in range(25):
            api = apis[rng.choice(contexts)]
            try:
                flow = api.start("storm")
            except IncompleteFlowExists:
                refused += 1
                continue
            started += 1
            api.set_status(flow.flow_id, "cancelled")
        return started, refused

    results = race(*(lambda s=s: worker(s) for s in range(8)))
    assert unexpected(results) == []
    assert sum(s for s, _ in results) > 0
    check_invariants(owner)
    assert owner.execute("select count(*) from pyflows_audit.events where action = 'flow.start'").fetchone()[0] == \
        sum(s for s, _ in results)


@pytest.mark.parametrize("round_", range(6))
def test_delete_against_resume_progress_and_heartbeat_on_one_flow(
        clients: Callable[[Tenant], TenantFlows], tenant_a: Tenant, owner: psycopg.Connection[Any],
        round_: int) -> None:
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", records=20, assets=10)
    apis = [clients(tenant_a) for _ in range(4)]
    actions: list[Callable[[], Any]] = [
        lambda: apis[0].delete(target.flow_id, "race", force=True),
        lambda: apis[1].resume(target.flow_id),
        lambda: apis[2].record_progress(target.flow_id, "data_import"),
        lambda: apis[3].heartbeat(target.flow_id),
    ]
    random.Random(round_).shuffle(actions)
    results = race(*actions)
    assert unexpected(results) == []
    check_invariants(owner)
    deleted = owner.execute("select count(*) from pyflows_audit.events where action = 'flow.delete'").fetchone()[0]
    exists = owner.execute("select count(*) from pyflows.discovery_flows where id = %s",
                           (target.flow_id,)).fetchone()[0]
    assert (deleted, exists) in ((1, 0), (0, 1))  # deleted once and gone, or refused (busy) and whole
    if exists:
        assert owner.execute("select count(*) from pyflows.assets where flow_id = %s",
                             (target.flow_id,)).fetchone() == (10,)


def test_delete_while_a_worker_inserts_assets(clients: Callable[[Tenant], TenantFlows], tenant_a: Tenant,
                                              pyflows_connect: Callable[..., psycopg.Connection[Any]],
                                              owner: psycopg.Connection[Any]) -> None:
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="running", records=5, assets=5)
    api = clients(tenant_a)
    worker_conn = pyflows_connect("app")
    stop = threading.Event()
    inserted: list[int] = []
    worker_errors: list[str] = []

    def insert_assets() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                with worker_conn.transaction():
                    set_raw_context(worker_conn, tenant_a)
                    worker_conn.execute(
                        "insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                        "values (%s, %s, %s, %s, 'server')",
                        (tenant_a.client_id, tenant_a.engagement_id, target.flow_id, f"late-{n}"))
                inserted.append(n)
            except psycopg.Error as exc:  # after the delete: the flow is gone (foreign key, 23503)
                worker_errors.append(exc.sqlstate or "?")
                if exc.sqlstate == "23503":
                    return

    worker = threading.Thread(target=insert_assets)
    worker.start()
    result = None
    try:
        for _ in range(200):  # the worker's open transaction holds the flow row: NOWAIT refuses, retry
            try:
                result = api.delete(target.flow_id, "while a worker writes", force=True)
                break
            except FlowBusy:
                continue
    finally:
        stop.set()
        worker.join(timeout=60)
    assert result is not None, "the delete never got the flow"
    assert set(worker_errors) <= {"23503"}
    assert owner.execute("select count(*) from pyflows.assets where flow_id = %s",
                         (target.flow_id,)).fetchone() == (0,)
    assert result.deleted["assets"] == 5 + len([n for n in inserted])
    check_invariants(owner)


@pytest.mark.parametrize("round_", range(4))
def test_two_overlapping_batch_deletes(clients: Callable[[Tenant], TenantFlows], tenant_a: Tenant,
                                       owner: psycopg.Connection[Any], round_: int) -> None:
    with owner.transaction():
        flows = [write_flow_tree(owner, tenant_a, status="completed", name=f"f{i}").flow_id for i in range(5)]
    one, two = clients(tenant_a), clients(tenant_a)
    batches = (flows[:3], flows[2:])  # flows[2] is in both
    results = race(*(lambda api=api, batch=batch: api.delete_many(batch, f"round {round_}", force=True)
                     for api, batch in zip((one, two), batches, strict=True)))
    assert unexpected(results) == []
    # The shared flow can be deleted once: one batch wins, the other is refused (busy, or not found
    # once the winner committed) and, being atomic, deletes nothing at all.
    winners = [batch for batch, r in zip(batches, results, strict=True) if isinstance(r, list)]
    assert len(winners) == 1
    gone = {r[0] for r in owner.execute("select flow_id from pyflows_audit.events where action = 'flow.delete'")}
    assert gone == set(winners[0])
    check_invariants(owner)


def test_restore_is_refused_while_a_purge_runs_and_works_after(
        pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    with owner.transaction():
        target = write_flow_tree(owner, tenant_a, status="paused", records=1, assets=5)
        set_raw_context(owner, tenant_a)
        owner.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
                      "select %s, %s, %s, g, '{}' from generate_series(2, 30000) g",
                      (tenant_a.client_id, tenant_a.engagement_id, target.import_id))
    original = {t: owner.execute(sql.SQL("select * from {} where client_id = %s order by id").format(
        sql.Identifier("pyflows", t)), (tenant_a.client_id,)).fetchall() for t in FLOW_TREE_TABLES}
    purger = Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "purger")
    restorer = Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "restorer")
    refusals: list[BaseException] = []
    early: list[Any] = []

    def try_restore(notice: str) -> None:  # called on each batch's notice, while the purge runs
        if "removed" not in notice or early:
            return  # the last notice: the purge may have committed by the time this runs
        event = owner.execute("select id from pyflows_audit.events where action = 'flow.purge'").fetchone()[0]
        try:
            # Notices arrive while the server goes on: after the last batch's, the purge may have finished.
            early.append(restorer.restore(event))
        except PyflowsError as exc:
            refusals.append(exc)

    event = purger.purge(target.flow_id, "purge, then restore", batch_rows=2000, on_progress=try_restore)
    assert refusals and all(isinstance(r, (InvalidRequest, FlowBusy)) for r in refusals)
    restored = early[0] if early else restorer.restore(event.event_id)
    assert restored.flow_id == target.flow_id
    assert {t: owner.execute(sql.SQL("select * from {} where client_id = %s order by id").format(
        sql.Identifier("pyflows", t)), (tenant_a.client_id,)).fetchall() for t in FLOW_TREE_TABLES} == original
    check_invariants(owner)
