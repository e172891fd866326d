"""Item 5, counted: the instructions a small flow's delete costs, beside the bare DELETE of the same flow.

Wall-clock medians of a call that takes a millisecond move by 10 % from one run to the next on a
shared machine, more than most changes to the delete path move them. The instructions a backend
executes for the same statements on the same rows do not: two runs of this suite agree to 0.01 %.
So this suite initdbs a cluster of its own (PostgreSQL's binaries from ``pg_config --bindir``, as the
``postgres`` user when run as root), migrates it and builds the small flows of the batches suite
(each 24 rows: one import, 5 raw records, 4 mappings, 5 assets, 8 edges; 1,000 of them, as the
batches suite has: on a few hundred rows PostgreSQL plans sequential scans, and the figures are
another installation's), stops it, and then for
each variant copies the stopped cluster afresh and runs one single-user backend under
``valgrind --tool=callgrind`` through transactions of one flow each, every one rolled back:
``set_context``, then the variant's statement. Each variant runs twice, through ``warm`` flows and
through ``warm + calls``: the difference is what ``calls`` calls cost in a backend that has already
loaded its caches and compiled its functions, as a pooled connection's has.

- ``baseline``: ``select 1`` in place of a delete: what the script costs around the call;
- ``DELETE, unaudited``: the bare ``DELETE`` of the flow row, its cascade, the audit triggers disabled;
- ``DELETE, audited``: the same ``DELETE`` with the triggers (under a ``sql.delete`` event);
- ``delete_flow``: pyflows' audited delete;
- ``delete_flows``: one call of pyflows' batch delete (atomic) for all the flows of the run, in one
  transaction: its difference between the two runs, per flow, is what one more flow costs a batch.

Then one large flow (``large_assets`` assets, about four rows each: ``build_flow``'s shape), on a cluster
of its own, each variant run twice in one backend, rolled back each time; the second run is counted
(the script with two runs less the script with one):

- ``DELETE, unaudited``: the cascade with the audit triggers disabled (the baseline);
- ``DELETE, audited``: the same ``DELETE`` with the triggers (under a ``sql.delete`` event);
- ``delete_flow``: pyflows' audited delete (impact counted first, a ``flow.delete`` event);
- ``archive only``: the archive statement of each table (``pyflows_audit._archive_statement``, the
  triggers' own chunking) over the flow's rows, nothing deleted: what writing the archive costs alone.

Then loading a flow (issue 13's item 3, which the ingest suite times): on a cluster of its own, each table's
rows loaded through the bulk path as an app login under RLS, beside a COPY of the same rows into the
ingest suite's keys-and-foreign-keys copies as the owner, without statistics and analyzed (``run_ingest``):
the server's share of the distance the ingest suite measures, without the client's or the machine's.

Instructions per call = (the variant's difference − the baseline's) / calls. Instructions are not
seconds (a cache miss costs more than an add), but for the same work on the same machine they move
together, and they are the same on a loaded machine as on an idle one. Needs valgrind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo

from pyflows import migrations

from . import batches, ingest
from .common import Conn, build_flow, table, tenant
from .delete import total_rows

VARIANTS = ("baseline", "DELETE, unaudited", "DELETE, audited", "delete_flow", "delete_flows")
AUDITED = ("discovery_flows", "data_imports", "raw_import_records", "import_field_mappings", "assets",
           "asset_dependencies")
# The issue's own figures: delete_flow under 1.5 ms, and a batch under 0.5 ms a flow, where a bare
# DELETE of the flow took 0.4 ms.
TARGET = 1.5 / 0.4
BATCH_TARGET = 0.5 / 0.4
FLOWS = 1_000
Made = TypeVar("Made")
LARGE_VARIANTS = ("DELETE, unaudited", "DELETE, audited", "delete_flow", "archive only")
LARGE_ASSETS = 20_000
# The issue's own target for a large delete: delete_flow at most 1.2x the unaudited cascade.
LARGE_TARGET = 1.2


def bindir() -> Path:
    """PostgreSQL's server binaries: pg_config's, else the newest under /usr/lib/postgresql."""
    found = shutil.which("pg_config")
    if found:
        path = Path(subprocess.run([found, "--bindir"], check=True, capture_output=True, text=True).stdout.strip())
        if (path / "postgres").exists():
            return path
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries (pg_config --bindir, /usr/lib/postgresql/*/bin)")
    return candidates[-1].parent


def _as_server_user(argv: Sequence[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run argv as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(_as_server_user(argv), input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


@contextmanager
def cluster(bin_dir: Path) -> Iterator[Path]:
    """A scratch directory holding a new cluster in base/, owned by the server's user; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="pyflows-instructions-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        _run([str(bin_dir / "initdb"), "-D", str(root / "base"), "-U", "postgres", "-A", "trust", "--no-sync"])
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build(bin_dir: Path, root: Path, flows: int) -> tuple[Any, Any, list[Any]]:
    """Start the cluster on a socket in root, migrate a database, build the small flows, stop it."""
    return _build(bin_dir, root, lambda conn: batches.build(conn, flows))


