"""Issue 15, item 4: the gate and concurrency suites on one PostgreSQL and on a 3-node Citus cluster, in one run.

The same suites (``gate``: flow_gate, start_flow and the listing on a large installation; ``concurrency``:
many clients starting and finishing flows), each on a fresh single-node database of the server named by
--dsn and on a fresh database of a local Citus cluster (a coordinator and two workers on this machine,
run by the scripts in --citus), one after the other. On one machine the cluster can only show its
overhead (three servers share the same CPUs, and every call crosses from the coordinator to a worker);
the projection to N machines is worked out on paper from these figures, with its assumptions stated,
in docs/scale-out.md.

With them, the delete suite's headline ratio on each engine: ``delete_flow`` (audited, archived) against
the unaudited cascade of the same flow on the same engine, interleaved in rolled-back transactions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from pyflows import migrations
from pyflows.testing import CitusCluster

from . import concurrency, delete, gate
from .common import BENCH_ROLE, BENCH_ROLE_PASSWORD, app_dsn, describe, environment, ms, scratch_database, table


@contextmanager
def citus_database(scripts: str) -> Iterator[str]:
    """A new, migrated (so distributed) database on the local Citus cluster, dropped afterwards."""
    cluster = CitusCluster(scripts)
    cluster.start()
    name = f"pyflows_bench_citus_{uuid.uuid4().hex[:8]}"
    cluster.createdb(name)
    try:
        dsn = f"host=127.0.0.1 port={cluster.port} user=postgres dbname={name}"
        migrations.migrate(dsn)
        cluster.ensure_login(BENCH_ROLE, BENCH_ROLE_PASSWORD, "pyflows_app")
        yield dsn
    finally:
        cluster.dropdb(name)


def _both(dsn: str, engagements: int, flows: int, list_calls: int, clients: int, contexts: int,
          seconds: float, assets: int, runs: int) -> dict[str, Any]:
    login = app_dsn(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(login) as app:
        env = environment(conn)
        started = time.perf_counter()
        gates = gate.run(conn, app, engagements, flows, list_calls)
        load = concurrency.run(conn, login, clients, contexts, seconds)
        audited = delete.run_audited(conn, assets, runs)
        return {"gate": gates, "concurrency": load, "delete": audited, "environment": env,
                "wall_seconds": time.perf_counter() - started}


def run(dsn: str, scripts: str, engagements: int, flows: int, list_calls: int, clients: int, contexts: int,
        seconds: float, assets: int, runs: int) -> dict[str, Any]:
    with scratch_database(dsn, "single") as single:
        one = _both(single, engagements, flows, list_calls, clients, contexts, seconds, assets, runs)
    with citus_database(scripts) as distributed:
        with psycopg.connect(distributed) as conn:
            row = conn.execute("select pyflows.layout()").fetchone()
            layout = row[0] if row else None
        cluster = _both(distributed, engagements, flows, list_calls, clients, contexts, seconds, assets, runs)
    return {"single": one, "citus": cluster, "layout": layout, "engagements": engagements, "flows": flows,
            "clients": clients, "contexts": contexts, "seconds": seconds}


def markdown(report: dict[str, Any]) -> list[str]:
    one, cluster = report["single"], report["citus"]
    rows = []
    for call in one["gate"]["results"]:
        a, b = one["gate"]["results"][call], cluster["gate"]["results"][call]
        rows.append([call, ms(a["p50"]), ms(b["p50"]), f"{b['p50'] / a['p50']:.2f}×",
                     ms(a["p99"]), ms(b["p99"]), f"{b['p99'] / a['p99']:.2f}×"])
    fa, fb = one["concurrency"]["flows_per_second"], cluster["concurrency"]["flows_per_second"]
    ca, cb = one["concurrency"]["calls_per_second"], cluster["concurrency"]["calls_per_second"]
    layout = report["layout"] or {}
    da, db = one["delete"], cluster["delete"]
    return [
        f"### One node and a 3-node Citus cluster on the same machine: {report['engagements']:,} engagements, "
        f"{report['flows']:,} flows; {report['clients']} clients", "",
        f"The gate and concurrency suites as above, run twice in one invocation: on a single-node database, "
        f"then on Citus {layout.get('citus_version')} with {layout.get('workers')} workers (the coordinator and "
        f"both workers are PostgreSQL servers on this one machine). Each call in its own transaction after "
        f"`set_context`, as the application login.", "",
        *table(["call", "p50 ms one node", "p50 ms Citus", "Citus / one", "p99 ms one node", "p99 ms Citus",
                "Citus / one"], rows), "",
        *table([f"{report['clients']} clients, {report['seconds']:.0f} s", "one node", "Citus", "Citus / one"],
               [["flows completed / s", f"{fa:.1f}", f"{fb:.1f}", f"{fb / fa:.2f}×"],
                ["API calls / s", f"{ca:.0f}", f"{cb:.0f}", f"{cb / ca:.2f}×"],
                ["PF409 refusals", f"{one['concurrency']['refused_pf409']:,}",
                 f"{cluster['concurrency']['refused_pf409']:,}", ""],
                ["contexts with more than one incomplete flow",
                 one["concurrency"]["contexts_with_more_than_one_incomplete"],
                 cluster["concurrency"]["contexts_with_more_than_one_incomplete"], ""]]), "",
        f"The delete suite's ratio on each engine: one flow of {da['assets']:,} assets ({da['rows']:,} rows), "
        f"{da['runs']} runs of each variant, interleaved, rolled back.", "",
        *table(["", "unaudited cascade median s", "delete_flow median s", "delete_flow / unaudited"],
               [[name, f"{d['results']['unaudited']['median']:.3f}", f"{d['results']['delete_flow']['median']:.3f}",
                 f"{d['results']['delete_flow']['ratio']:.2f}×"] for name, d in (("one node", da), ("Citus", db))]),
        "",
        f"- Suite wall time: one node {one['wall_seconds']:.0f} s, Citus {cluster['wall_seconds']:.0f} s.",
        f"- The cluster's nodes: {describe(cluster['environment'])} (the test cluster runs with fsync off; "
        "the single node below does not, so the cluster's commits cost it less than they would in production).",
    ]
