"""Restore from the audit archive, purge in committed batches, and audit retention."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyflows.api import Flows
from pyflows.errors import FlowBusy, FlowNotFound, Forbidden, IncompleteFlowExists, InvalidRequest, NoContext
from pyflows.files import drain
from pyflows.models import Tenant

from .helpers import FLOW_TREE_TABLES, mark_deleting, set_raw_context
from .lifecycle_support import ApiFactory
from .test_delete import everything, tree
from .test_lifecycle import insert_flow

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

Connect = Callable[..., psycopg.Connection[Any]]


def rows_of(owner: psycopg.Connection[Any], tenant: Tenant) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tenant in every flow table, in a comparable order."""
    return {t: owner.execute(sql.SQL("select * from {} where client_id = %s order by id").format(
        sql.Identifier("pyflows", t)), (tenant.client_id,)).fetchall() for t in FLOW_TREE_TABLES}


def big_flow(owner: psycopg.Connection[Any], tenant: Tenant, records: int) -> Any:
    target = tree(owner, tenant, status="paused", records=1, assets=20)
    with owner.transaction():
        set_raw_context(owner, tenant)
        owner.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
                      "select %s, %s, %s, g, jsonb_build_object('host', 'h' || g) from generate_series(2, %s) g",
                      (tenant.client_id, tenant.engagement_id, target.import_id, records))
    return target


# ---- restore ---------------------------------------------------------------------------------------------


@pytest.mark.smoke
def test_delete_then_restore_is_identical_row_by_row(api: ApiFactory, tenant_a: Tenant,
                                                     owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused", records=5, assets=4)
    other = insert_flow(owner, tenant_a, "cancelled", "other")
    with owner.transaction():  # an edge of another flow that points into the target's assets
        set_raw_context(owner, tenant_a)
        other_asset = owner.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                                    "values (%s, %s, %s, 'o', 'x') returning id",
                                    (tenant_a.client_id, tenant_a.engagement_id, other)).fetchone()[0]
        owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                      "target_asset_id, dependency_type) values (%s, %s, %s, %s, %s, 'x')",
                      (tenant_a.client_id, tenant_a.engagement_id, other, other_asset, target.asset_ids[0]))
    before = rows_of(owner, tenant_a)
    flows = api(tenant_a)
    deleted = flows.delete(target.flow_id, "oops")
    assert rows_of(owner, tenant_a) != before
    restored = flows.restore(deleted.event_id)
    assert rows_of(owner, tenant_a) == before
    assert restored.restored == deleted.deleted and restored.skipped == {"asset_dependencies": 0}
    assert (restored.flow_id, restored.status, restored.files_kept, restored.missing_files) == \
        (target.flow_id, "paused", 1, [])
    assert owner.execute("select count(*) from pyflows.file_cleanup_queue").fetchone() == (0,)  # removal cancelled
    event = flows.audit_event(restored.event_id)
    assert event.action == "flow.restore" and event.details is not None
    assert event.details["restored_event_id"] == deleted.event_id


def test_restore_skips_exactly_the_edges_whose_flow_or_asset_is_gone(api: ApiFactory, tenant_a: Tenant,
                                                                     owner: psycopg.Connection[Any]) -> None:
    """An edge of another flow that the deletion took along comes back only if its flow and both its assets
    exist again: each of the three is checked (the restored flow's own assets and flow need no lookup)."""
    target = tree(owner, tenant_a, status="paused", records=1, assets=3)
    a0, a1, a2 = target.asset_ids
    gone, kept = insert_flow(owner, tenant_a, "cancelled", "gone"), insert_flow(owner, tenant_a, "cancelled", "kept")
    c, e = tenant_a.client_id, tenant_a.engagement_id

    def asset(flow: uuid.UUID, name: str) -> int:
        return int(owner.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                                 "values (%s, %s, %s, %s, 'x') returning id", (c, e, flow, name)).fetchone()[0])

    def edge(flow: uuid.UUID, source: int, target_: int) -> None:
        owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                      "target_asset_id, dependency_type) values (%s, %s, %s, %s, %s, 'x')",
                      (c, e, flow, source, target_))

    with owner.transaction():
        set_raw_context(owner, tenant_a)
        lost_source, lost_target, there = asset(kept, "lost-source"), asset(kept, "lost-target"), asset(kept, "there")
        edge(gone, a0, a1)           # its flow will be gone, both assets come back
        edge(kept, lost_source, a1)  # its source will be gone
        edge(kept, a2, lost_target)  # its target will be gone
        edge(kept, there, a2)        # all there: comes back
    flows = api(tenant_a)
    deleted = flows.delete(target.flow_id, "oops")
    assert deleted.deleted["asset_dependencies"] == 2 + 4  # the flow's own chain and the four above
    flows.delete(gone, "the other flow goes too", force=True)
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        owner.execute("delete from pyflows.assets where id = any(%s)", ([lost_source, lost_target],))
    restored = flows.restore(deleted.event_id)
    assert restored.skipped == {"asset_dependencies": 3}
    assert restored.restored["asset_dependencies"] == 3
    assert sorted(owner.execute("select source_asset_id, target_asset_id from pyflows.asset_dependencies "
                                "where client_id = %s", (c,)).fetchall()) == sorted([(a0, a1), (a1, a2), (there, a2)])


