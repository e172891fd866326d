"""Benchmarks of pyflows, each measured side by side with its baseline in one run, on the same rows.

    python -m bench.run --dsn 'host=127.0.0.1 user=postgres dbname=postgres' --record

Creates a scratch database on the server, migrates it, and runs the suites (all, or those named
with --suite): ``delete`` (audited delete, impact, restore vs the unaudited cascade), ``growth``
(delete and impact at growing flow sizes), ``gate`` (flow_gate, start_flow and listings on a large
installation), ``concurrency`` (many clients starting and finishing flows), ``purge`` (batched purge
vs cascade), ``batches`` (many small flows in one call), ``memory`` (the CLI's peak memory) and
``ingest`` (loading a flow through the bulk path and INSERTs, against copies with only keys) and
``race`` (concurrent uploads against the gate, and against the application-level check it replaced)
and ``peers`` (an ORM's cascade, hand-written DELETEs and the unaudited cascade beside delete_flow)
and ``http`` (``pyflows serve`` beside the SQL calls it wraps, and a /metrics scrape) and ``scale``
(gate and concurrency on one node and on a local 3-node Citus cluster, side by side; needs --citus
or PYFLOWS_CITUS_DIR, the folder with Citus' install.sh and cluster.sh) and ``instructions`` (a
small flow's delete_flow beside the bare DELETE, and a large flow's beside the unaudited cascade,
counted in instructions under valgrind on clusters of their own; needs valgrind and PostgreSQL's
server binaries).

Absolute seconds on a shared machine mean little; the ratios against the baseline measured in the
same run are the result. ``--record`` writes each suite's table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from . import batches, concurrency, delete, gate, http_layer, ingest, instructions, memory, peers, purge, race, scale
from .common import Conn, app_dsn, describe, environment, scratch_database

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SUITES = ("delete", "growth", "gate", "concurrency", "purge", "batches", "memory", "ingest", "race", "peers", "http",
          "scale", "instructions")
# Suites a plain run leaves out: each needs something beyond one PostgreSQL server (a Citus cluster;
# valgrind and PostgreSQL's own binaries).
OPT_IN = ("scale", "instructions")


def _sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=os.environ.get("PYFLOWS_BENCH_DSN", "host=127.0.0.1 user=postgres dbname=postgres"),
                   help="A superuser's connection to the server (a scratch database is created there).")
    p.add_argument("--suite", action="append", choices=SUITES, help="Run only this suite (repeatable).")
    p.add_argument("--runs", type=int, default=5, help="Repetitions of each timed variant.")
    p.add_argument("--assets", type=int, default=100_000, help="delete: assets of the flow (about 4 rows each).")
    p.add_argument("--fresh-assets", type=_sizes, default=[25_000],
                   help="delete: assets of further flows deleted as fresh copies too, comma-separated.")
    p.add_argument("--fresh-runs", type=int, default=10,
                   help="delete: fresh copies deleted by each variant, each size (even: runs are paired).")
    p.add_argument("--growth", type=_sizes, default=[2_500, 25_000, 250_000],
                   help="growth: assets per flow, comma-separated.")
    p.add_argument("--engagements", type=int, default=10_000, help="gate: engagements.")
    p.add_argument("--flows", type=int, default=1_000_000, help="gate: completed flows in all.")
    p.add_argument("--list-calls", type=int, default=1_000, help="gate: listing calls of each kind.")
    p.add_argument("--clients", type=int, default=32, help="concurrency: concurrent clients.")
    p.add_argument("--contexts", type=int, default=1_000, help="concurrency: client/engagement contexts.")
    p.add_argument("--seconds", type=float, default=30.0, help="concurrency: how long.")
    p.add_argument("--purge-assets", type=int, default=250_000, help="purge: assets of the flow (about 4 rows each).")
    p.add_argument("--batch-rows", type=int, default=10_000, help="purge: rows per committed batch.")
    p.add_argument("--batch-flows", type=int, default=1_000, help="batches: small flows deleted in one call.")
    p.add_argument("--ids", type=_sizes, default=[1_000, 10_000, 100_000], help="memory: id counts, comma-separated.")
    p.add_argument("--records", type=int, default=1_000_000, help="ingest: raw records of the flow.")
    p.add_argument("--ingest-assets", type=int, default=100_000, help="ingest: assets (2 edges each).")
    p.add_argument("--ingest-runs", type=int, default=2,
                   help="ingest: runs of each variant in each round (even: runs are compared two by two, one with "
                        "each of a pair of loads going first).")
    p.add_argument("--race-clients", type=int, default=16, help="race: concurrent uploaders.")
    p.add_argument("--race-seconds", type=float, default=5.0, help="race: how long they upload.")
    p.add_argument("--peer-assets", type=int, default=62_500, help="peers: assets of the flow (about 4 rows each).")
    p.add_argument("--peer-runs", type=int, default=1, help="peers: runs of each variant.")
    p.add_argument("--http-calls", type=int, default=400,
                   help="http: calls per variant by one client (each of --clients makes a quarter as many).")
    p.add_argument("--instruction-calls", type=int, default=120,
                   help="instructions: calls of each variant under valgrind (one small flow each).")
    p.add_argument("--instruction-assets", type=int, default=instructions.LARGE_ASSETS,
                   help="instructions: assets of the large flow (about 4 rows each).")
    p.add_argument("--instruction-records", type=int, default=instructions.INGEST_RECORDS,
                   help="instructions: raw records loaded (bulk path beside the keys-only COPY).")
    p.add_argument("--instruction-ingest-assets", type=int, default=instructions.INGEST_ASSETS,
                   help="instructions: assets loaded (2 edges each).")
    p.add_argument("--citus", default=os.environ.get("PYFLOWS_CITUS_DIR", str(ROOT.parent / "shared" / "citus")),
                   help="scale: the folder with Citus' install.sh and cluster.sh (a local 3-node cluster).")
    p.add_argument("--record", action="store_true", help="Write the results into docs/benchmarks.md.")
    return p


def suites(args: argparse.Namespace, bench_dsn: str) -> dict[str, tuple[Callable[[Conn], dict[str, Any]],
                                                                            Callable[[dict[str, Any]], list[str]]]]:
    def with_app(fn: Callable[[Conn, Conn], dict[str, Any]]) -> Callable[[Conn], dict[str, Any]]:
        def run(conn: Conn) -> dict[str, Any]:
            with psycopg.connect(app_dsn(bench_dsn)) as app_conn:
                return fn(conn, app_conn)
        return run

    return {
        "delete": (lambda c: delete.run_delete(c, args.assets, args.runs, args.fresh_assets, args.fresh_runs),
                   delete.markdown_delete),
        "growth": (lambda c: delete.run_growth(c, args.growth, args.runs), delete.markdown_growth),
        "gate": (with_app(lambda c, a: gate.run(c, a, args.engagements, args.flows, args.list_calls)),
                 gate.markdown),
        "concurrency": (lambda c: concurrency.run(c, app_dsn(bench_dsn), args.clients, args.contexts, args.seconds),
                        concurrency.markdown),
        "purge": (lambda c: purge.run(c, bench_dsn, args.purge_assets, args.batch_rows, args.runs), purge.markdown),
        "batches": (lambda c: batches.run(c, args.batch_flows, args.runs), batches.markdown),
        "memory": (lambda c: memory.run(c, bench_dsn, args.ids), memory.markdown),
        "ingest": (lambda c: ingest.run(args.dsn, args.records, args.ingest_assets, args.ingest_runs),
                   ingest.markdown),
        "race": (lambda c: race.run(c, bench_dsn, args.race_clients, args.race_seconds), race.markdown),
        "peers": (lambda c: peers.run(c, bench_dsn, args.peer_assets, args.peer_runs), peers.markdown),
        "http": (lambda c: http_layer.run(c, bench_dsn, app_dsn(bench_dsn), args.engagements, args.flows,
                                          args.clients, args.http_calls), http_layer.markdown),
        "scale": (lambda c: scale.run(args.dsn, args.citus, args.engagements, args.flows, args.list_calls,
                                      args.clients, args.contexts, args.seconds, args.assets, args.runs),
                  scale.markdown),
        "instructions": (lambda c: instructions.run(args.instruction_calls, large_assets=args.instruction_assets,
                                                    ingest_records=args.instruction_records,
                                                    ingest_assets=args.instruction_ingest_assets),
                         instructions.markdown),
    }


def record(name: str, text: str, target: Path = DOCS) -> None:
    """Replace the text between this suite's markers in docs/benchmarks.md."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    page = target.read_text()
    if start not in page or end not in page:
        raise SystemExit(f"{target} has no {start} ... {end} section for suite {name!r}")
    head, rest = page.split(start)
    _, tail = rest.split(end)
    target.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    chosen = args.suite or [name for name in SUITES if name not in OPT_IN]
    reports: dict[str, Any] = {}
    with scratch_database(args.dsn) as bench_dsn:
        runners = suites(args, bench_dsn)
        for name in chosen:
            fn, render = runners[name]
            with psycopg.connect(bench_dsn, autocommit=True) as conn:
                env = environment(conn)
                started = time.perf_counter()
                report = fn(conn)
            report["environment"] = env
            report["wall_seconds"] = time.perf_counter() - started
            reports[name] = report
            text = "\n".join([*render(report), "", f"Measured on: {describe(env)} "
                              f"Suite wall time {report['wall_seconds']:.0f} s."])
            print(text, end="\n\n", flush=True)
            if args.record:
                record(name, text)
    return reports


if __name__ == "__main__":
    main(sys.argv[1:])
