"""Item 7: deleting many small flows at once.

`flows` completed flows in one engagement, each with one import, 5 raw records, 4 mappings, 5 assets
and 8 dependency edges (24 rows). Variants, each in a rolled-back transaction, interleaved:

- ``delete_flows atomic``: one call, all or nothing, one audit event per flow sharing a batch id;
- ``delete_flows per flow``: one call, each flow in its own subtransaction with a result row;
- ``raw DELETE, audited``: one set-based ``DELETE`` of every flow of the engagement; the triggers
  still archive every row, under one ``sql.delete`` event;
- ``raw DELETE, unaudited``: the same statement with every user trigger disabled (the baseline).
"""

from __future__ import annotations

from typing import Any

from .common import PHASES, Conn, disable_triggers, ensure_tenant, interleaved, set_context, table, tenant

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
    return {"flows": flows, "rows": rows, "runs": runs,
            "results": {n: {**t.summary(), "ratio": t.median / base} for n, t in results.items()}}


def markdown(report: dict[str, Any]) -> list[str]:
    n = report["flows"]
    rows = [[name, f"{r['median']:.3f}", f"{1000 * r['median'] / n:.3f}", f"{r['ratio']:.2f}×"]
            for name, r in report["results"].items()]
    return [f"### Batches: {n:,} small flows ({report['rows']:,} rows) in one call", "",
            f"Medians of {report['runs']} runs, interleaved, rolled back.", "",
            *table(["variant", "median s", "ms / flow", "/ unaudited"], rows)]
