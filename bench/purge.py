"""Item 5: purging a very large flow in committed batches, against the unaudited cascade of the same rows.

A purge cannot be rolled back, so each run builds its own flow (in an engagement of its own), times
the cascade of that flow's rows in a rolled-back transaction, then purges the flow through
``TenantFlows.purge`` on an autocommit connection: every run compares the two on the same rows, in
the same table state. Each batch's notice is timestamped as it arrives, so the longest batch (its
delete, archive write and COMMIT) is measured, not estimated.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import psycopg

from pyflows.api import Flows

from .common import Conn, Timings, build_flow, disable_triggers, rolled_back, table, tenant
from .delete import total_rows


def purge_once(dsn: str, client: uuid.UUID, engagement: uuid.UUID, flow: uuid.UUID, rows: int,
               batch_rows: int) -> dict[str, Any]:
    stamps: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as purge_conn:
        started = time.perf_counter()
        event = Flows(purge_conn).tenant(client, engagement, "bench").purge(
            flow, "bench", batch_rows=batch_rows, on_progress=lambda _: stamps.append(time.perf_counter()))
        total = time.perf_counter() - started
    deleted = sum((event.deleted or {}).values())
    if deleted != rows:
        raise AssertionError(f"the purge removed {deleted} rows, the impact said {rows}")
    # stamps: one per batch, then 'done'; the first interval also holds the short first transaction.
    batches = [b - a for a, b in zip([started, *stamps[:-2]], stamps[:-1], strict=True)]
    return {"seconds": total, "batches": batches, "finish": stamps[-1] - stamps[-2]}


def run(conn: Conn, dsn: str, assets: int, batch_rows: int, runs: int) -> dict[str, Any]:
    client = tenant(0xC)
    cascade, purge = Timings("unaudited cascade"), Timings("purge_flow")
    batches: list[float] = []
    ratios: list[float] = []
    finish: list[float] = []
    rows = 0
    for n in range(runs):
        engagement = tenant(0xC00 + n)
        flow = build_flow(conn, client, engagement, assets)
        rows = total_rows(conn, client, engagement, flow)

        def delete(c: Conn, flow: uuid.UUID = flow) -> None:
            disable_triggers(c)
            c.execute("delete from pyflows.discovery_flows where id = %s", (flow,))

        cascade.add(rolled_back(conn, delete))
        once = purge_once(dsn, client, engagement, flow, rows, batch_rows)
        purge.add(once["seconds"])
        batches += once["batches"]
        finish.append(once["finish"])
        ratios.append(cascade.seconds[-1] / once["seconds"])
    return {"assets": assets, "rows": rows, "batch_rows": batch_rows, "runs": runs, "cascade": cascade.summary(),
            "purge": purge.summary(), "purge_seconds": purge.median, "batches": len(batches) // runs,
            "longest_batch": max(batches), "median_batch": statistics.median(batches),
            "finish_seconds": statistics.median(finish), "throughput_ratio": statistics.median(ratios),
            "ratios": ratios}


def markdown(report: dict[str, Any]) -> list[str]:
    c, p = report["cascade"], report["purge"]
    ratios = ", ".join(f"{r:.2f}" for r in report["ratios"])
    return [f"### Purge of one flow: {report['rows']:,} rows in batches of {report['batch_rows']:,}", "",
            f"{report['runs']} runs, each on a flow built for it: the cascade of its rows (rolled back), "
            "then its purge.", "",
            *table(["", "min s", "median s", "max s", "rows / s (median)"],
                   [["unaudited cascade", f"{c['min']:.2f}", f"{c['median']:.2f}", f"{c['max']:.2f}",
                     f"{report['rows'] / c['median']:,.0f}"],
                    ["purge_flow (committed batches, archived, audited)", f"{p['min']:.2f}", f"{p['median']:.2f}",
                     f"{p['max']:.2f}", f"{report['rows'] / p['median']:,.0f}"]]), "",
            f"- Throughput of the purge / the cascade's: **{report['throughput_ratio']:.2f}×** (median of the "
            f"runs' ratios: {ratios}; target ≥ 0.7×).",
            f"- {report['batches']} batches a run; longest of all runs **{report['longest_batch']:.3f} s** "
            f"(target ≤ 1 s), median {report['median_batch']:.3f} s (each includes its COMMIT); the last step "
            f"(flow row, event) {report['finish_seconds']:.3f} s."]
