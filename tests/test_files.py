"""The file outbox: enqueued by deletes (API or raw SQL), drained idempotently, nothing lost."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyflows.api import Flows
from pyflows.errors import FlowNotFound, Forbidden, InvalidRequest
from pyflows.files import LocalFiles, drain
from pyflows.models import Tenant

from .helpers import set_raw_context

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

Connect = Callable[..., psycopg.Connection[Any]]


def add_import(owner: psycopg.Connection[Any], tenant: Tenant, flow_id: Any, uri: str) -> None:
    with owner.transaction():
        set_raw_context(owner, tenant)
        owner.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, storage_uri, "
                      "byte_size) values (%s, %s, %s, 'f', %s, 1)", (tenant.client_id, tenant.engagement_id,
                                                                      flow_id, uri))


@pytest.fixture
def queued(owner: psycopg.Connection[Any], tenant_a: Tenant, tmp_path: Path) -> list[Path]:
    """Three stored files of one flow, deleted by raw SQL: three queue entries."""
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        flow = owner.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name) "
                             "values (%s, %s, 'f') returning id", (tenant_a.client_id, tenant_a.engagement_id)
                             ).fetchone()[0]
    paths = [tmp_path / f"upload {n}.csv" for n in range(3)]
    for path in paths:
        path.write_text("host,ip\n")
        add_import(owner, tenant_a, flow, path.as_uri())
    owner.execute("delete from pyflows.discovery_flows where id = %s", (flow,))
    return paths


@pytest.fixture
def admin_flows(pyflows_connect: Connect) -> Flows:
    return Flows(pyflows_connect("admin", autocommit=True))


def queue(owner: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return owner.execute("select storage_uri, attempts, done_at is not null, last_error "
                         "from pyflows.file_cleanup_queue order by id").fetchall()


def test_deleted_imports_are_enqueued_and_drained(queued: list[Path], admin_flows: Flows,
                                                  owner: psycopg.Connection[Any]) -> None:
    assert [q[0] for q in queue(owner)] == [p.as_uri() for p in queued]
    report = drain(admin_flows, roots=[queued[0].parent])
    assert (report.removed, report.failed) == (3, 0)
    assert not any(p.exists() for p in queued)
    assert [(q[1], q[2], q[3]) for q in queue(owner)] == [(1, True, None)] * 3
    again = drain(admin_flows, roots=[queued[0].parent])  # idempotent: nothing left to do
    assert (again.removed, again.failed) == (0, 0)


def test_a_missing_file_counts_as_removed(queued: list[Path], admin_flows: Flows,
                                          owner: psycopg.Connection[Any]) -> None:
    queued[0].unlink()
    assert drain(admin_flows, roots=[queued[0].parent]).removed == 3


def test_killed_between_removing_and_recording_loses_nothing(queued: list[Path], admin_flows: Flows,
                                                             owner: psycopg.Connection[Any]) -> None:
    claimed = admin_flows.claim_file_cleanups(1, timedelta(minutes=5))
    LocalFiles([queued[0].parent]).remove(claimed[0].storage_uri)  # ... and the drain dies before finishing
    assert drain(admin_flows, roots=[queued[0].parent]).removed == 2  # the leased entry waits for its lease
    owner.execute("update pyflows.file_cleanup_queue set lease_until = now() - interval '1 second' "
                  "where done_at is null")  # the lease runs out
    assert drain(admin_flows, roots=[queued[0].parent]).removed == 1
    assert [(q[1], q[2]) for q in queue(owner)] == [(2, True), (1, True), (1, True)]


def test_failures_stay_queued_with_their_error_and_are_retried(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                               admin_flows: Flows, tmp_path: Path) -> None:
    with owner.transaction():
        set_raw_context(owner, tenant_a)
        flow = owner.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name) "
                             "values (%s, %s, 'f') returning id", (tenant_a.client_id, tenant_a.engagement_id)
                             ).fetchone()[0]
    add_import(owner, tenant_a, flow, "s3://bucket/key.csv")
    add_import(owner, tenant_a, flow, tmp_path.as_uri())  # a directory: refused, never removed
    owner.execute("delete from pyflows.discovery_flows where id = %s", (flow,))
    report = drain(admin_flows, lease=timedelta(seconds=1), roots=[tmp_path.parent])
    assert (report.removed, report.failed) == (0, 2)
    assert "no storage backend for s3" in report.errors[0][2] and "directory" in report.errors[1][2]
    assert tmp_path.is_dir()
    rows = queue(owner)
    assert [(r[1], r[2]) for r in rows] == [(1, False), (1, False)] and all(r[3] for r in rows)
    owner.execute("update pyflows.file_cleanup_queue set lease_until = now() - interval '1 second'")
    assert drain(admin_flows, roots=[tmp_path.parent]).failed == 2
    assert [r[1] for r in queue(owner)] == [2, 2]  # every attempt counted


def test_concurrent_claims_never_share_an_entry(queued: list[Path], pyflows_connect: Connect) -> None:
    results: list[list[int]] = []
    barrier = threading.Barrier(3)

    def claim() -> None:
        flows = Flows(pyflows_connect("admin", autocommit=True))
        barrier.wait()
        results.append([c.id for c in flows.claim_file_cleanups(2)])

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    claimed = [i for r in results for i in r]
    assert len(claimed) == len(set(claimed)) == 3


def test_the_queue_is_for_admins(queued: list[Path], pyflows_connect: Connect) -> None:
    flows = Flows(pyflows_connect("app", autocommit=True))
    with pytest.raises(Forbidden):
        flows.claim_file_cleanups()
    with pytest.raises(Forbidden):
        flows.finish_file_cleanup(1)


def test_claim_and_finish_refuse_bad_arguments(admin_flows: Flows) -> None:
    for limit, lease in ((0, timedelta(minutes=1)), (1001, timedelta(minutes=1)), (1, timedelta(0))):
        with pytest.raises(InvalidRequest):
            admin_flows.claim_file_cleanups(limit, lease)
    with pytest.raises(FlowNotFound):
        admin_flows.finish_file_cleanup(123456)


def test_local_files_refuse_other_hosts_and_relative_paths() -> None:
    with pytest.raises(ValueError, match="another host"):
        LocalFiles(["/tmp"]).remove("file://elsewhere/tmp/x")
