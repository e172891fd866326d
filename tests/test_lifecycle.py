"""The flow lifecycle through the Python API (sync and async, same cases), as pyflows_test_app."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pyflows.api import AsyncFlows, Flows
from pyflows.errors import (
    FlowBusy,
    FlowNotFound,
    Forbidden,
    IncompleteFlowExists,
    InvalidRequest,
    NoContext,
    PyflowsError,
    wrap_errors,
)
from pyflows.models import Tenant
from pyflows.testing import CitusCluster

from .helpers import count_rows, lock_waiters, mark_deleting, set_raw_context, write_flow_tree
from .lifecycle_support import ApiFactory

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

ALL_PHASES = ["data_import", "data_validation", "field_mapping", "data_cleansing", "asset_inventory",
              "dependency_analysis", "tech_debt_analysis"]


def flows_of(owner: psycopg.Connection[Any], tenant: Tenant) -> list[tuple[Any, ...]]:
    return owner.execute("select id, status from pyflows.discovery_flows where client_id = %s "
                         "and engagement_id = %s order by created_at", (tenant.client_id, tenant.engagement_id)
                         ).fetchall()


def insert_flow(owner: psycopg.Connection[Any], tenant: Tenant, status: str, name: str = "flow",
                **extra: Any) -> uuid.UUID:
    """A flow row written by hand; a 'deleting' one is written cancelled and marked by a purge's first step."""
    with owner.transaction():
        set_raw_context(owner, tenant)
        phases = ALL_PHASES if status == "completed" else extra.get("phases", [])
        row = owner.execute(
            "insert into pyflows.discovery_flows (client_id, engagement_id, name, status, phases_completed, "
            "last_activity_at) values (%s, %s, %s, %s, %s, coalesce(%s, now())) returning id",
            (tenant.client_id, tenant.engagement_id, name, "cancelled" if status == "deleting" else status, phases,
             extra.get("last_activity_at"))
        ).fetchone()
        assert row is not None
        if status == "deleting":
            mark_deleting(owner, tenant, row[0])
    return uuid.UUID(str(row[0]))


# ---- gate and start ----------------------------------------------------------------------------------


@pytest.mark.smoke
def test_gate_is_open_on_an_empty_context(api: ApiFactory, tenant_a: Tenant) -> None:
    gate = api(tenant_a).gate()
    assert gate.can_start and gate.blocking_flow is None and gate.next_steps


def test_start_then_gate_and_second_start_are_blocked(api: ApiFactory, tenant_a: Tenant,
                                                      owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    flow = flows.start("Q4 export")
    assert (flow.name, flow.status, flow.current_phase, flow.progress_percentage, flow.created_by) == \
        ("Q4 export", "initialized", "data_import", Decimal("0.00"), "pytest")
    assert flow.next_steps and "Upload" in flow.next_steps[0]

    gate = flows.gate()
    assert not gate.can_start and gate.blocking_flow is not None
    assert gate.blocking_flow.flow_id == flow.flow_id
    assert any("delete" in step for step in gate.next_steps)

    with pytest.raises(IncompleteFlowExists) as caught:
        flows.start("another")
    err = caught.value
    assert (err.flow_id, err.name, err.status, err.current_phase, err.progress_percentage) == \
        (flow.flow_id, "Q4 export", "initialized", "data_import", Decimal("0"))
    assert err.actions == ["resume", "delete"] and err.next_steps and err.last_activity_at is not None
    assert set(err.detail) == {"flow_id", "name", "status", "current_phase", "progress_percentage",
                               "last_activity_at", "next_steps", "actions"}
    assert isinstance(err.__cause__, psycopg.Error) and err.__cause__.sqlstate == "PF409"
    assert len(flows_of(owner, tenant_a)) == 1  # nothing half-written


def test_terminal_flows_do_not_block(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    insert_flow(owner, tenant_a, "completed")
    insert_flow(owner, tenant_a, "cancelled")
    insert_flow(owner, tenant_a, "deleting")
    assert api(tenant_a).gate().can_start
    assert api(tenant_a).start("next").status == "initialized"


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, None])
def test_start_refuses_bad_names(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any],
                                 name: str | None) -> None:
    with pytest.raises(InvalidRequest):
        api(tenant_a).start(name)
    assert flows_of(owner, tenant_a) == []