def test_restore_refusals_write_nothing(api: ApiFactory, tenant_a: Tenant, tenant_b: Tenant,
                                        owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    first = flows.delete(tree(owner, tenant_a, status="paused").flow_id, "x").event_id
    b_event = api(tenant_b).delete(tree(owner, tenant_b, status="paused").flow_id, "x").event_id
    flows.start("a new flow")  # now restoring the paused flow would make a second incomplete one
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        partial = owner.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                                "values (%s, %s, 'p', 'cancelled') returning id",
                                (tenant_a.client_id, tenant_a.engagement_id)).fetchone()[0]
        owner.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                      "values (%s, %s, %s, 'a', 'x')", (tenant_a.client_id, tenant_a.engagement_id, partial))
    conn = psycopg.connect(owner.info.dsn, autocommit=True)
    with conn:
        bind_raw = "select set_config('pyflows.client_id', %s, false), set_config('pyflows.engagement_id', %s, false)"
        conn.execute(bind_raw, (str(tenant_a.client_id), str(tenant_a.engagement_id)))
        conn.execute("delete from pyflows.assets where flow_id = %s", (partial,))  # a sql.delete of no flow
    assets_only = owner.execute("select max(id) from pyflows_audit.events").fetchone()[0]
    before = everything(owner)
    cases = [(uuid.uuid4().int % 10**9 + 10**6, FlowNotFound), (b_event, FlowNotFound),
             (first, IncompleteFlowExists), (assets_only, InvalidRequest)]
    for event_id, error in cases:
        with pytest.raises(error) as caught:
            flows.restore(event_id)
        if error is IncompleteFlowExists:  # what to do about the flow that blocks it, for a restore
            assert caught.value.hint is not None and "then restore this one" in caught.value.hint
            assert caught.value.flow_id is not None and caught.value.actions == ["resume", "delete"]
    assert everything(owner) == before


def test_restore_twice_and_after_prune_is_pf422(api: ApiFactory, admin_api: ApiFactory, tenant_a: Tenant,
                                                owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    event = flows.delete(tree(owner, tenant_a, status="cancelled").flow_id, "x", force=True).event_id
    restored = flows.restore(event)
    flows.delete(tree(owner, tenant_a, status="cancelled", name="gone").flow_id, "y", force=True)
    with pytest.raises(InvalidRequest, match=f"already restored, by audit event {restored.event_id}") as caught:
        flows.restore(event)
    assert caught.value.detail == {"event_id": event, "restored_by_event_id": restored.event_id}
    assert flows.audit_event(event).restored_by_event_id == restored.event_id
    assert flows.audit_event(restored.event_id).restored_by_event_id is None
    listed = {e.event_id: e for e in flows.audit_events()}
    assert listed[restored.event_id].details["restored"]["assets"] == 3  # a restore's counts are in the listing
    pruned = flows.delete(tree(owner, tenant_a, status="cancelled", name="old").flow_id, "z", force=True).event_id
    assert admin_api.root.prune_audit(timedelta(0)).events >= 3
    with pytest.raises(InvalidRequest, match="was pruned"):
        flows.restore(pruned)


def test_restore_reports_files_already_removed(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any],
                                               pyflows_connect: Connect, tmp_path: Path) -> None:
    target = tree(owner, tenant_a, status="paused")
    stored = tmp_path / "cmdb.csv"
    stored.write_text("x")
    owner.execute("update pyflows.data_imports set storage_uri = %s where id = %s", (stored.as_uri(), target.import_id))
    flows = api(tenant_a)
    event = flows.delete(target.flow_id, "x").event_id
    assert drain(Flows(pyflows_connect("admin", autocommit=True)), roots=[tmp_path]).removed == 1
    restored = flows.restore(event)
    assert restored.missing_files == [stored.as_uri()] and restored.files_kept == 0
    assert owner.execute("select count(*) from pyflows.data_imports where id = %s",
                         (target.import_id,)).fetchone() == (1,)


