"""The distributed layout and what depends on it, on whichever engine the tests run.

On one server these assert the single-node layout (and that nothing Citus-only ran); with
PYFLOWS_TEST_CITUS they assert the distributed one on a coordinator and two workers. Either way as
a non-superuser member of pyflows_app wherever a tenant's rows are read.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from pyflows import migrations
from pyflows.api import Flows
from pyflows.cli import cli
from pyflows.models import Tenant
from pyflows.testing import TEST_ROLE_PASSWORD, CitusCluster, ServerInfo, bind

from .helpers import write_flow_tree

pytestmark = pytest.mark.citus

DISTRIBUTED = ["pyflows.engagements", "pyflows.discovery_flows", "pyflows.data_imports",
               "pyflows.raw_import_records", "pyflows.import_field_mappings", "pyflows.assets",
               "pyflows.asset_dependencies", "pyflows.file_cleanup_queue"]
# The audit trail beside the rows it records (migration 0015).
AUDIT_DISTRIBUTED = ["pyflows_audit.events", *(f"pyflows_audit.{t}_chunks" for t in (
    "clients", "engagements", "discovery_flows", "data_imports", "raw_import_records", "import_field_mappings",
    "assets", "asset_dependencies"))]
REFERENCE = ["pyflows.clients", "pyflows.phases", "pyflows_audit.global_events"]


def layout(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute("select pyflows.layout()").fetchone()
    assert row is not None
    return dict(row[0])


def test_layout_is_the_engine_s(owner: psycopg.Connection[Any], pyflows_citus: CitusCluster | None) -> None:
    found = layout(owner)
    if pyflows_citus is None:
        assert found == {"engine": "postgresql", "citus_version": None, "workers": 0, "tables": {}, "pending": []}
        assert owner.execute("select pyflows._distribute()").fetchone() == ([],)  # nothing to do here
        return
    assert found["engine"] == "citus" and found["workers"] == 2 and found["pending"] == []
    assert found["tables"] == {**{t: "distributed" for t in DISTRIBUTED + AUDIT_DISTRIBUTED},
                               **{t: "reference" for t in REFERENCE}}
    # Distributed by client_id and co-located, so a flow's rows and its cascades stay on one worker.
    rows = owner.execute(
        "select logicalrelid::regclass::text, column_to_column_name(logicalrelid, partkey), colocationid "
        "from pg_dist_partition where partmethod = 'h'").fetchall()
    # A partitioned table's partitions are distributed with it (migration 0021).
    partitions = ["pyflows.assets_default", "pyflows.raw_import_records_default"]
    assert sorted(r[0] for r in rows) == sorted([*DISTRIBUTED, *AUDIT_DISTRIBUTED, *partitions])
    assert {r[1] for r in rows} == {"client_id"} and len({r[2] for r in rows}) == 1
    # Every foreign key and its cascade is back after distributing.
    keys = owner.execute("select conname, confdeltype from pg_constraint where contype = 'f' "
                         "and connamespace = 'pyflows'::regnamespace and conparentid = 0 order by 1").fetchall()
    assert len(keys) == 9 and {k[1] for k in keys} == {"c"}
    assert owner.execute("select pyflows._distribute()").fetchone() == ([],)  # idempotent


def test_check_reports_the_layout(pyflows_dsn: str, pyflows_citus: CitusCluster | None) -> None:
    result = CliRunner().invoke(cli, ["--dsn", pyflows_dsn, "check", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layout"]["engine"] == ("postgresql" if pyflows_citus is None else "citus")
    text = CliRunner().invoke(cli, ["--dsn", pyflows_dsn, "check"], catch_exceptions=False)
    expected = ("layout   single node (PostgreSQL)" if pyflows_citus is None else
                "layout   Citus 13.2-1, 2 workers: 17 tables distributed by client_id, 3 reference tables")
    assert expected in text.stdout


def test_the_context_reaches_every_node(app_conn: Callable[[Tenant], psycopg.Connection[Any]],
                                        tenant_a: Tenant, tenant_b: Tenant) -> None:
    """set_context's SET LOCALs reach the shards: each tenant sees its own flow there, and only its own."""
    flows = {}
    for tenant in (tenant_a, tenant_b):
        conn = app_conn(tenant)
        flows[tenant.client_id] = conn.execute("select pyflows.start_flow('mine') ->> 'flow_id'").fetchone()
        conn.commit()
    for tenant, other in ((tenant_a, tenant_b), (tenant_b, tenant_a)):
        conn = app_conn(tenant)
        seen = conn.execute("select id::text from pyflows.discovery_flows").fetchall()
        assert seen == [flows[tenant.client_id]]
        gate = conn.execute("select pyflows.flow_gate()").fetchone()
        assert gate is not None and gate[0]["blocking_flow"]["flow_id"] == flows[tenant.client_id][0]
        assert conn.execute("select count(*) from pyflows.discovery_flows where client_id = %s",
                            (other.client_id,)).fetchone() == (0,)
        conn.rollback()
        # Without a context: nothing at all, on every shard.
        assert conn.execute("select count(*) from pyflows.discovery_flows").fetchone() == (0,)
        conn.rollback()