def test_start_trims_the_name_and_takes_created_by(api: ApiFactory, tenant_a: Tenant) -> None:
    flow = api(tenant_a).start("  padded  ", created_by="importer-service")
    assert (flow.name, flow.created_by) == ("padded", "importer-service")


def test_start_import_creates_flow_and_import_together(api: ApiFactory, tenant_a: Tenant,
                                                       owner: psycopg.Connection[Any]) -> None:
    started = api(tenant_a).start_import("cmdb.csv", "s3://uploads/cmdb.csv", 2048)
    assert started.flow is not None and started.flow.name == "cmdb.csv" and started.flow.flow_id == started.flow_id
    row = owner.execute("select flow_id, filename, storage_uri, byte_size, status, imported_by "
                        "from pyflows.data_imports where id = %s", (started.import_id,)).fetchone()
    assert row == (started.flow_id, "cmdb.csv", "s3://uploads/cmdb.csv", 2048, "uploaded", "pytest")
    named = api(tenant_a)
    with pytest.raises(IncompleteFlowExists) as caught:
        named.start_import("second.csv", "s3://uploads/second.csv", 1, flow_name="second")
    assert caught.value.flow_id == started.flow_id
    assert count_rows(owner, "data_imports") == 1 and len(flows_of(owner, tenant_a)) == 1


@pytest.mark.parametrize("filename, uri, size", [
    ("", "s3://b/k", 1), ("  ", "s3://b/k", 1), ("f.csv", "", 1), ("f.csv", "/no/scheme.csv", 1),
    ("f.csv", "s3://b/k", -1), ("f.csv", "s3://b/k", None), (None, "s3://b/k", 1), ("f.csv", None, 1),
    ("x" * 1025, "s3://b/k", 1),
])
def test_start_import_refuses_bad_files(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any],
                                        filename: str | None, uri: str | None, size: int | None) -> None:
    with pytest.raises(InvalidRequest):
        api(tenant_a).start_import(filename, uri, size)
    assert flows_of(owner, tenant_a) == [] and count_rows(owner, "data_imports") == 0


# ---- add_import ----------------------------------------------------------------------------------------