def _build(bin_dir: Path, root: Path, make: Callable[[Conn], Made]) -> Made:
    """Start the cluster on a socket in root, migrate a database, make what is measured, stop it."""
    options = f"-k {root} -c listen_addresses='' -c port=5432 -c fsync=off -c autovacuum=off"
    _run([str(bin_dir / "pg_ctl"), "-D", str(root / "base"), "-o", options, "-l", str(root / "server.log"),
          "-w", "start"])
    try:
        dsn = make_conninfo(host=str(root), port="5432", user="postgres", dbname="postgres")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create database bench")
        bench_dsn = make_conninfo(host=str(root), port="5432", user="postgres", dbname="bench")
        migrations.migrate(bench_dsn)
        with psycopg.connect(bench_dsn, autocommit=True) as conn:
            made = make(conn)
            conn.execute("checkpoint")
    finally:
        _run([str(bin_dir / "pg_ctl"), "-D", str(root / "base"), "-m", "fast", "-w", "stop"])
    return made


# Each variant's statement on one flow ({f}); delete_flows, which takes a batch, is written apart.
STATEMENTS = {"baseline": "select 1",
              "DELETE, unaudited": "delete from pyflows.discovery_flows where id = '{f}'",
              "DELETE, audited": "delete from pyflows.discovery_flows where id = '{f}'",
              "delete_flow": "select pyflows.delete_flow('{f}', 'bench', true)"}


def _setup(variant: str) -> str:
    """What a variant's script does first: the unaudited one disables the audit triggers."""
    if variant != "DELETE, unaudited":
        return ""
    return "".join(f"alter table pyflows.{t} disable trigger audit_delete;\n" for t in AUDITED)


def _transaction(client: Any, engagement: Any, statement: str) -> str:
    """statement in a rolled-back transaction of the tenant context, one line a statement."""
    return f"begin;\nselect pyflows.set_context('{client}', '{engagement}', 'bench');\n{statement};\nrollback;\n"


def script(variant: str, client: Any, engagement: Any, ids: Sequence[Any]) -> str:
    """One line a statement, as a single-user backend reads them."""
    if variant == "delete_flows":
        batch = ", ".join(f"'{f}'" for f in ids)
        return _transaction(client, engagement,
                            f"select count(*) from pyflows.delete_flows(array[{batch}]::uuid[], 'bench', true)")
    return _setup(variant) + "".join(_transaction(client, engagement, STATEMENTS[variant].format(f=f)) for f in ids)


def large_script(variant: str, client: Any, engagement: Any, flow: Any) -> str:
    """One rolled-back transaction of a variant on the large flow, one line a statement."""
    if variant == "archive only":
        # Each table's archive statement over the flow's rows (the engagement holds this flow only).
        tables = "', '".join(AUDITED)
        statement = (f"do $$ declare t text; s text; begin foreach t in array array['{tables}'] loop "
                     "s := pyflows_audit._archive_statement(t, format('(select * from pyflows.%I where client_id = "
                     f"''{client}'' and engagement_id = ''{engagement}'')', t)); execute s using 0::bigint; "
                     "end loop; end $$")
    else:
        statement = STATEMENTS[variant].format(f=flow)
    return _transaction(client, engagement, statement)