def test_the_lifecycle_as_documented(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant) -> None:
    """docs/sql-api.md's calls, one transaction each, as the application login."""
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "alice")
        assert flows.gate().can_start
        started = flows.start_import("cmdb.csv", "s3://bucket/cmdb.csv", 10)
        flow_id = started.flow_id
        gate = flows.gate()
        assert not gate.can_start and gate.blocking_flow is not None and gate.blocking_flow.flow_id == flow_id
        flows.add_import(flow_id, "more.csv", "s3://bucket/more.csv", 5)
        flows.record_progress(flow_id, "data_import")
        flows.set_status(flow_id, "paused")
        assert flows.resume(flow_id).resumed
        flows.heartbeat(flow_id)
        [listed] = flows.list_incomplete()
        assert listed.flow_id == flow_id and listed.counts["data_imports"] == 2
        details = flows.details(flow_id)
        assert details.flow.status == "running" and details.counts["data_imports"] == 2
        assert [p.state for p in details.phases][:2] == ["completed", "current"]
        assert [e.action for e in flows.audit_events(flow_id=flow_id)] == ["flow.resume", "flow.start"]


def counts_keep_a_generic_plan(conn: psycopg.Connection[Any]) -> bool:
    """Whether pyflows_audit._archived_counts keeps one generic plan (migration 0016: on PostgreSQL only)."""
    row = conn.execute("select coalesce(proconfig @> array['plan_cache_mode=force_generic_plan'], false) "
                       "from pg_proc where oid = 'pyflows_audit._archived_counts(uuid, bigint[])'::regprocedure"
                       ).fetchone()
    assert row is not None
    return bool(row[0])


def test_the_close_of_an_event_is_planned_once_on_postgresql_only(
        owner: psycopg.Connection[Any], tenant_a: Tenant, pyflows_citus: CitusCluster | None,
        pyflows_role_dsn: Callable[[str], str]) -> None:
    """On one node the archive's counts keep a generic plan (planning its eight lookups on every close
    cost a tenth of a small delete); Citus, which routes that query by the bound client, plans each call."""
    assert counts_keep_a_generic_plan(owner) is (pyflows_citus is None)
    tree = write_flow_tree(owner, tenant_a, status="paused", records=2, assets=2)
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "alice")
        deleted = flows.delete(tree.flow_id, "counted at its close").deleted
    assert deleted == {"discovery_flows": 1, "data_imports": 1, "raw_import_records": 2, "import_field_mappings": 2,
                       "assets": 2, "asset_dependencies": 1}