# ---- purge ---------------------------------------------------------------------------------------------------


def test_purge_in_small_batches(api: ApiFactory, tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    target = big_flow(owner, tenant_a, 200_000)
    flows = api(tenant_a)
    impact = flows.deletion_impact(target.flow_id)
    assert "use_purge" in [w.code for w in impact.safety.warnings]
    notices: list[str] = []
    event = flows.purge(target.flow_id, "too large for one transaction", batch_rows=25_000, on_progress=notices.append)
    assert event.action == "flow.purge" and event.details is not None and event.details["state"] == "done"
    assert event.deleted == impact.counts
    assert event.details["batches"] >= 8 and len(notices) == event.details["batches"] + 1
    for table in FLOW_TREE_TABLES:
        archived = owner.execute(sql.SQL("select count(*) from {} where event_id = %s").format(
            sql.Identifier("pyflows_audit", table)), (event.event_id,)).fetchone()[0]
        assert archived == impact.counts[table], table
    assert everything(owner)["discovery_flows"] == 0


def test_purge_takes_edges_of_other_flows_along_in_tiny_batches(api: ApiFactory, tenant_a: Tenant,
                                                                owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused", records=5, assets=6)
    other = insert_flow(owner, tenant_a, "cancelled", "other")
    with owner.transaction():  # three edges of another flow that touch the target's assets
        set_raw_context(owner, tenant_a)
        outside = owner.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                                "values (%s, %s, %s, 'o', 'x') returning id",
                                (tenant_a.client_id, tenant_a.engagement_id, other)).fetchone()[0]
        for source, dest in ((outside, target.asset_ids[0]), (target.asset_ids[1], outside),
                             (outside, target.asset_ids[2])):
            owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                          "target_asset_id, dependency_type) values (%s, %s, %s, %s, %s, 'x')",
                          (tenant_a.client_id, tenant_a.engagement_id, other, source, dest))
    flows = api(tenant_a)
    impact = flows.deletion_impact(target.flow_id)
    assert impact.external_dependencies == 3
    notices: list[str] = []
    event = flows.purge(target.flow_id, "tiny batches", batch_rows=2, on_progress=notices.append)
    assert event.deleted == impact.counts
    left = owner.execute("select count(*) from pyflows.asset_dependencies").fetchone()[0]
    assert left == 0 and owner.execute("select count(*) from pyflows.assets").fetchone()[0] == 1  # 'o' stays
    batches = [int(re.search(r"removed (\d+) rows", n)[1]) for n in notices if "removed" in n]  # type: ignore[index]
    assert sum(batches) == impact.total_rows - 1  # the flow row goes last, on its own
    # Two rows of a table a batch; the other flow's edges go with the assets they touch.
    assert 0 < sum(n - 2 for n in batches if n > 2) <= impact.external_dependencies


