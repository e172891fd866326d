"""The delete path: audited delete vs the unaudited cascade, impact, restore, and how they grow.

Every variant deletes the very same rows inside a transaction that is rolled back.

- ``unaudited``: the cascade with every user trigger disabled (the baseline);
- ``delete_flow``: pyflows' audited delete (archive copies, counts, file outbox);
- ``row_jsonb``: the usual audit-trigger design, a row-level AFTER DELETE trigger writing
  ``to_jsonb(old)`` per row (built here only, with pyflows' own triggers disabled);
- ``archive_write``: the flow's rows written into the archive by the triggers' own statement, nothing
  deleted: what writing the archive costs by itself, the floor under delete_flow's extra time;
- ``impact``: ``deletion_impact`` on the flow;
- ``restore``: ``restore_flow`` of the event ``delete_flow`` just wrote (only the restore is timed).

Then the two that matter most, measured a second way: each run deletes a fresh copy of the same flow
(every row copied with new ids into an engagement of its own, vacuumed and checkpointed, so that no
write of the copy's is still on its way to the disk when the clock starts; then deleted and committed),
``unaudited`` and ``delete_flow`` side by side in each run, who goes first swapping every run, their ratio
taken over pairs of runs as the ingest suite takes its (``crossover``). This is what a delete costs on rows
no earlier delete touched, with the commit.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import RawCursor, sql

from .common import (
    TABLES,
    Conn,
    Timings,
    build_flow,
    crossover,
    disable_triggers,
    enable_triggers,
    ensure_tenant,
    in_turn,
    interleaved,
    set_context,
    table,
    tenant,
)

SETUP_ROW_AUDIT = """
create table if not exists public.bench_row_audit (id bigserial primary key, table_name text, row_data jsonb,
                                                   at timestamptz default now());
create or replace function public.bench_row_audit() returns trigger language plpgsql as $$
begin
    insert into public.bench_row_audit (table_name, row_data) values (tg_table_name, to_jsonb(old));
    return old;
end $$;
"""


def variants(client: uuid.UUID, engagement: uuid.UUID, flow: uuid.UUID,
             names: Sequence[str]) -> dict[str, Callable[[Conn], Any]]:
    def audited(c: Conn) -> Any:
        set_context(c, client, engagement)
        return c.execute("select pyflows.delete_flow(%s, 'bench')", (flow,)).fetchone()[0]

    def unaudited(c: Conn) -> None:
        disable_triggers(c)
        c.execute("delete from pyflows.discovery_flows where id = %s", (flow,))

    def row_jsonb(c: Conn) -> None:
        disable_triggers(c)
        for name in TABLES:
            c.execute(sql.SQL("create trigger bench_row_audit after delete on {} for each row "
                              "execute function public.bench_row_audit()").format(sql.Identifier("pyflows", name)))
        c.execute("delete from pyflows.discovery_flows where id = %s", (flow,))

    def archive_write(c: Conn) -> None:
        # The statement the delete triggers run on their transition table, here on the flow's rows
        # (the engagement holds this flow only), with the trigger function's own work_mem.
        c.execute("select set_config('work_mem', split_part(s, '=', 2), true) from pg_proc, unnest(proconfig) s "
                  "where oid = 'pyflows_audit._on_delete_assets'::regproc and s like 'work_mem=%'")
        for name in TABLES:
            source = sql.SQL("(select * from {} where client_id = {} and engagement_id = {})").format(
                sql.Identifier("pyflows", name), sql.Literal(str(client)), sql.Literal(str(engagement)))
            statement = c.execute("select pyflows_audit._archive_statement(%s, %s)",
                                  (name, source.as_string(c))).fetchone()[0]
            RawCursor(c).execute(statement, (0,))  # $1: the event

    def impact(c: Conn) -> None:
        set_context(c, client, engagement)
        c.execute("select pyflows.deletion_impact(%s)", (flow,))

    def restore(c: Conn) -> float:
        event = audited(c)["event_id"]
        started = time.perf_counter()
        c.execute("select pyflows.restore_flow(%s)", (event,))
        return time.perf_counter() - started

    every = {"unaudited": unaudited, "delete_flow": audited, "row_jsonb": row_jsonb, "archive_write": archive_write,
             "impact": impact, "restore": restore}
    return {name: every[name] for name in names}


def total_rows(conn: Conn, client: uuid.UUID, engagement: uuid.UUID, flow: uuid.UUID) -> int:
    with conn.transaction():
        set_context(conn, client, engagement)
        return int(conn.execute("select (pyflows.deletion_impact(%s)) ->> 'total_rows'", (flow,)).fetchone()[0])


def ratios(results: dict[str, Timings], base: str = "unaudited") -> dict[str, dict[str, float]]:
    return {n: {**t.summary(), "ratio": t.median / results[base].median} for n, t in results.items()}


# A copy of flow %(f)s (with everything it owns) as flow %(g)s in engagement %(e)s of the same client.
COPY_FLOW = """
insert into pyflows.discovery_flows (client_id, engagement_id, id, name, status, progress_percentage, phases_completed)
select client_id, %(e)s, %(g)s, name, status, progress_percentage, phases_completed
  from pyflows.discovery_flows where id = %(f)s;