def test_add_import(api: ApiFactory, tenant_a: Tenant, tenant_b: Tenant, owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    flow = flows.start("f")
    added = flows.add_import(flow.flow_id, "more.csv", "file:///data/more.csv", 10)
    assert added.flow_id == flow.flow_id and added.flow is None
    assert count_rows(owner, "data_imports") == 1

    with pytest.raises(FlowNotFound):
        flows.add_import(uuid.uuid4(), "x.csv", "file:///x.csv", 1)
    b_flow = insert_flow(owner, tenant_b, "running")
    with pytest.raises(FlowNotFound):
        flows.add_import(b_flow, "x.csv", "file:///x.csv", 1)
    with pytest.raises(InvalidRequest):
        flows.add_import(flow.flow_id, "x.csv", "not a uri", 1)
    done = insert_flow(owner, tenant_a, "cancelled")
    with pytest.raises(InvalidRequest, match="cancelled"):
        flows.add_import(done, "x.csv", "file:///x.csv", 1)
    assert count_rows(owner, "data_imports") == 1


# ---- listings and details ------------------------------------------------------------------------------


def test_list_flows_filters_orders_pages_and_counts(api: ApiFactory, tenant_a: Tenant, tenant_b: Tenant,
                                                    owner: psycopg.Connection[Any]) -> None:
    old = insert_flow(owner, tenant_a, "completed", "old", last_activity_at="2026-01-01T00:00:00Z")
    mid = insert_flow(owner, tenant_a, "cancelled", "mid", last_activity_at="2026-02-01T00:00:00Z")
    insert_flow(owner, tenant_a, "deleting", "hidden")
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused", name="open", records=4, assets=3)
    insert_flow(owner, tenant_b, "running", "other tenant")
    flows = api(tenant_a)

    every = flows.list_flows()
    assert [f.name for f in every] == ["open", "mid", "old"]
    assert every[0].flow_id == tree.flow_id
    assert every[0].counts == {"data_imports": 1, "raw_import_records": 4, "import_field_mappings": 2,
                               "assets": 3, "asset_dependencies": 2}
    assert every[1].counts == dict.fromkeys(every[0].counts, 0)
    assert [f.flow_id for f in flows.list_flows("terminal")] == [mid, old]
    assert [f.name for f in flows.list_flows("incomplete")] == ["open"]
    assert [f.name for f in flows.list_incomplete()] == ["open"]
    assert [f.name for f in flows.list_flows("all", limit=1, offset=1)] == ["mid"]
    assert flows.list_flows("all", limit=5, offset=3) == []


@pytest.mark.parametrize("args", [("everything", 50, 0), (None, 50, 0), ("all", 0, 0), ("all", 1001, 0),
                                  ("all", 10, -1), ("all", None, 0)])
def test_list_flows_refuses_bad_arguments(api: ApiFactory, tenant_a: Tenant, args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidRequest):
        api(tenant_a).list_flows(*args)


def test_details(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused")
    flows = api(tenant_a)
    flows.record_progress(tree.flow_id, "data_import", {"rows": 3})
    details = flows.details(tree.flow_id)
    assert details.flow.flow_id == tree.flow_id and details.flow.current_phase == "data_validation"
    assert [(p.phase, p.state) for p in details.phases[:3]] == [
        ("data_import", "completed"), ("data_validation", "current"), ("field_mapping", "pending")]
    assert details.counts["assets"] == 3 and details.counts["raw_import_records"] == 3
    assert details.can_resume and details.can_delete and details.errors == []
    assert details.agent_insights[0]["insight"] == {"rows": 3}
    assert details.agent_insights[0]["phase"] == "data_import"
    assert details.next_steps == details.flow.next_steps


def test_details_of_missing_hidden_and_foreign_flows_are_pf404(api: ApiFactory, tenant_a: Tenant,
                                                              tenant_b: Tenant,
                                                              owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    for flow_id in (uuid.uuid4(), insert_flow(owner, tenant_a, "deleting"), insert_flow(owner, tenant_b, "paused")):
        with pytest.raises(FlowNotFound) as caught:
            flows.details(flow_id)
        assert caught.value.detail == {"flow_id": str(flow_id)}


# ---- progress, heartbeat, status, resume --------------------------------------------------------------


def test_recording_every_phase_completes_the_flow(api: ApiFactory, tenant_a: Tenant) -> None:
    flows = api(tenant_a)
    flow = flows.start("f")
    first = flows.record_progress(flow.flow_id, "data_import")
    assert (first.status, first.current_phase, first.progress_percentage) == \
        ("running", "data_validation", Decimal("14.29"))
    out_of_order = flows.record_progress(flow.flow_id, "field_mapping")
    assert out_of_order.current_phase == "data_validation"  # the first phase not yet complete
    assert out_of_order.phases_completed == ["data_import", "field_mapping"]
    again = flows.record_progress(flow.flow_id, "field_mapping")  # recording twice changes nothing
    assert again.phases_completed == out_of_order.phases_completed
    for phase in ALL_PHASES:
        last = flows.record_progress(flow.flow_id, phase, {"done": phase})
    assert (last.status, last.current_phase, last.progress_percentage) == ("completed", None, Decimal("100.00"))
    assert last.completed_at is not None
    assert flows.gate().can_start
    with pytest.raises(InvalidRequest, match="completed"):
        flows.record_progress(flow.flow_id, "data_import")
    assert len(flows.details(flow.flow_id).agent_insights) == len(ALL_PHASES)


@pytest.mark.parametrize("phase", ["no_such_phase", "", None])
def test_record_progress_refuses_unknown_phases(api: ApiFactory, tenant_a: Tenant, phase: str | None) -> None:
    flows = api(tenant_a)
    flow = flows.start("f")
    with pytest.raises(InvalidRequest):
        flows.record_progress(flow.flow_id, phase)
    assert flows.details(flow.flow_id).flow.phases_completed == []
    with pytest.raises(FlowNotFound):
        flows.record_progress(uuid.uuid4(), "data_import")


def test_heartbeat_keeps_a_running_flow_active(api: ApiFactory, tenant_a: Tenant) -> None:
    flows = api(tenant_a)
    flow = flows.start("f")
    with pytest.raises(InvalidRequest, match="heartbeats are for running flows"):
        flows.heartbeat(flow.flow_id)
    flows.set_status(flow.flow_id, "running")
    assert flows.details(flow.flow_id).can_delete  # running, but no heartbeat yet
    beat = flows.heartbeat(flow.flow_id)
    assert beat.lease_until - beat.heartbeat_at == timedelta(minutes=5)
    details = flows.details(flow.flow_id)
    assert details.flow.heartbeat_at == beat.heartbeat_at and not details.can_delete


def test_set_status_validates_transitions(api: ApiFactory, tenant_a: Tenant) -> None:
    flows = api(tenant_a)
    flow = flows.start("f")
    change = flows.set_status(flow.flow_id, "running")
    assert (change.changed, change.previous_status, change.status) == (True, "initialized", "running")
    assert not flows.set_status(flow.flow_id, "running").changed
    failed = flows.set_status(flow.flow_id, "failed", {"message": "parser crashed on row 12"})
    assert failed.changed
    details = flows.details(flow.flow_id)
    assert details.errors == [{"message": "parser crashed on row 12"}]
    assert "parser crashed on row 12" in details.next_steps[0]
    for status in ("completed", "deleting", "initialized", "nonsense", None):
        with pytest.raises(InvalidRequest):
            flows.set_status(flow.flow_id, status)
    with pytest.raises(InvalidRequest):
        flows.set_status(flow.flow_id, "paused", {"message": "an error without a failure"})
    flows.set_status(flow.flow_id, "cancelled")
    with pytest.raises(InvalidRequest, match="cannot go from cancelled to running"):
        flows.set_status(flow.flow_id, "running")
    assert flows.details(flow.flow_id).flow.status == "cancelled"


def test_resume(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    flow = flows.start("f")
    flows.set_status(flow.flow_id, "failed", {"message": "boom"})
    resumed = flows.resume(flow.flow_id)
    assert (resumed.resumed, resumed.previous_status, resumed.status, resumed.current_phase) == \
        (True, "failed", "running", "data_import")
    assert resumed.flow.status == "running" and resumed.next_steps
    assert flows.details(flow.flow_id).errors == []  # resuming clears the failure
    again = flows.resume(flow.flow_id)
    assert (again.resumed, again.previous_status) == (False, "running") and "nothing to do" in again.message
    for status in ("paused", "waiting_for_user"):
        flows.set_status(flow.flow_id, status)
        assert flows.resume(flow.flow_id).previous_status == status
    for status in ("completed", "cancelled"):
        done = insert_flow(owner, tenant_a, status)
        with pytest.raises(InvalidRequest, match="cannot be resumed") as caught:
            flows.resume(done)
        assert caught.value.detail == {"flow_id": str(done), "status": status}
    with pytest.raises(FlowNotFound):
        flows.resume(uuid.uuid4())


def test_resume_does_not_wait_for_a_locked_flow(api: ApiFactory, tenant_a: Tenant,
                                                pyflows_connect: Callable[..., psycopg.Connection[Any]]) -> None:
    flows = api(tenant_a)
    flow = flows.start("f")
    holder = pyflows_connect("owner")
    holder.execute("select 1 from pyflows.discovery_flows where client_id = %s and id = %s for update",
                   (tenant_a.client_id, flow.flow_id))
    with pytest.raises(FlowBusy) as caught:
        flows.resume(flow.flow_id)
    assert caught.value.hint and caught.value.detail == {"flow_id": str(flow.flow_id)}
    holder.rollback()
    assert flows.resume(flow.flow_id).resumed


# ---- isolation and fail-closed ---------------------------------------------------------------------------


def test_another_tenants_flow_is_pf404_everywhere(api: ApiFactory, tenant_a: Tenant, tenant_b: Tenant,
                                                 owner: psycopg.Connection[Any]) -> None:
    b_flow = api(tenant_b).start("B's flow").flow_id
    flows = api(tenant_a)
    calls: list[Callable[[], Any]] = [
        lambda: flows.details(b_flow), lambda: flows.record_progress(b_flow, "data_import"),
        lambda: flows.heartbeat(b_flow), lambda: flows.set_status(b_flow, "paused"),
        lambda: flows.resume(b_flow), lambda: flows.add_import(b_flow, "x.csv", "file:///x", 1),
    ]
    for call in calls:
        with pytest.raises(FlowNotFound):
            call()
    assert flows.gate().can_start  # B's incomplete flow does not block A
    assert flows.list_flows() == []
    assert flows_of(owner, tenant_b) == [(b_flow, "initialized")]  # untouched


SQL_CALLS = [
    "select pyflows.flow_gate()",
    "select pyflows.start_flow('x')",
    "select pyflows.start_import('f.csv', 'file:///f.csv', 1)",
    "select pyflows.add_import(gen_random_uuid(), 'f.csv', 'file:///f.csv', 1)",
    "select * from pyflows.list_flows()",
    "select * from pyflows.list_incomplete_flows()",
    "select pyflows.flow_details(gen_random_uuid())",
    "select pyflows.record_progress(gen_random_uuid(), 'data_import')",
    "select pyflows.heartbeat(gen_random_uuid())",
    "select pyflows.set_flow_status(gen_random_uuid(), 'paused')",
    "select pyflows.resume_flow(gen_random_uuid())",
]


@pytest.mark.parametrize("statement", SQL_CALLS)
def test_every_function_fails_closed_without_a_context(pyflows_connect: Callable[..., psycopg.Connection[Any]],
                                                       owner: psycopg.Connection[Any], statement: str) -> None:
    conn = pyflows_connect("app")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    assert caught.value.sqlstate == "PF401"
    assert count_rows(owner, "discovery_flows") == 0


def test_no_context_maps_to_no_context(pyflows_connect: Callable[..., psycopg.Connection[Any]]) -> None:
    conn = pyflows_connect("app")
    with pytest.raises(NoContext) as caught, wrap_errors():
        conn.execute("select pyflows.flow_gate()")
    assert caught.value.hint == "Use Flows.tenant(client_id, engagement_id, actor)."  # the Python API's words


# ---- admin ----------------------------------------------------------------------------------------------


def test_admin_lists_incomplete_flows_across_tenants(admin_api: ApiFactory, api: ApiFactory, tenant_a: Tenant,
                                                     tenant_b: Tenant, owner: psycopg.Connection[Any]) -> None:
    stale = insert_flow(owner, tenant_a, "paused", "stale", last_activity_at="2026-01-01T00:00:00Z")
    fresh = insert_flow(owner, tenant_b, "running", "fresh")
    insert_flow(owner, tenant_b, "completed", "done")
    rows = admin_api.root.admin_list_incomplete()
    assert [r.flow_id for r in rows] == [stale, fresh]  # longest idle first
    assert (rows[0].client_name, rows[0].engagement_name) == ("Client A", "Engagement A")
    assert rows[0].idle_for > timedelta(days=30)
    assert [r.flow_id for r in admin_api.root.admin_list_incomplete(timedelta(days=1))] == [stale]
    with pytest.raises(InvalidRequest):
        admin_api.root.admin_list_incomplete(timedelta(days=-1))
    with pytest.raises(Forbidden) as caught:
        api.root.admin_list_incomplete()
    assert caught.value.detail == {"role": "pyflows_test_app"}


# ---- races --------------------------------------------------------------------------------------------------


def test_concurrent_starts_have_exactly_one_winner(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant,
                                                   owner: psycopg.Connection[Any],
                                                   pyflows_citus: CitusCluster | None) -> None:
    dsn = pyflows_role_dsn("app")
    # The first start holds its transaction open, so every other start passes the pre-check, then
    # waits on the unique index entry and loses when the first commits: the race the index decides.
    first = psycopg.connect(dsn)
    first.execute("select pyflows.set_context(%s, %s, 'first')", (tenant_a.client_id, tenant_a.engagement_id))
    first.execute("select pyflows.start_flow('winner')")
    outcomes: list[object] = []
    started = threading.Barrier(9)

    def contender(n: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, f"contender {n}")
            started.wait()
            try:
                outcomes.append(flows.start(f"contender {n}"))
            except PyflowsError as exc:
                outcomes.append(exc)
            except psycopg.Error as exc:  # anything unmapped (a 23505, a deadlock) fails the test below
                outcomes.append(exc)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    # Commit only once all eight are waiting on the winner's index entry.
    for _ in range(200):
        waiting = lock_waiters(owner, pyflows_citus is not None)
        if waiting == 8:
            break
        time.sleep(0.05)
    assert waiting == 8, waiting
    first.commit()
    first.close()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 8
    assert all(isinstance(o, IncompleteFlowExists) for o in outcomes), outcomes
    assert {o.name for o in outcomes if isinstance(o, IncompleteFlowExists)} == {"winner"}
    assert [status for _, status in flows_of(owner, tenant_a)] == ["initialized"]


def test_free_for_all_starts_leave_one_incomplete_flow(pyflows_role_dsn: Callable[[str], str],
                                                       tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    dsn = pyflows_role_dsn("app")
    wins: list[object] = []
    losses: list[object] = []
    barrier = threading.Barrier(8)

    def contender(n: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "racer")
            barrier.wait()
            try:
                wins.append(flows.start_import(f"{n}.csv", f"file:///{n}.csv", n))
            except IncompleteFlowExists as exc:
                losses.append(exc)

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert (len(wins), len(losses)) == (1, 7)
    assert {loss.flow_id for loss in losses} == {wins[0].flow_id}  # type: ignore[attr-defined]
    assert len(flows_of(owner, tenant_a)) == 1 and count_rows(owner, "data_imports") == 1


# ---- pools ----------------------------------------------------------------------------------------------------


def test_flows_over_a_pool(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant, tenant_b: Tenant) -> None:
    with ConnectionPool(pyflows_role_dsn("app"), min_size=1, max_size=2, open=True,
                        kwargs={"autocommit": True}) as pool:
        flows = Flows(pool)
        a_flow = flows.tenant(tenant_a.client_id, tenant_a.engagement_id, "a").start("A")
        # The same pooled connection serves B next: no context leaks from A's transaction.
        assert flows.tenant(tenant_b.client_id, tenant_b.engagement_id, "b").list_flows() == []
        with pytest.raises(FlowNotFound):
            flows.tenant(tenant_b.client_id, tenant_b.engagement_id, "b").details(a_flow.flow_id)


def test_async_flows_over_a_pool(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant) -> None:
    import asyncio

    async def scenario() -> tuple[bool, bool]:
        async with AsyncConnectionPool(pyflows_role_dsn("app"), min_size=1, max_size=2, open=False,
                                       kwargs={"autocommit": True}) as pool:
            flows = AsyncFlows(pool).tenant(tenant_a.client_id, tenant_a.engagement_id, "a")
            before = (await flows.gate()).can_start
            await flows.start("A")
            return before, (await flows.gate()).can_start

    assert asyncio.run(scenario()) == (True, False)



# ---- lifecycle events in the audit trail ----------------------------------------------------------------------


def test_start_and_resume_are_audited(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    started = flows.start_import("cmdb.csv", "s3://b/cmdb.csv", 10)
    flows.set_status(started.flow_id, "paused")
    flows.resume(started.flow_id)
    flows.resume(started.flow_id)  # a no-op: no event
    events = list(reversed(flows.audit_events(started.flow_id)))
    assert [(e.action, e.actor, e.flow_id) for e in events] == [("flow.start", "pytest", started.flow_id),
                                                                ("flow.resume", "pytest", started.flow_id)]
    full = flows.audit_event(events[0].event_id)
    assert full.details == {"import_id": str(started.import_id)} and full.flow_snapshot is not None
    assert flows.audit_event(events[1].event_id).details == {"previous_status": "paused"}
    assert owner.execute("select db_user from pyflows_audit.events").fetchall() == [("pyflows_test_app",)] * 2
    with pytest.raises(IncompleteFlowExists):
        flows.start("refused")  # a refused start leaves no event
    assert len(flows.audit_events()) == 2


def test_the_app_cannot_write_lifecycle_events_itself(app_conn: Callable[[Tenant], psycopg.Connection[Any]],
                                                      tenant_a: Tenant) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app_conn(tenant_a).execute("select pyflows._audit_lifecycle('flow.start', gen_random_uuid(), null, '{}')")