def test_a_killed_purge_resumes_to_one_consistent_event(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant,
                                                        owner: psycopg.Connection[Any]) -> None:
    target = big_flow(owner, tenant_a, 200_000)
    conn = psycopg.connect(pyflows_role_dsn("app"), autocommit=True)
    flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "dba")
    impact = flows.deletion_impact(target.flow_id)
    pid = conn.info.backend_pid
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            flows.purge(target.flow_id, "killed and resumed", batch_rows=5_000)
        except BaseException as exc:  # the kill: kept for the assertion below
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    for _ in range(400):  # until some batches have committed
        row = owner.execute("select coalesce((deleted ->> 'raw_import_records')::int, 0) from pyflows_audit.events "
                            "where action = 'flow.purge'").fetchone()
        if row and row[0] >= 30_000:
            break
        time.sleep(0.05)
    owner.execute("select pg_terminate_backend(%s::integer)", (pid,))
    worker.join(timeout=60)
    assert outcome and isinstance(outcome[0], psycopg.OperationalError)

    # Mid-purge: hidden from listings, the gate is open, writers are refused.
    app = Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "dba")
    assert app.gate().can_start and app.list_flows() == []
    with pytest.raises(FlowNotFound):
        app.details(target.flow_id)
    partial = owner.execute("select deleted, details ->> 'state' from pyflows_audit.events").fetchone()
    assert partial[1] == "running" and 0 < partial[0]["raw_import_records"] < impact.counts["raw_import_records"]

    event = app.purge(target.flow_id, "killed and resumed", batch_rows=50_000)
    assert event.deleted == impact.counts and event.details is not None and event.details["state"] == "done"
    assert owner.execute("select count(*) from pyflows_audit.events").fetchone() == (1,)  # one consistent event
    for table in FLOW_TREE_TABLES:
        assert owner.execute(sql.SQL("select count(*) from {}").format(sql.Identifier("pyflows", table))
                             ).fetchone() == (0,), table  # no orphans
        archived = owner.execute(sql.SQL("select count(*) from {}").format(sql.Identifier("pyflows_audit", table))
                                 ).fetchone()[0]
        assert archived == impact.counts[table], table


def test_writers_are_refused_on_a_deleting_flow(app_conn: Callable[[Tenant], psycopg.Connection[Any]],
                                                tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    with owner.transaction():
        mark_deleting(owner, tenant_a, target.flow_id)
    statements = [
        ("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
         "values (%(c)s, %(e)s, %(f)s, 'late', 'server')"),
        ("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
         "values (%(c)s, %(e)s, %(i)s, 99, '{}')"),
        ("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, storage_uri, byte_size) "
         "values (%(c)s, %(e)s, %(f)s, 'late.csv', 'file:///late.csv', 1)"),
    ]
    params = {"c": tenant_a.client_id, "e": tenant_a.engagement_id, "f": target.flow_id, "i": target.import_id}
    before = everything(owner)
    for statement in statements:
        conn = app_conn(tenant_a)
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(statement, params)
        assert caught.value.sqlstate == "PF404"
        conn.rollback()
    assert everything(owner) == before


@pytest.mark.parametrize("case", ["batch rows", "reason", "actor", "terminal", "not autocommit"])
def test_purge_refusals(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant, owner: psycopg.Connection[Any],
                        case: str) -> None:
    target = tree(owner, tenant_a, status="completed" if case == "terminal" else "paused")
    conn = psycopg.connect(pyflows_role_dsn("app"), autocommit=case != "not autocommit")
    flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, None if case == "actor" else "dba")
    before = everything(owner)
    expected = {"batch rows": InvalidRequest, "reason": InvalidRequest, "actor": NoContext, "terminal": FlowBusy,
                "not autocommit": InvalidRequest}[case]
    with pytest.raises(expected):
        flows.purge(target.flow_id, " " if case == "reason" else "why", batch_rows=0 if case == "batch rows" else 10)
    conn.close()
    assert everything(owner) == before