def run_large(assets: int) -> dict[str, Any]:
    """Instructions of one delete of a flow of `assets` assets, each variant beside the unaudited cascade."""
    bin_dir = bindir()
    client, engagement = tenant(0xA), tenant(0xA1)
    with cluster(bin_dir) as root:
        def make(conn: Conn) -> tuple[Any, int]:
            flow = build_flow(conn, client, engagement, assets)
            return flow, total_rows(conn, client, engagement, flow)

        flow, rows = _build(bin_dir, root, make)
        totals = {}
        for variant in LARGE_VARIANTS:
            run = large_script(variant, client, engagement, flow)
            once = _setup(variant) + run
            totals[variant] = count(bin_dir, root, once + run) - count(bin_dir, root, once)
    base = totals["DELETE, unaudited"]
    return {"assets": assets, "rows": rows,
            "results": {v: {"instructions": n, "ratio": n / base} for v, n in totals.items()}}


INGEST_TABLES = ("raw_import_records", "assets", "asset_dependencies")
INGEST_ROLE = "bench_ingest_app"  # the app login of the ingest cluster: pyflows_app, and reads the row files
# The ingest suite's 1,000,000 records and 100,000 assets, a fiftieth: the same per-row work, in minutes.
INGEST_RECORDS = 20_000
INGEST_ASSETS = 2_000
EDGE_BATCH = 10_000  # edges an add_dependencies call takes, as TenantFlows.copy_dependencies sends them


def _copy_file(path: Path, rows: Sequence[Sequence[Any]]) -> None:
    """rows as COPY's text format, readable by the server's user."""
    def text(value: Any) -> str:
        out = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(value)
        if any(c in out for c in "\\\t\n\r"):
            raise ValueError(f"a value COPY's text format would need escaped: {out!r}")
        return out

    path.write_text("".join("\t".join(map(text, row)) + "\n" for row in rows))
    path.chmod(0o644)