create temporary table bench_imports on commit drop as
select id as old, gen_random_uuid() as new from pyflows.data_imports where flow_id = %(f)s;
insert into pyflows.data_imports (client_id, engagement_id, id, flow_id, filename, storage_uri, byte_size)
select i.client_id, %(e)s, m.new, %(g)s, i.filename, i.storage_uri || '.' || m.new, i.byte_size
  from pyflows.data_imports i join bench_imports m on m.old = i.id;
insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data)
select r.client_id, %(e)s, m.new, r.row_number, r.data
  from pyflows.raw_import_records r join bench_imports m on m.old = r.import_id;
insert into pyflows.import_field_mappings (client_id, engagement_id, import_id, source_field)
select r.client_id, %(e)s, m.new, r.source_field
  from pyflows.import_field_mappings r join bench_imports m on m.old = r.import_id;
create temporary table bench_assets on commit drop as
select id as old, nextval(pg_get_serial_sequence('pyflows.assets', 'id')) as new
  from pyflows.assets where flow_id = %(f)s;
insert into pyflows.assets (client_id, engagement_id, id, flow_id, name, asset_type)
select a.client_id, %(e)s, m.new, %(g)s, a.name, a.asset_type
  from pyflows.assets a join bench_assets m on m.old = a.id;
insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, target_asset_id,
                                        dependency_type)
select d.client_id, %(e)s, %(g)s, s.new, t.new, d.dependency_type
  from pyflows.asset_dependencies d join bench_assets s on s.old = d.source_asset_id
  join bench_assets t on t.old = d.target_asset_id
 where d.flow_id = %(f)s;