def _single_node_pyflows(dsn: str) -> tuple[Tenant, uuid.UUID]:
    """Migrate dsn's database (no Citus there: the single-node layout) and give it a tenant with a flow."""
    migrations.migrate(dsn)
    tenant = Tenant(uuid.uuid4(), uuid.uuid4(), "mover")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert layout(conn)["engine"] == "postgresql" and counts_keep_a_generic_plan(conn)
        conn.execute("select pyflows.add_client('Mover', %s)", (tenant.client_id,))
        conn.execute("select pyflows.add_engagement(%s, 'Move', %s)", (tenant.client_id, tenant.engagement_id))
        flows = Flows(conn).tenant(tenant.client_id, tenant.engagement_id, "mover")
        flow_id = flows.start_import("before.csv", "s3://bucket/before.csv", 1).flow_id
        flows.record_progress(flow_id, "data_import")
    return tenant, flow_id


def _distribute_and_find(dsn: str, cluster: CitusCluster, server: ServerInfo, tenant: Tenant,
                         flow_id: uuid.UUID) -> None:
    """docs/scale-out.md's last steps: check names every table that waits, migrate distributes them,
    and the flow is there, through the API and as the application login."""
    waiting = migrations.status(dsn).problems
    assert len(waiting) == 1 and all(t in waiting[0] for t in DISTRIBUTED + REFERENCE), waiting
    assert "run `pyflows migrate`" in waiting[0]
    migrations.migrate(dsn)
    assert migrations.status(dsn).ok
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert layout(conn)["pending"] == [] and not counts_keep_a_generic_plan(conn)
        flows = Flows(conn).tenant(tenant.client_id, tenant.engagement_id, "mover")
        assert flows.details(flow_id).flow.phases_completed == ["data_import"]
        assert not flows.gate().can_start
    cluster.ensure_login("pyflows_test_app", TEST_ROLE_PASSWORD, "pyflows_app")
    app_login = server.conninfo(str(conninfo_to_dict(dsn)["dbname"]), user="pyflows_test_app",
                                password=TEST_ROLE_PASSWORD)
    with psycopg.connect(app_login) as app:
        bind(app, tenant)
        assert app.execute("select count(*) from pyflows.data_imports").fetchone() == (1,)


def test_an_existing_database_moves_onto_the_cluster(pyflows_citus: CitusCluster | None,
                                                     pyflows_server: ServerInfo) -> None:
    """docs/scale-out.md's move, in place: a single-node pyflows database, then the citus extension and
    the workers added, then `pyflows migrate` distributes it with its rows."""
    if pyflows_citus is None:
        pytest.skip("needs the Citus cluster (PYFLOWS_TEST_CITUS)")
    name = f"pyflows_move_{uuid.uuid4().hex[:12]}"
    nodes = [pyflows_citus.port, pyflows_citus.port + 1, pyflows_citus.port + 2]
    for port in nodes:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
    try:
        dsn = pyflows_server.conninfo(name)
        tenant, flow_id = _single_node_pyflows(dsn)
        for port in nodes[1:]:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={name}", autocommit=True) as conn:
                conn.execute("create extension citus")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create extension citus")
            conn.execute("select citus_set_coordinator_host('127.0.0.1', %s)", (nodes[0],))
            for port in nodes[1:]:
                conn.execute("select citus_add_node('127.0.0.1', %s)", (port,))
        _distribute_and_find(dsn, pyflows_citus, pyflows_server, tenant, flow_id)
    finally:
        pyflows_citus.dropdb(name)


def test_a_dump_of_a_single_node_database_restores_onto_the_cluster(
        pyflows_citus: CitusCluster | None, pyflows_server: ServerInfo, blank_dsn: str,
        tmp_path: Path) -> None:
    """docs/scale-out.md's move by pg_dump and pg_restore into a cluster database that has the extension."""
    if pyflows_citus is None:
        pytest.skip("needs the Citus cluster (PYFLOWS_TEST_CITUS)")
    tenant, flow_id = _single_node_pyflows(blank_dsn)  # a database without Citus
    dump = tmp_path / "pyflows.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", blank_dsn], check=True, timeout=300)
    name = f"pyflows_restored_{uuid.uuid4().hex[:12]}"
    pyflows_citus.createdb(name)
    try:
        dsn = pyflows_server.conninfo(name)
        subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={dsn}", str(dump)],
                       check=True, timeout=300)
        _distribute_and_find(dsn, pyflows_citus, pyflows_server, tenant, flow_id)
    finally:
        pyflows_citus.dropdb(name)