def run_ingest(n_records: int, n_assets: int) -> dict[str, Any]:
    """The server's instructions for loading each table of a flow through the bulk path, as the app login under
    RLS, beside a COPY of the same rows into the keys-and-foreign-keys copies (bench/ingest.py's), as the owner;
    on a cluster whose tables have no statistics, then analyzed. The bulk path as pyflows' API runs it: raw
    records and assets by begin_copy_* and a COPY into the partition, edges by add_dependencies calls of
    EDGE_BATCH edges in three arrays (here written out in the statement). Each load in its own rolled-back
    transaction, counted on its second run in a backend."""
    bin_dir = bindir()
    client, engagement = tenant(0x1C), tenant(0x1C01)
    with cluster(bin_dir) as root:
        def make(conn: Conn) -> dict[str, Any]:
            ingest.make_copies(conn)
            conn.execute(f"create role {INGEST_ROLE} in role pyflows_app, pg_read_server_files")
            made: dict[str, Any] = {}
            for schema in ("pyflows", "bench_keys"):
                flow, imported = ingest.new_flow(conn, client, engagement, schema)
                # The assets the edges join: loaded here, in their own flow's table.
                with conn.transaction():
                    conn.execute("select pyflows.set_context(%s, %s, 'bench')", (client, engagement))
                    ids = [r[0] for r in conn.execute(
                        f"insert into {schema}.assets (client_id, engagement_id, flow_id, name, asset_type) "
                        "select %s, %s, %s, 'edge-' || g, 'server' from generate_series(1, %s) g returning id",
                        (client, engagement, flow, n_assets)).fetchall()]
                made[schema] = {"flow": flow, "import": imported, "edges": ingest.edges(sorted(ids))}
            drawn = conn.execute("select nextval(pg_get_serial_sequence('pyflows.assets', 'id'))").fetchone()
            made["next_asset"] = int(drawn[0]) + 1 if drawn else 1  # the first id begin_copy_assets draws
            return made

        made = _build(bin_dir, root, make)
        os.chmod(root, 0o755)
        records, assets = ingest.records(n_records), ingest.assets(n_assets)
        for schema in ("pyflows", "bench_keys"):
            flow, imported = made[schema]["flow"], made[schema]["import"]
            _copy_file(root / f"{schema}.raw_import_records",
                       [(client, engagement, imported, i, r) for i, r in enumerate(records, 1)])
            _copy_file(root / f"{schema}.asset_dependencies", [(client, engagement, flow, *e)
                                                                 for e in made[schema]["edges"]])
            # The bulk path's assets carry the ids begin_copy_assets draws, new ones each run in a backend (the
            # sequence does not roll back), as the keys-only copy's identity draws new ones: a run that COPYs the
            # ids of the run before it would meet that run's aborted index entries, which no real load does.
            for run_ in (1, 2):
                first = made["next_asset"] + (run_ - 1) * n_assets
                ids = range(first, first + n_assets) if schema == "pyflows" else [None] * n_assets
                _copy_file(root / f"{schema}.assets.{run_}",
                           [(client, engagement, *([i] if i else []), flow, a["name"], a["asset_type"],
                             a["hostname"], a["attributes"]) for i, a in zip(ids, assets, strict=True)])

        def load(variant: str, name: str, run_: int) -> str:
            schema = "pyflows" if variant == "bulk" else "bench_keys"
            flow, imported = made[schema]["flow"], made[schema]["import"]
            columns = list(ingest.COLUMNS[name])
            source = root / (f"{schema}.{name}.{run_}" if name == "assets" else f"{schema}.{name}")
            if variant == "keys (copy)":
                return f"copy bench_keys.{name} ({', '.join(columns)}) from '{source}';\n"
            if name == "asset_dependencies":
                edges = made[schema]["edges"]
                return "".join(
                    f"select pyflows.add_dependencies('{flow}', '{{{','.join(str(e[0]) for e in batch)}}}', "
                    f"'{{{','.join(str(e[1]) for e in batch)}}}', '{{{','.join(e[2] for e in batch)}}}');\n"
                    for batch in (edges[i:i + EDGE_BATCH] for i in range(0, len(edges), EDGE_BATCH)))
            if name == "assets":
                columns.insert(2, "id")
                opened = f"select pyflows.begin_copy_assets('{flow}', {n_assets});\n"
            else:
                opened = f"select pyflows.begin_copy_records('{imported}');\n"
            return opened + f"copy pyflows.{name}_default ({', '.join(columns)}) from '{source}';\n"

        def script(variant: str, name: str, analyze: bool, times: int) -> str:
            role = f"set role {INGEST_ROLE};\n" if variant == "bulk" else ""
            return ("analyze;\n" if analyze else "") + "".join(
                f"begin;\n{role}select pyflows.set_context('{client}', '{engagement}', 'bench');\n"
                f"{load(variant, name, run_)}rollback;\n" for run_ in range(1, times + 1))

        # The second of two loads in one backend, each rolled back: counted without what the first paid to
        # compile pyflows' functions and fill the backend's caches, as a pooled connection has done.
        results: dict[str, dict[str, dict[str, int]]] = {}
        for round_, analyze in (("no statistics", False), ("analyzed", True)):
            for variant in ("bulk", "keys (copy)"):
                results.setdefault(round_, {})[variant] = {
                    name: count(bin_dir, root, script(variant, name, analyze, 2))
                    - count(bin_dir, root, script(variant, name, analyze, 1)) for name in INGEST_TABLES}
    rows = {"raw_import_records": n_records, "assets": n_assets, "asset_dependencies": ingest.edge_count(n_assets)}
    return {"rows": rows, "results": results,
            "ratios": {round_: {name: r["bulk"][name] / r["keys (copy)"][name] for name in INGEST_TABLES}
                       for round_, r in results.items()}}


def markdown_ingest(report: dict[str, Any]) -> list[str]:
    rows = report["rows"]
    lines = [f"### Loading a flow, in the server's instructions: {rows['raw_import_records']:,} raw records, "
             f"{rows['assets']:,} assets, {rows['asset_dependencies']:,} edges", "",
             "Each load in a rolled-back transaction of a single-user backend under callgrind, on a fresh copy of "
             "the same stopped cluster, counted on its second run in the backend (the script with two runs less "
             "the script with one): the bulk path as the app login "
             "under RLS (begin_copy_* and a COPY into the partition; edges by add_dependencies, "
             f"{EDGE_BATCH:,} a call) beside a COPY into the keys-and-foreign-keys copies, as the owner. The "
             "server's side alone: what the client spends making the rows is not in it.", ""]
    for round_, results in report["results"].items():
        lines += [f"**{round_}**", "", *table(
            ["table", "bulk (per row)", "keys (copy) (per row)", "bulk / keys (copy)"],
            [[name, f"{results['bulk'][name] / rows[name]:,.0f}", f"{results['keys (copy)'][name] / rows[name]:,.0f}",
              f"{report['ratios'][round_][name]:.2f}×"] for name in INGEST_TABLES]), ""]
    return lines


