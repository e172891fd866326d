"""Item 7: deleting many small flows at once.

`flows` completed flows in one engagement, each with one import, 5 raw records, 4 mappings, 5 assets
and 8 dependency edges (24 rows). Variants, each in a rolled-back transaction, interleaved:

- ``delete_flows atomic``: one call, all or nothing, one audit event per flow sharing a batch id;
- ``delete_flows per flow``: one call, each flow in its own subtransaction with a result row;
- ``raw DELETE, audited``: one set-based ``DELETE`` of every flow of the engagement; the triggers
  still archive every row, under one ``sql.delete`` event;
- ``raw DELETE, unaudited``: the same statement with every user trigger disabled (the baseline).

Then one small flow at a time, each in its own rolled-back transaction, every flow one way before
the next: ``delete_flow`` (its ``set_context`` call, made first in the same transaction, not timed),
a bare ``DELETE`` of the flow row (audited by the triggers, under a ``sql.delete`` event), and the
same ``DELETE`` with the triggers disabled. Their p50 and p99 are the latency of a single delete.
"""

from __future__ import annotations

import time
from typing import Any

from .common import (
    PHASES,
    Conn,
    Timings,
    disable_triggers,
    enable_triggers,
    ensure_tenant,
    interleaved,
    ms,
    set_context,
    table,
    tenant,
)

ASSETS_PER_FLOW = 5


def build(conn: Conn, flows: int) -> tuple[Any, Any, list[Any]]:
    client, engagement = tenant(0xD), tenant(0xD1)
    p = {"c": client, "e": engagement, "n": flows, "phases": list(PHASES), "a": ASSETS_PER_FLOW}
    with conn.transaction():
        ensure_tenant(conn, client, engagement)
        ids = [r[0] for r in conn.execute(
            "insert into pyflows.discovery_flows (client_id, engagement_id, name, status, phases_completed) "
            "select %(c)s, %(e)s, 'small ' || g, 'completed', %(phases)s from generate_series(1, %(n)s) g "
            "returning id", p).fetchall()]
        p["flows"] = ids
        conn.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, storage_uri, "
                     "byte_size) select %(c)s, %(e)s, f, 'small.csv', "
                     "'file:///nonexistent/pyflows-bench/' || f || '.csv', 1 from unnest(%(flows)s::uuid[]) f", p)
        conn.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
                     "select %(c)s, %(e)s, i.id, g, '{\"Host\": \"h\"}' from pyflows.data_imports i, "
                     "generate_series(1, %(a)s) g where i.client_id = %(c)s and i.engagement_id = %(e)s", p)
        conn.execute("insert into pyflows.import_field_mappings (client_id, engagement_id, import_id, source_field) "
                     "select %(c)s, %(e)s, i.id, f from pyflows.data_imports i, "
                     "unnest(array['Host','IP','OS','Role']) f "
                     "where i.client_id = %(c)s and i.engagement_id = %(e)s", p)
        conn.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                     "select %(c)s, %(e)s, f, 'h' || g, 'server' from unnest(%(flows)s::uuid[]) f, "
                     "generate_series(1, %(a)s) g", p)
        conn.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                     "target_asset_id, dependency_type) "
                     "select a.client_id, a.engagement_id, a.flow_id, a.id, a.next, t from (select *, "
                     "lead(id) over (partition by flow_id order by id) as next from pyflows.assets "
                     "where client_id = %(c)s and engagement_id = %(e)s) as a, (values ('network'), ('database')) v(t) "
                     "where a.next is not null", p)
    conn.execute("vacuum analyze")
    return client, engagement, ids


