"""Injected faults: a backend killed in the middle of a delete, a batch and a file drain, and a
statement timeout during a delete. After each: all or nothing, the audit consistent, no file lost
from the queue. (A killed purge resuming is tested in test_restore_purge.py.)

The victim is stopped at a known point, not at a guessed moment: another session holds a row lock
on one of the rows the delete must remove, so the delete waits inside the cascade, after it has
already deleted (and archived) other rows of its transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyflows.api import Flows
from pyflows.files import LocalFiles, drain
from pyflows.testing import Tenant

from .helpers import fingerprint, write_flow_tree

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus


@contextmanager
def holding_asset(owner_dsn: str, tenant: Tenant, asset_id: int) -> Iterator[None]:
    """Another session holds a lock on one asset row (by its full key) until the block ends."""
    with psycopg.connect(owner_dsn) as holder:
        holder.execute("select 1 from pyflows.assets where client_id = %s and id = %s for update",
                       (tenant.client_id, asset_id))
        yield
        holder.rollback()


def wait_until_blocked(owner: psycopg.Connection[Any], pid: int) -> None:
    """Until backend `pid` waits for a lock: on Citus, on whichever node its statement waits (a global
    pid is the node's id times 10^10 plus the coordinator backend's pid)."""
    citus = owner.execute("select exists (select from pg_extension where extname = 'citus')").fetchone() == (True,)
    query = ("select count(*) from citus_lock_waits where waiting_gpid %% 10000000000 = %s" if citus else
             "select count(*) from pg_stat_activity where pid = %s and wait_event_type = 'Lock'")
    for _ in range(400):
        row = owner.execute(query, (pid,)).fetchone()
        if row and row[0] > 0:
            return
        time.sleep(0.025)
    raise AssertionError(f"backend {pid} never waited on the lock")


def in_thread(action: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(action())
        except BaseException as exc:  # asserted on by the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("shape", ["one flow", "third flow of an atomic batch"])
def test_a_backend_killed_mid_delete_leaves_everything(pyflows_role_dsn: Callable[[str], str],
                                                       pyflows_dsn: str, tenant_a: Tenant,
                                                       owner: psycopg.Connection[Any], shape: str) -> None:
    with owner.transaction():
        trees = [write_flow_tree(owner, tenant_a, status="completed", records=30, assets=6) for _ in range(4)]
    before = fingerprint(owner)
    conn = psycopg.connect(pyflows_role_dsn("app"), autocommit=True)
    api = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "dba")
    victim = trees[0] if shape == "one flow" else trees[2]
    with holding_asset(pyflows_dsn, tenant_a, victim.asset_ids[3]):
        if shape == "one flow":
            thread, outcome = in_thread(lambda: api.delete(victim.flow_id, "killed", force=True))
        else:
            thread, outcome = in_thread(lambda: api.delete_many([t.flow_id for t in trees], "killed", force=True))
        wait_until_blocked(owner, conn.info.backend_pid)
        owner.execute("select pg_terminate_backend(%s::integer)", (conn.info.backend_pid,))
        thread.join(timeout=30)
    assert outcome and isinstance(outcome[0], psycopg.OperationalError)
    assert fingerprint(owner) == before  # no row gone, no event, no archive row, nothing queued


def test_a_statement_timeout_during_a_delete_leaves_everything(pyflows_role_dsn: Callable[[str], str],
                                                               pyflows_dsn: str, tenant_a: Tenant,
                                                               owner: psycopg.Connection[Any]) -> None:
    with owner.transaction():
        victim = write_flow_tree(owner, tenant_a, status="paused", records=30, assets=6)
    before = fingerprint(owner)
    conn = psycopg.connect(pyflows_role_dsn("app"), autocommit=True)
    conn.execute("set statement_timeout = '300ms'")
    conn.execute("set pyflows.lock_timeout = '10s'")  # the statement times out first, mid-delete
    api = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "dba")
    with holding_asset(pyflows_dsn, tenant_a, victim.asset_ids[2]), pytest.raises(psycopg.errors.QueryCanceled):
        api.delete(victim.flow_id, "timed out")
    assert fingerprint(owner) == before
    assert api.delete(victim.flow_id, "again, unhindered").deleted["assets"] == 6  # and it can be done after


def test_a_drain_killed_mid_way_loses_no_file(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant,
                                              owner: psycopg.Connection[Any], tmp_path: Path) -> None:
    files = []
    for n in range(3):
        path = tmp_path / f"export-{n}.csv"
        path.write_text("host\n")
        files.append(path)
    with owner.transaction():
        owner.execute("insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri) "
                      "select %s, %s, unnest(%s::text[])",
                      (tenant_a.client_id, tenant_a.engagement_id, [p.as_uri() for p in files]))
    conn = psycopg.connect(pyflows_role_dsn("admin"), autocommit=True)

    class KillingStorage(LocalFiles):
        calls = 0

        def remove(self, uri: str, **tenant: Any) -> None:
            super().remove(uri, **tenant)
            KillingStorage.calls += 1
            if KillingStorage.calls == 2:  # the object is gone; its outcome is not recorded yet
                owner.execute("select pg_terminate_backend(%s::integer)", (conn.info.backend_pid,))

    with pytest.raises(psycopg.OperationalError):
        drain(Flows(conn), batch=10, lease=timedelta(minutes=5), storages={"file": KillingStorage([tmp_path])})
    states = owner.execute("select storage_uri, done_at is not null, lease_until is not null "
                           "from pyflows.file_cleanup_queue order by id").fetchall()
    assert [s[1] for s in states] == [True, False, False]  # one recorded; two still queued (leased)
    assert not files[0].exists() and not files[1].exists() and files[2].exists()

    owner.execute("update pyflows.file_cleanup_queue set lease_until = now() - interval '1 second' "
                  "where done_at is null")  # the dead drain's lease runs out
    with psycopg.connect(pyflows_role_dsn("admin"), autocommit=True) as again:
        report = drain(Flows(again), roots=[tmp_path])
    assert (report.removed, report.failed) == (2, 0)  # the gone one counts as removed
    assert owner.execute("select count(*) from pyflows.file_cleanup_queue where done_at is null").fetchone() == (0,)
    assert not any(p.exists() for p in files)