"""


def fresh_copies(conn: Conn, client: uuid.UUID, flow: uuid.UUID, rows: int, runs: int) -> dict[str, Any]:
    """unaudited and delete_flow, each on a fresh copy of `flow` (`rows` rows), committed, side by side in each
    run, who goes first swapping every run: {"results": each variant's summary and median / unaudited,
    "per_run": each run's delete_flow / unaudited, "first": the variant that went first in each run, "paired": the
    median over pairs of runs (one with each going first) of the geometric mean of the two runs' ratios}."""
    results = {name: Timings(name) for name in ("unaudited", "delete_flow")}
    first = []
    for n in range(runs):
        names = in_turn(("unaudited", "delete_flow"), n)
        first.append(names[0])
        for name in names:
            engagement, copy = tenant(0xAF00 + 2 * n + list(results).index(name)), uuid.uuid4()
            with conn.transaction():
                ensure_tenant(conn, client, engagement)
                for statement in COPY_FLOW.strip().split(";\n"):
                    conn.execute(statement, {"e": engagement, "f": flow, "g": copy})
            conn.execute("vacuum analyze")
            # The copy's and vacuum's writes reach the disk before the clock starts, not during the delete.
            conn.execute("checkpoint")
            with conn.transaction():
                if name == "unaudited":
                    disable_triggers(conn)
                else:
                    set_context(conn, client, engagement)
                started = time.perf_counter()
                if name == "unaudited":
                    conn.execute("delete from pyflows.discovery_flows where id = %s", (copy,))
                else:
                    deleted = conn.execute("select pyflows.delete_flow(%s, 'bench', true) -> 'deleted'",
                                           (copy,)).fetchone()[0]
                results[name].add(time.perf_counter() - started)
                if name == "delete_flow" and sum(deleted.values()) != rows:
                    raise AssertionError(f"the copy of the flow held {deleted}, not {rows} rows")
                if name == "unaudited":
                    enable_triggers(conn)
    per_run = [d / u for u, d in zip(results["unaudited"].seconds, results["delete_flow"].seconds, strict=True)]
    return {"results": ratios(results), "per_run": per_run, "first": first,
            "paired": statistics.median(crossover(per_run))}


def run_audited(conn: Conn, assets: int, runs: int) -> dict[str, Any]:
    """delete_flow against the unaudited cascade only, on one flow of `assets` assets: the ratio the scale
    suite puts side by side for one node and a Citus cluster."""
    client, engagement = tenant(0xA), tenant(0xA1)
    flow = build_flow(conn, client, engagement, assets)
    rows = total_rows(conn, client, engagement, flow)
    results = ratios(interleaved(conn, variants(client, engagement, flow, ("unaudited", "delete_flow")), runs))
    return {"assets": assets, "rows": rows, "runs": runs, "results": results}


def run_delete(conn: Conn, assets: int, runs: int, fresh_assets: Sequence[int] = (),
               fresh_runs: int = 5) -> dict[str, Any]:
    """Items 1, 2 and 8: one flow of `assets` assets, every variant; then delete_flow against the cascade on
    fresh copies (`fresh_runs` each) of that flow and of a flow of each size in `fresh_assets`."""
    client, engagement = tenant(0xA), tenant(0xA1)
    flow = build_flow(conn, client, engagement, assets)
    conn.execute(SETUP_ROW_AUDIT)
    rows = total_rows(conn, client, engagement, flow)
    results = ratios(interleaved(conn, variants(client, engagement, flow, (
        "unaudited", "delete_flow", "row_jsonb", "archive_write", "impact", "restore")), runs))
    delete = results["delete_flow"]["median"]
    fresh = []
    for i, size in enumerate(sorted({*fresh_assets, assets})):
        source, source_rows = flow, rows
        if size != assets:
            source = build_flow(conn, client, tenant(0xA10 + i), size)
            source_rows = total_rows(conn, client, tenant(0xA10 + i), source)
        fresh.append({"assets": size, "rows": source_rows,
                      **fresh_copies(conn, client, source, source_rows, fresh_runs)})
    return {"assets": assets, "rows": rows, "runs": runs, "results": results, "fresh": fresh,
            "fresh_runs": fresh_runs, "impact_share_of_delete": results["impact"]["median"] / delete,
            "restore_vs_delete": results["restore"]["median"] / delete,
            "floor": (results["unaudited"]["median"] + results["archive_write"]["median"])
            / results["unaudited"]["median"]}


def markdown_delete(report: dict[str, Any]) -> list[str]:
    lines = [f"### Audited delete of one flow: {report['assets']:,} assets, {report['rows']:,} rows", "",
             f"{report['runs']} runs, interleaved; each in a rolled-back transaction on the same rows.", ""]
    lines += table(["variant", "min s", "median s", "max s", "median / unaudited"],
                   [[n, f"{r['min']:.3f}", f"{r['median']:.3f}", f"{r['max']:.3f}", f"{r['ratio']:.2f}×"]
                    for n, r in report["results"].items()])
    lines += ["",
              f"- `delete_flow` / unaudited cascade: **{report['results']['delete_flow']['ratio']:.2f}×** "
              f"(target ≤ 1.3×). Writing the same rows into the archive alone (the triggers' own statement) "
              f"costs {report['results']['archive_write']['ratio']:.2f}× the cascade: the floor under "
              f"`delete_flow` is {report['floor']:.2f}× here.",
              f"- `deletion_impact`: **{100 * report['impact_share_of_delete']:.1f} %** of `delete_flow` "
              "(target ≤ 5 %).",
              f"- `restore_flow` of that delete: **{report['restore_vs_delete']:.2f}×** `delete_flow`'s time.",
              "", f"Fresh copies of a flow, {report['fresh_runs']} runs of each variant, each delete committed, the "
                  "two side by side in each run, who goes first swapping every run (the paired ratio: the median "
                  "over pairs of runs, one with each going first, of the geometric mean of the two runs' "
                  "`delete_flow` / unaudited):", ""]
    rows = []
    for point in report["fresh"]:
        for n, r in point["results"].items():
            rows.append([f"{point['rows']:,}", n, f"{r['min']:.3f}", f"{r['median']:.3f}", f"{r['max']:.3f}",
                         f"{r['ratio']:.2f}×", "" if n == "unaudited" else f"{point['paired']:.2f}×"])
    lines += table(["rows", "variant", "min s", "median s", "max s", "median / unaudited", "paired"], rows)
    lines += ["", "- `delete_flow` / unaudited cascade on fresh copies: " + "; ".join(
        f"{p['rows']:,} rows **{p['results']['delete_flow']['ratio']:.2f}×** (paired {p['paired']:.2f}×)"
        for p in report["fresh"]) + " (target ≤ 1.2× at 100,000 rows and above)."]
    return lines


def run_growth(conn: Conn, sizes: Sequence[int], runs: int) -> dict[str, Any]:
    """Item 6: delete and impact at each size (assets; about 4 rows per asset), each flow in its own engagement."""
    points = []
    for i, assets in enumerate(sizes):
        client, engagement = tenant(0xB), tenant(0xB0 + i)
        flow = build_flow(conn, client, engagement, assets)
        rows = total_rows(conn, client, engagement, flow)
        results = ratios(interleaved(conn, variants(client, engagement, flow,
                                                    ("unaudited", "delete_flow", "impact")), runs))
        points.append({"assets": assets, "rows": rows, "results": results})
        conn.execute("delete from pyflows.discovery_flows where id = %s", (flow,))  # audited as sql.delete
    return {"runs": runs, "points": points}


def markdown_growth(report: dict[str, Any]) -> list[str]:
    rows = []
    for p in report["points"]:
        r = p["results"]
        rows.append([f"{p['rows']:,}", f"{r['unaudited']['median']:.3f}", f"{r['delete_flow']['median']:.3f}",
                     f"{r['delete_flow']['ratio']:.2f}×", f"{r['impact']['median']:.3f}",
                     f"{1e6 * r['delete_flow']['median'] / p['rows']:.2f}",
                     f"{1e6 * r['impact']['median'] / p['rows']:.3f}"])
    first, last = report["points"][0], report["points"][-1]
    per_row = [1e6 * p["results"]["delete_flow"]["median"] / p["rows"] for p in (first, last)]
    sizes = ", ".join(f"{p['rows']:,}" for p in report["points"])
    return [f"### Growth: delete and impact at {sizes} rows",
            "", f"Medians of {report['runs']} runs per size, interleaved, rolled back.", "",
            *table(["rows", "unaudited s", "delete_flow s", "ratio", "impact s", "delete µs/row", "impact µs/row"],
                   rows),
            "", f"Per-row cost of `delete_flow` from the smallest to the largest flow: {per_row[0]:.2f} → "
                f"{per_row[1]:.2f} µs ({per_row[1] / per_row[0]:.2f}×; 1.00× would be exactly linear)."]