def run(conn: Conn, flows: int, runs: int) -> dict[str, Any]:
    client, engagement, ids = build(conn, flows)
    rows = conn.execute("select (select count(*) from pyflows.discovery_flows where engagement_id = %(e)s) "
                        "+ (select count(*) from pyflows.data_imports where engagement_id = %(e)s) "
                        "+ (select count(*) from pyflows.raw_import_records where engagement_id = %(e)s) "
                        "+ (select count(*) from pyflows.import_field_mappings where engagement_id = %(e)s) "
                        "+ (select count(*) from pyflows.assets where engagement_id = %(e)s) "
                        "+ (select count(*) from pyflows.asset_dependencies where engagement_id = %(e)s)",
                        {"e": engagement}).fetchone()[0]

    def api(atomic: bool) -> Any:
        def statements(c: Conn) -> None:
            set_context(c, client, engagement)
            results = c.execute("select ok, error_code from pyflows.delete_flows(%s, 'bench', true, %s)",
                                (ids, atomic)).fetchall()
            if len(results) != len(ids) or not all(ok for ok, _ in results):
                raise AssertionError(f"delete_flows did not delete every flow: {results[:3]}")
        return statements

    def raw(audited: bool) -> Any:
        def statements(c: Conn) -> None:
            if not audited:
                disable_triggers(c)
            c.execute("delete from pyflows.discovery_flows where client_id = %s and engagement_id = %s",
                      (client, engagement))
        return statements

    results = interleaved(conn, {"raw DELETE, unaudited": raw(False), "raw DELETE, audited": raw(True),
                                 "delete_flows atomic": api(True), "delete_flows per flow": api(False)}, runs)
    base = results["raw DELETE, unaudited"].median
    single = singles(conn, client, engagement, ids[:SINGLES])
    return {"flows": flows, "rows": rows, "runs": runs,
            "results": {n: {**t.summary(), "ratio": t.median / base} for n, t in results.items()},
            "single": {n: t.summary() for n, t in single.items()}}


SINGLES = 300


def singles(conn: Conn, client: Any, engagement: Any, ids: list[Any]) -> dict[str, Timings]:
    """Seconds for deleting one small flow, each rolled back: every flow one way, then the next way.
    The unaudited way runs with the triggers disabled in a transaction of their own, committed before
    and enabled again after (the scratch database is the bench's): disabling them inside each timed
    transaction would be DDL whose invalidations make the delete plan its cascade again every time,
    which is not what an unaudited delete costs."""
    results = {name: Timings(name) for name in ("delete_flow", "DELETE, audited", "DELETE, unaudited")}
    for name, timings in results.items():
        if name == "DELETE, unaudited":
            with conn.transaction():
                disable_triggers(conn)
        try:
            for n, flow in enumerate(ids):
                if n % 50 == 0:  # what the rolled-back deletes left behind, removed as autovacuum would
                    conn.execute("vacuum")
                with conn.transaction(force_rollback=True):
                    if name == "delete_flow":
                        set_context(conn, client, engagement)
                    started = time.perf_counter()
                    if name == "delete_flow":
                        conn.execute("select pyflows.delete_flow(%s, 'bench', true)", (flow,))
                    else:
                        conn.execute("delete from pyflows.discovery_flows where client_id = %s "
                                     "and engagement_id = %s and id = %s", (client, engagement, flow))
                    timings.add(time.perf_counter() - started)
        finally:
            if name == "DELETE, unaudited":
                with conn.transaction():
                    enable_triggers(conn)
    return results


def markdown(report: dict[str, Any]) -> list[str]:
    n = report["flows"]
    rows = [[name, f"{r['median']:.3f}", f"{1000 * r['median'] / n:.3f}", f"{r['ratio']:.2f}×"]
            for name, r in report["results"].items()]
    single = report["single"]
    singles_rows = [[name, ms(r["p50"]), ms(r["p99"]), f"{r['p50'] / single['DELETE, unaudited']['p50']:.2f}×"]
                    for name, r in single.items()]
    atomic = 1000 * report["results"]["delete_flows atomic"]["median"] / n
    return [f"### Batches: {n:,} small flows ({report['rows']:,} rows) in one call", "",
            f"Medians of {report['runs']} runs, interleaved, rolled back.", "",
            *table(["variant", "median s", "ms / flow", "/ unaudited"], rows), "",
            f"One small flow at a time ({single['delete_flow']['n']:,} flows, each deleted each way in its own "
            "rolled-back transaction; the `set_context` before `delete_flow` is not timed):", "",
            *table(["variant", "p50 ms", "p99 ms", "p50 / unaudited"], singles_rows), "",
            f"- `delete_flow` of a small flow: p50 **{ms(single['delete_flow']['p50'])} ms** (target < 1.5 ms).",
            f"- `delete_flows`, atomic: **{atomic:.2f} ms** a flow (target < 0.5 ms)."]
