"""Benchmarks of pyflows' delete path, measured side by side in one run on the same rows.

    python -m bench.run --dsn 'host=127.0.0.1 user=postgres dbname=postgres' --assets 100000 --runs 5 --record

Creates a scratch database on the server, migrates it, builds one flow of the requested shape
(assets, two dependency edges per asset, as many raw records as assets), and times, each inside a
transaction that is rolled back so every variant deletes the very same rows:

- ``delete_flow``: pyflows' audited delete (archive copies, counts, file outbox);
- ``unaudited``: the same cascade with every user trigger disabled (the baseline);
- ``row_jsonb``: the usual audit-trigger design, a row-level AFTER DELETE trigger writing
  ``to_jsonb(old)`` per row (built here only, with pyflows' own triggers disabled);
- ``impact``: ``deletion_impact`` on the flow.

Absolute seconds on a shared machine mean little; the ratios against the baseline measured in the
same run are the result. ``--record`` writes them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyflows import migrations

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("discovery_flows", "data_imports", "raw_import_records", "import_field_mappings", "assets",
          "asset_dependencies")
CLIENT = uuid.UUID("be0c0000-0000-4000-8000-00000000000a")
ENGAGEMENT = uuid.UUID("be0c0000-0000-4000-8000-0000000000a1")

SETUP_ROW_AUDIT = """
create table if not exists public.bench_row_audit (id bigserial primary key, table_name text, row_data jsonb,
                                                   at timestamptz default now());
create or replace function public.bench_row_audit() returns trigger language plpgsql as $$
begin
    insert into public.bench_row_audit (table_name, row_data) values (tg_table_name, to_jsonb(old));
    return old;