def test_the_file_queue_drains_across_tenants(owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant,
                                              pyflows_connect: Callable[..., psycopg.Connection[Any]]) -> None:
    """Claims lock entries one by one by their key (one shard each on Citus): two drains at once never
    get the same entry, and finishing one works by its id alone."""
    for n, tenant in enumerate([tenant_a, tenant_b, tenant_a, tenant_b, tenant_a]):
        owner.execute("insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri, enqueued_at) "
                      "values (%s, %s, %s, now() - %s * interval '1 minute')",
                      (tenant.client_id, tenant.engagement_id, f"s3://bucket/{n}.csv", 10 - n))
    first, second = pyflows_connect("admin"), pyflows_connect("admin")
    claimed = first.execute("select storage_uri, attempts from pyflows.claim_file_cleanups(3)").fetchall()
    assert claimed == [("s3://bucket/0.csv", 1), ("s3://bucket/1.csv", 1), ("s3://bucket/2.csv", 1)]
    # The first drain has not committed: its entries are locked, and the second skips them.
    rest = second.execute("select id, storage_uri from pyflows.claim_file_cleanups(10)").fetchall()
    assert [uri for _, uri in rest] == ["s3://bucket/3.csv", "s3://bucket/4.csv"]
    second.commit()
    first.commit()
    done = first.execute("select pyflows.finish_file_cleanup(%s)", (rest[0][0],)).fetchone()
    failed = first.execute("select pyflows.finish_file_cleanup(%s, 'denied')", (rest[1][0],)).fetchone()
    assert done is not None and done[0]["done"] is True
    assert failed is not None and failed[0]["done"] is False and failed[0]["last_error"] == "denied"
    first.commit()
    # Leased entries are not claimed again until their lease runs out.
    assert first.execute("select count(*) from pyflows.claim_file_cleanups(10)").fetchone() == (0,)


def test_pruning_and_the_admin_listing(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant) -> None:
    """prune_audit and admin_list_audit_events across tenants, as an admin login (on Citus the prune event
    is in the reference table global_events, the tenants' events on their workers: docs/scale-out.md)."""
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        flow_id = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "alice").start("old").flow_id
    with psycopg.connect(pyflows_role_dsn("admin"), autocommit=True) as conn:
        flows = Flows(conn)
        [started] = flows.admin_audit_events(action="flow.start")
        assert started.flow_id == flow_id and started.client_id == tenant_a.client_id
        assert flows.prune_audit(timedelta(0), actor="dba@example.com").events == 1
        assert [(e.action, e.actor) for e in flows.admin_audit_events()] == [("audit.prune", "dba@example.com")]
        assert flows.tenant(tenant_a.client_id, tenant_a.engagement_id).audit_events() == []


def test_a_transaction_never_waits_for_its_distributed_number(pyflows_role_dsn: Callable[[str], str],
                                                              pyflows_dsn: str,
                                                              owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                              pyflows_citus: CitusCluster | None) -> None:
    """A prune in autocommit has no Citus transaction number until _xact() LOCKs pyflows.phases for one:
    NOWAIT, so while a migration holds that table it is PF423 at once, and nothing is pruned."""
    if pyflows_citus is None:
        pytest.skip("on one node _xact() is txid_current() and locks nothing")
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "alice").start("old")
    before = owner.execute("select count(*) from pyflows_audit.events").fetchone()
    with psycopg.connect(pyflows_dsn) as migration:
        migration.execute("lock table pyflows.phases in access exclusive mode")
        with psycopg.connect(pyflows_role_dsn("admin"), autocommit=True) as conn, \
                pytest.raises(psycopg.Error) as caught:
            conn.execute("select pyflows.prune_audit(interval '0')")
        assert caught.value.sqlstate == "PF423", caught.value
        migration.rollback()
    assert owner.execute("select count(*) from pyflows_audit.events").fetchone() == before
    assert owner.execute("select count(*) from pyflows_audit.global_events").fetchone() == (0,)