def count(bin_dir: Path, root: Path, text: str) -> int:
    """Instructions of a single-user backend running text on a fresh copy of the stopped cluster."""
    data, out = root / "run", root / "callgrind.out"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(root / "base", data, symlinks=True)
    if os.geteuid() == 0:
        for path in [data, *data.rglob("*")]:
            shutil.chown(path, "postgres")
    done = _run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 str(bin_dir / "postgres"), "--single", "-D", str(data), "-c", "autovacuum=off", "bench"], stdin=text)
    # A single-user backend reports a failed statement and reads on: a run with one counts nothing.
    failed = re.search(r"\b(?:ERROR|FATAL):  .*$", done.stdout + done.stderr, re.MULTILINE)
    if failed:
        raise RuntimeError(f"a statement failed under valgrind: {failed.group(0)}")
    totals = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no totals in {out}")
    out.unlink()
    return int(totals.group(1))


def run(calls: int, warm: int = 20, flows: int = FLOWS, large_assets: int = LARGE_ASSETS,
        ingest_records: int = INGEST_RECORDS, ingest_assets: int = INGEST_ASSETS) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("the instructions suite needs valgrind (Debian: apt-get install valgrind)")
    bin_dir = bindir()
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], check=True, capture_output=True,
                             text=True).stdout.strip()
    with cluster(bin_dir) as root:
        client, engagement, ids = build(bin_dir, root, max(flows, warm + calls))
        totals = {v: count(bin_dir, root, script(v, client, engagement, ids[:warm + calls]))
                  - count(bin_dir, root, script(v, client, engagement, ids[:warm])) for v in VARIANTS}
    # One transaction for the whole batch: the script's own cost around it does not grow with the flows.
    per_call = {v: (totals[v] - (0 if v == "delete_flows" else totals["baseline"])) / calls
                for v in VARIANTS if v != "baseline"}
    base = per_call["DELETE, unaudited"]
    return {"calls": calls, "warm": warm, "server": version, "totals": totals,
            "results": {v: {"per_call": n, "ratio": n / base} for v, n in per_call.items()},
            "large": run_large(large_assets), "ingest": run_ingest(ingest_records, ingest_assets)}


def markdown(report: dict[str, Any]) -> list[str]:
    results = report["results"]
    return [f"### A small flow's delete, in instructions ({report['calls']} calls each, one flow a call)", "",
            f"Each variant on a fresh copy of the same stopped cluster, one single-user backend under "
            f"callgrind ({report['server']}; initdb's settings, fsync and autovacuum off), every call rolled "
            f"back, after {report['warm']} calls that warm the backend; per flow, less the script's own "
            f"cost. The settings below are the benchmark server's, not this cluster's.", "",
            *table(["variant", "instructions per flow", "/ DELETE, unaudited"],
                   [[v, f"{r['per_call'] / 1e6:.2f} M", f"{r['ratio']:.2f}×"] for v, r in results.items()]),
            "", f"- `delete_flow` / bare unaudited `DELETE`: **{results['delete_flow']['ratio']:.2f}×** "
                f"(the issue's 1.5 ms against a 0.4 ms bare `DELETE` is {TARGET:.2f}×).",
            f"- `delete_flows`, each flow of a batch / bare unaudited `DELETE` of one flow: "
            f"**{results['delete_flows']['ratio']:.2f}×** (the issue's 0.5 ms a flow against 0.4 ms is "
            f"{BATCH_TARGET:.2f}×).", "", *markdown_large(report["large"]), "", *markdown_ingest(report["ingest"])]


def markdown_large(large: dict[str, Any]) -> list[str]:
    results = large["results"]
    return [f"### A large flow's delete, in instructions: {large['assets']:,} assets, {large['rows']:,} rows", "",
            "One delete of the flow in each variant, counted on its second run in the backend (rolled back "
            "both times), on a cluster of its own built the same way.", "",
            *table(["variant", "instructions", "/ DELETE, unaudited"],
                   [[v, f"{r['instructions'] / 1e6:,.0f} M", f"{r['ratio']:.2f}×"] for v, r in results.items()]),
            "", f"- `delete_flow` / unaudited cascade: **{results['delete_flow']['ratio']:.2f}×** (target "
                f"{LARGE_TARGET}×); writing the archive alone: {results['archive only']['ratio']:.2f}×."]