end $$;
"""


@dataclass
class Result:
    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@contextmanager
def scratch_database(dsn: str) -> Iterator[str]:
    """A new database on the server named by dsn, dropped afterwards."""
    name = f"pyflows_bench_{os.getpid()}"
    params = conninfo_to_dict(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(**{**{k: str(v) for k, v in params.items() if v is not None}, "dbname": name})
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def build_flow(conn: psycopg.Connection[Any], assets: int) -> uuid.UUID:
    """One paused flow: one import with `assets` raw records and 4 mappings, `assets` assets, 2 edges each."""
    ids = {"c": CLIENT, "e": ENGAGEMENT, "n": assets}
    with conn.transaction():
        conn.execute("select set_config('pyflows.client_id', %(c)s::text, true), "
                     "set_config('pyflows.engagement_id', %(e)s::text, true)", ids)
        conn.execute("insert into pyflows.clients (id, name) values (%(c)s, 'bench')", ids)
        conn.execute("insert into pyflows.engagements (client_id, id, name) values (%(c)s, %(e)s, 'bench')", ids)
        flow = conn.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                            "values (%(c)s, %(e)s, 'bench', 'paused') returning id", ids).fetchone()[0]
        ids["f"] = flow
        imp = conn.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, "
                           "storage_uri, byte_size) values (%(c)s, %(e)s, %(f)s, 'b.csv', 'file:///tmp/b.csv', 1) "
                           "returning id", ids).fetchone()[0]
        ids["i"] = imp
        conn.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
                     "select %(c)s, %(e)s, %(i)s, g, jsonb_build_object('Host', 'h' || g, 'IP', '10.0.0.1') "
                     "from generate_series(1, %(n)s) g", ids)
        conn.execute("insert into pyflows.import_field_mappings (client_id, engagement_id, import_id, source_field) "
                     "select %(c)s, %(e)s, %(i)s, f from unnest(array['Host','IP','OS','Role']) f", ids)
        conn.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                     "select %(c)s, %(e)s, %(f)s, 'h' || g, 'server' from generate_series(1, %(n)s) g", ids)
    conn.execute("analyze pyflows.assets")  # the edge inserts' FK checks need it (see docs/benchmarks.md)
    with conn.transaction():
        conn.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                     "target_asset_id, dependency_type) "
                     "select %(c)s, %(e)s, %(f)s, a.id, b.id, t from pyflows.assets a "
                     "join pyflows.assets b on b.client_id = a.client_id and b.engagement_id = a.engagement_id "
                     "and b.id = a.id + 1, (values ('network'), ('database')) v(t) where a.flow_id = %(f)s", ids)
    conn.execute("vacuum analyze")
    return uuid.UUID(str(flow))


def timed(conn: psycopg.Connection[Any], statements: Callable[[psycopg.Connection[Any]], None]) -> float:
    """Seconds for `statements` inside a transaction that is then rolled back; vacuum afterwards."""
    with conn.transaction(force_rollback=True):
        started = time.perf_counter()
        statements(conn)
        elapsed = time.perf_counter() - started
    conn.execute("vacuum")
    return elapsed


def disable_triggers(conn: psycopg.Connection[Any]) -> None:
    for table in TABLES:
        conn.execute(sql.SQL("alter table {} disable trigger user").format(sql.Identifier("pyflows", table)))


def set_context(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select pyflows.set_context(%s, %s, 'bench')", (CLIENT, ENGAGEMENT))


def run(dsn: str, assets: int, runs: int) -> dict[str, Any]:
    with scratch_database(dsn) as bench_dsn:
        migrations.migrate(bench_dsn)
        with psycopg.connect(bench_dsn, autocommit=True) as conn:
            flow = build_flow(conn, assets)
            conn.execute(SETUP_ROW_AUDIT)
            version = conn.execute("select version()").fetchone()[0]
            with conn.transaction():
                set_context(conn)
                rows = int(conn.execute("select (pyflows.deletion_impact(%s)) ->> 'total_rows'", (flow,)).fetchone()[0])

            def audited(c: psycopg.Connection[Any]) -> None:
                set_context(c)
                c.execute("select pyflows.delete_flow(%s, 'bench')", (flow,))

            def unaudited(c: psycopg.Connection[Any]) -> None:
                disable_triggers(c)
                c.execute("delete from pyflows.discovery_flows where id = %s", (flow,))

            def row_jsonb(c: psycopg.Connection[Any]) -> None:
                disable_triggers(c)
                for table in TABLES:
                    c.execute(sql.SQL("create trigger bench_row_audit after delete on {} for each row "
                                      "execute function public.bench_row_audit()").format(
                        sql.Identifier("pyflows", table)))
                c.execute("delete from pyflows.discovery_flows where id = %s", (flow,))

            def impact(c: psycopg.Connection[Any]) -> None:
                set_context(c)
                c.execute("select pyflows.deletion_impact(%s)", (flow,))

            variants = {"unaudited": unaudited, "delete_flow": audited, "row_jsonb": row_jsonb, "impact": impact}
            results = {name: Result(name, []) for name in variants}
            for _ in range(runs):  # interleaved, so drift on a shared machine hits every variant alike
                for name, statements in variants.items():
                    results[name].seconds.append(timed(conn, statements))
    base = results["unaudited"].median
    return {
        "assets": assets, "rows": rows, "runs": runs, "postgres": version, "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "results": {n: {"min": min(r.seconds), "median": r.median, "max": max(r.seconds),
                        "ratio": r.median / base} for n, r in results.items()},
        "impact_share_of_delete": results["impact"].median / results["delete_flow"].median,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"### Audited delete of one flow: {report['assets']:,} assets, {report['rows']:,} rows",
        "",
        f"{report['postgres'].split(',')[0]}; {report['machine']}; {report['cpus']} CPUs; "
        f"{report['runs']} runs, interleaved; each in a rolled-back transaction on the same rows.",
        "",
        "| variant | min s | median s | max s | median / unaudited |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['min']:.3f} | {r['median']:.3f} | {r['max']:.3f} | {r['ratio']:.2f}× |")
    lines += ["", f"`deletion_impact` took {100 * report['impact_share_of_delete']:.1f} % of `delete_flow`'s time."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("PYFLOWS_BENCH_DSN", "host=127.0.0.1 user=postgres "
                                                                               "dbname=postgres"))
    parser.add_argument("--assets", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="Write the result into docs/benchmarks.md.")
    args = parser.parse_args(argv)
    report = run(args.dsn, args.assets, args.runs)
    text = markdown(report)
    print(text)
    if args.record:
        target = ROOT / "docs" / "benchmarks.md"
        page = target.read_text()
        start, end = "<!-- bench:delete:start -->", "<!-- bench:delete:end -->"
        head, rest = page.split(start)
        _, tail = rest.split(end)
        target.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