def test_impact_and_safety_read_a_whole_flow(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                             pyflows_role_dsn: Callable[[str], str]) -> None:
    """deletion_impact counts every table of a flow, the edges it shares with another flow and its files;
    deletion_safety judges it: the reading half of a delete, as the application login."""
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused", records=4, assets=3)
        other = write_flow_tree(owner, tenant_a, status="completed", name="other", records=1, assets=2)
        owner.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                      "target_asset_id, dependency_type) values (%s, %s, %s, %s, %s, 'network')",
                      (tenant_a.client_id, tenant_a.engagement_id, other.flow_id, other.asset_ids[0],
                       tree.asset_ids[0]))
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        flows = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "alice")
        impact = flows.deletion_impact(tree.flow_id)
        assert impact.counts == {"discovery_flows": 1, "data_imports": 1, "raw_import_records": 4,
                                 "import_field_mappings": 2, "assets": 3, "asset_dependencies": 3}
        assert impact.external_dependencies == 1 and impact.files.count == 1
        assert impact.safety.safe and flows.deletion_safety(tree.flow_id).blockers == []


def test_a_migration_waits_for_a_lock_only_as_long_as_its_bound(pyflows_dsn: str, tenant_a: Tenant,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each migration transaction bounds its lock waits with a SET LOCAL, which on Citus reaches the
    worker where the lock is (a session setting would stay on the coordinator, and the wait would last)."""
    key = (str(tenant_a.client_id), str(tenant_a.engagement_id))
    holder = psycopg.connect(pyflows_dsn)
    holder.execute("select 1 from pyflows.engagements where client_id = %s and id = %s for update", key)
    release = threading.Timer(15, holder.rollback)  # without a bound, the update below succeeds then
    release.start()
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=300ms")
    backend = migrations._Backend(migrations._Target(pyflows_dsn), migrations.MIGRATION_TABLE)
    try:
        backend.begin()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            backend.execute("update pyflows.engagements set name = name where client_id = %s and id = %s", key)
        backend.rollback()
    finally:
        release.cancel()
        backend.connection.close()
        holder.close()


def test_the_delete_triggers_archive_into_the_shard_beside_them(pyflows_dsn: str, owner: psycopg.Connection[Any],
                                                                tenant_a: Tenant,
                                                                pyflows_citus: CitusCluster | None) -> None:
    """On Citus a delete trigger fires on a shard and writes its chunks straight into the archive's shard of
    the same client, on the same node (migration 0016): _chunk_insert names that shard where it is and
    refuses on any other node. On one node there is no shard to name."""
    client = str(tenant_a.client_id)
    if pyflows_citus is None:
        with pytest.raises(psycopg.Error, match="no Citus shards on this node") as caught:
            owner.execute("select pyflows_audit._chunk_insert('assets', %s)", (client,))
        assert caught.value.sqlstate == "XX000"
        return
    shard = owner.execute("select get_shard_id_for_distribution_column('pyflows_audit.assets_chunks', %s::uuid)",
                          (client,)).fetchone()
    assert shard is not None
    dbname = conninfo_to_dict(pyflows_dsn)["dbname"]
    found = {}
    for port in (pyflows_citus.port, pyflows_citus.port + 1, pyflows_citus.port + 2):
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname={dbname}", autocommit=True) as node:
            try:
                found[port] = node.execute("select pyflows_audit._chunk_insert('assets', %s)", (client,)).fetchone()
            except psycopg.Error as exc:
                assert exc.sqlstate == "XX000" and "is not on this node" in str(exc), exc
                found[port] = None
    written = [row[0] for row in found.values() if row is not None]
    assert found[pyflows_citus.port] is None  # the coordinator holds no shard of a distributed table
    assert written == [f"insert into pyflows_audit.assets_chunks_{shard[0]} (client_id, event_id, row_count, rows) "
                       "values ($1, $2, $3, $4)"]