def test_the_purge_steps_called_directly_refuse_what_purge_flow_would_not_do(
        app_conn: Callable[[Tenant], psycopg.Connection[Any]], pyflows_role_dsn: Callable[[str], str],
        tenant_a: Tenant, tenant_b: Tenant, owner: psycopg.Connection[Any]) -> None:
    # The helpers are executable by pyflows_app (the procedure cannot be SECURITY DEFINER), so each
    # checks its own arguments: another tenant's event, a flow that is not being purged, an event that
    # is not this flow's running purge, bad arguments. Every refusal changes nothing.
    target = tree(owner, tenant_a, status="paused")
    mine = tree(owner, tenant_b, status="paused")
    a = app_conn(tenant_a)
    event = a.execute("select pyflows._purge_begin(%s, 'started by hand', false, 10)", (target.flow_id,)).fetchone()[0]
    a.commit()
    before = everything(owner)
    events_before = owner.execute("select * from pyflows_audit.events order by id").fetchall()

    def refused(tenant: Tenant, statement: str, params: tuple[Any, ...]) -> str | None:
        conn = app_conn(tenant)
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(statement, params)
        conn.rollback()
        return caught.value.sqlstate

    finish = "select pyflows._purge_finish(%s, %s, %s)"
    assert refused(tenant_b, finish, (target.flow_id, event, 0)) == "PF404"  # A's flow, from B
    assert refused(tenant_b, finish, (mine.flow_id, event, 0)) == "PF422"  # B's flow is not being purged
    assert refused(tenant_a, finish, (target.flow_id, event + 1000, 0)) == "PF404"  # not its running purge
    assert refused(tenant_a, finish, (target.flow_id, event, -1)) == "PF422"
    begin = "select pyflows._purge_begin(%s, %s, false, %s)"
    assert refused(tenant_b, begin, (mine.flow_id, None, 10)) == "PF422"
    assert refused(tenant_b, begin, (mine.flow_id, "why", 0)) == "PF422"
    assert refused(tenant_b, begin, (target.flow_id, "why", 10)) == "PF404"
    assert everything(owner) == before
    assert owner.execute("select * from pyflows_audit.events order by id").fetchall() == events_before

    flows = Flows(psycopg.connect(pyflows_role_dsn("app"), autocommit=True)).tenant(
        tenant_a.client_id, tenant_a.engagement_id, "dba")
    done = flows.purge(target.flow_id, "finished by purge_flow")
    assert done.event_id == event and done.details is not None and done.details["state"] == "done"


# ---- prune -----------------------------------------------------------------------------------------------------


def test_prune_is_for_admins_and_removes_only_old_events(api: ApiFactory, admin_api: ApiFactory, tenant_a: Tenant,
                                                         owner: psycopg.Connection[Any]) -> None:
    flows = api(tenant_a)
    old = flows.delete(tree(owner, tenant_a, status="paused").flow_id, "old").event_id
    time.sleep(0.05)
    cutoff_marker = owner.execute("select now()").fetchone()[0]
    time.sleep(0.05)
    new = flows.delete(tree(owner, tenant_a, status="paused", name="new").flow_id, "new").event_id
    with pytest.raises(Forbidden):
        api.root.prune_audit(timedelta(0))
    with pytest.raises(InvalidRequest):
        admin_api.root.prune_audit(timedelta(days=-1))

    def age() -> timedelta:
        """The age of the marker, read just before a prune (which takes its own now() as the cutoff's base)."""
        return owner.execute("select now() - %s", (cutoff_marker,)).fetchone()[0]  # type: ignore[index, no-any-return]

    before = everything(owner)
    events_before = owner.execute("select count(*) from pyflows_audit.events").fetchone()
    for actor in ("", "   ", "x" * 201):  # a stated actor must name someone: refused, nothing pruned or recorded
        with pytest.raises(InvalidRequest, match="actor must be a non-empty name"):
            admin_api.root.prune_audit(age(), actor=actor)
    assert owner.execute("select count(*) from pyflows_audit.events").fetchone() == events_before
    for action, limit, fragment in (("flow.nuke", 10, "action must be"), (None, 0, "limit"), (None, 1001, "limit")):
        with pytest.raises(InvalidRequest, match=fragment):
            admin_api.root.admin_audit_events(action=action, limit=limit)
    with pytest.raises(Forbidden):
        api.root.admin_audit_events()
    assert admin_api.root.prune_audit(age(), dry_run=True).events == 1
    assert everything(owner) == before
    assert admin_api.root.prune_audit(age()).events == 1
    remaining = [r[0] for r in owner.execute("select id from pyflows_audit.events where action <> 'audit.prune'")]
    assert remaining == [new]
    assert owner.execute("select count(*) from pyflows_audit.assets where event_id = %s", (old,)).fetchone() == (0,)
    assert owner.execute("select count(*) from pyflows_audit.assets where event_id = %s", (new,)).fetchone() == (3,)
    # The prune is of no tenant: its event is in global_events, none in the tenants' events.
    assert owner.execute("select count(*) from pyflows_audit.events where action = 'audit.prune'").fetchone() == (0,)
    prune = owner.execute("select actor, details from pyflows_audit.global_events "
                          "where action = 'audit.prune'").fetchone()
    assert prune[0] == "pyflows_test_admin"
    assert prune[1]["events"] == 1 and prune[1]["archive"]["assets"] == 3 and prune[1]["pruned_through_event_id"] == old
