"""Item 5: purging a very large flow in committed batches, against the unaudited cascade of the same rows.

The cascade runs first, `runs` times, each rolled back; then the flow is purged once through
``TenantFlows.purge`` on an autocommit connection. Each batch's notice is timestamped as it arrives,
so the longest batch (its delete, archive copy and COMMIT) is measured, not estimated.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from pyflows.api import Flows

from .common import Conn, build_flow, disable_triggers, interleaved, table, tenant
from .delete import total_rows


def run(conn: Conn, dsn: str, assets: int, batch_rows: int, runs: int) -> dict[str, Any]:
    client, engagement = tenant(0xC), tenant(0xC1)
    flow = build_flow(conn, client, engagement, assets)
    rows = total_rows(conn, client, engagement, flow)

    def cascade(c: Conn) -> None:
        disable_triggers(c)
        c.execute("delete from pyflows.discovery_flows where id = %s", (flow,))

    baseline = interleaved(conn, {"unaudited cascade": cascade}, runs)["unaudited cascade"]
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
    return {"assets": assets, "rows": rows, "batch_rows": batch_rows, "runs": runs, "cascade": baseline.summary(),
            "purge_seconds": total, "batches": len(batches), "longest_batch": max(batches),
            "median_batch": sorted(batches)[len(batches) // 2], "finish_seconds": stamps[-1] - stamps[-2],
            "throughput_ratio": baseline.median / total, "event_id": event.event_id}


def markdown(report: dict[str, Any]) -> list[str]:
    c = report["cascade"]
    return [f"### Purge of one flow: {report['rows']:,} rows in batches of {report['batch_rows']:,}", "",
            *table(["", "seconds", "rows / s"],
                   [["unaudited cascade (median of " + str(report["runs"]) + ", rolled back)", f"{c['median']:.2f}",
                     f"{report['rows'] / c['median']:,.0f}"],
                    ["purge_flow (committed batches, archived, audited)", f"{report['purge_seconds']:.2f}",
                     f"{report['rows'] / report['purge_seconds']:,.0f}"]]), "",
            f"- Throughput of the purge / the cascade's: **{report['throughput_ratio']:.2f}×** (target ≥ 0.7×).",
            f"- {report['batches']} batches; longest **{report['longest_batch']:.3f} s** (target ≤ 1 s), median "
            f"{report['median_batch']:.3f} s (each includes its COMMIT); the last step (flow row, event) "
            f"{report['finish_seconds']:.3f} s."]
