"""Loading a flow: raw records, assets and dependency edges, as an application login under RLS.

Each table's rows are loaded five ways, each into a flow (and import) of its own:

- ``bulk``: the bulk path (``TenantFlows.copy_records``/``copy_assets``/``copy_dependencies``), as the app
  login: records and assets by COPY into the partitions that take it (migrations 0021, 0022; a
  ``begin_copy_*`` call and a COPY a batch of ``COPY_ROWS``, 100,000), edges in batches of 10,000, each as three
  arrays in binary, one ``add_dependencies`` call each, pipelined, inserted under RLS;
- ``insert``: plain multi-row INSERTs of 1,000 rows a statement, as the app login;
- ``keys (copy)`` and ``keys (insert)``: the same rows by COPY and by the same INSERTs into copies of
  the tables that keep only their keys, indexes and foreign keys (what a team would keep anyway: no
  RLS, no triggers, no checks), as the owner;
- ``plain copy``: COPY into copies with no index or key at all: the floor.

Every round runs twice: on a database migrated for the suite whose tables have no statistics
(autovacuum off: a new install, or rows loaded inside one transaction), then after ANALYZE.

A run loads the raw records of all five variants, then their assets, then their edges, each load right
after the one it is compared with (bulk beside keys (copy), insert beside keys (insert)), and which of
a pair goes first swaps from one run to the next. On a shared machine the same load's time drifts by
15-25 % over the minutes of a run; so each run's ratio is taken between two loads made side by side,
and the result is the median, over pairs of consecutive runs (one with each of a pair going first), of
the geometric mean of the two runs' ratios (``crossover``: going second costs a load 5-20 % here, whichever
it is), and the medians of the times. Each run starts with the
loaded tables empty, pyflows' and the copies' alike (TRUNCATE: a run leaves more rows in pyflows' tables
than in the copies, its reload's and the dead rows of its delete, and a load into a table holding more
rows, or into the space a delete freed, costs more), on a VACUUMed database (without ANALYZE, so that the
first round keeps no statistics; the analyzed round keeps the statistics of the last run before it), and
each timed load after a CHECKPOINT, which writes out what the loads before it left dirty, so that no
load pays for another's pages.

Side by side with loading, restoring: at the end of a run the flow the bulk path loaded is deleted
(``delete_flow``, not timed) and put back by ``restore_flow`` (as the app login), right beside a load of
the same rows (records, assets, edges, one after the other) into a new flow through the bulk path; which
of the two goes first swaps every run, each starts after a CHECKPOINT, and the restore must give back
every row. The restore's figure is the ratio of the two, paired as above; beside it, the WAL each of the two
wrote (``pg_current_wal_lsn()`` before and after, in MB) and the ratio of that, paired the same way.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pyflows.api import Flows

from .common import Conn, app_dsn, crossover, ensure_tenant, in_turn, scratch_database, table, tenant

VARIANTS = ("bulk", "insert", "keys (copy)", "keys (insert)", "plain copy")
SCHEMA = {"bulk": "pyflows", "insert": "pyflows", "keys (copy)": "bench_keys", "keys (insert)": "bench_keys",
          "plain copy": "bench_plain"}  # where each variant loads
BASE = {"bulk": "keys (copy)", "keys (copy)": "keys (copy)", "plain copy": "keys (copy)", "insert": "keys (insert)",
        "keys (insert)": "keys (insert)"}  # what each variant is compared with
NAMES = ("raw_import_records", "assets", "asset_dependencies")
COPIED = ("discovery_flows", "data_imports", "raw_import_records", "assets", "asset_dependencies")
COLUMNS = {
    "raw_import_records": ("client_id", "engagement_id", "import_id", "row_number", "data"),
    "assets": ("client_id", "engagement_id", "flow_id", "name", "asset_type", "hostname", "attributes"),
    "asset_dependencies": ("client_id", "engagement_id", "flow_id", "source_asset_id", "target_asset_id",
                           "dependency_type"),
}
CHUNK = 1000


def make_copies(conn: Conn) -> None:
    """bench_keys.<table>: the columns, keys, indexes and foreign keys of pyflows.<table>; bench_plain.<table>:
    the columns alone."""
    with conn.transaction():
        conn.execute("create schema bench_keys")
        conn.execute("create schema bench_plain")
        for name in COPIED:
            conn.execute(sql.SQL("create table bench_keys.{0} (like pyflows.{0} including defaults including identity "
                                 "including indexes)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("create table bench_plain.{0} (like pyflows.{0} including defaults "
                                 "including identity)").format(sql.Identifier(name)))
        for name, definition in conn.execute(
                "select c.conrelid::regclass::text, pg_get_constraintdef(c.oid) from pg_constraint c "
                "where c.contype = 'f' and c.connamespace = 'pyflows'::regnamespace "
                "and c.conrelid::regclass::text = any(%s) and c.confrelid::regclass::text = any(%s)",
                ([f"pyflows.{t}" for t in COPIED], [f"pyflows.{t}" for t in COPIED])).fetchall():
            conn.execute(sql.SQL("alter table {} add {}").format(
                sql.SQL(name.replace("pyflows.", "bench_keys.")),
                sql.SQL(definition.replace("REFERENCES pyflows.", "REFERENCES bench_keys."))))


def records(n: int) -> list[dict[str, Any]]:
    return [{"Host": f"host-{i}", "IP": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", "OS": "Linux",
             "Role": "app"} for i in range(1, n + 1)]


def assets(n: int) -> list[dict[str, Any]]:
    return [{"name": f"host-{i}", "asset_type": "server", "hostname": f"host-{i}.example",
             "attributes": {"rack": i % 40}} for i in range(1, n + 1)]


def edges(ids: Sequence[int]) -> list[tuple[int, int, str]]:
    """Two edges from each asset, to the next two: 2·n − 3 edges for n assets."""
    return [(ids[i], ids[j], "network") for i in range(len(ids)) for j in (i + 1, i + 2) if j < len(ids)]


def edge_count(n: int) -> int:
    """How many edges ``edges`` makes for n assets."""
    return max(0, 2 * n - 3)


def new_flow(conn: Conn, client: uuid.UUID, engagement: uuid.UUID, schema: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A flow and its import in schema (pyflows or one of the copies), written by the owner."""
    with conn.transaction():
        ensure_tenant(conn, client, engagement)
        flow = conn.execute(sql.SQL("insert into {}.discovery_flows (client_id, engagement_id, name, "
                                    "progress_percentage) values (%s, %s, 'ingest', 0) returning id")
                            .format(sql.Identifier(schema)),
                            (client, engagement)).fetchone()[0]
        imported = conn.execute(sql.SQL("insert into {}.data_imports (client_id, engagement_id, flow_id, filename, "
                                        "storage_uri, byte_size) values (%s, %s, %s, 'a.csv', 'file:///u/a.csv', 1) "
                                        "returning id").format(sql.Identifier(schema)),
                                (client, engagement, flow)).fetchone()[0]
    return flow, imported


def copy_rows(conn: Conn, schema: str, name: str, rows: Iterable[Sequence[Any]]) -> None:
    with conn.transaction(), conn.cursor().copy(sql.SQL("copy {}.{} ({}) from stdin").format(
            sql.Identifier(schema), sql.Identifier(name),
            sql.SQL(", ").join(map(sql.Identifier, COLUMNS[name])))) as copy:
        for row in rows:
            copy.write_row(row)


def insert_rows(conn: Conn, schema: str, name: str, rows: Sequence[Sequence[Any]], setup: str | None = None,
                setup_params: Sequence[Any] = ()) -> None:
    """Multi-row INSERTs of CHUNK rows each, in one transaction."""
    columns = COLUMNS[name]
    with conn.transaction():
        if setup:
            conn.execute(setup, setup_params)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            statement = sql.SQL("insert into {}.{} ({}) values {}").format(
                sql.Identifier(schema), sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(columns)))
                                   for _ in chunk))
            conn.execute(statement, [v for row in chunk for v in row])


def timed(owner: Conn, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Seconds fn(*args) took, and its value; started after a CHECKPOINT, so that it pays for no other load's
    pages."""
    owner.execute("checkpoint")
    started = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - started, value


@dataclass
class Target:
    """One variant's flow and import in a run, and how that variant loads a table into them."""

    variant: str
    client: uuid.UUID
    engagement: uuid.UUID
    flow: uuid.UUID
    imported: uuid.UUID

    @property
    def schema(self) -> str:
        return SCHEMA[self.variant]

    def load(self, owner: Conn, app: Conn, name: str, rows: list[Any]) -> Any:
        """Load rows (records' data, assets' dicts or edges' (source, target, type)) into table name; the
        bulk path answers what its call answers (the assets' ids), the others nothing."""
        if self.variant == "bulk":
            flows = Flows(app).tenant(self.client, self.engagement, "ingest")
            return {"raw_import_records": lambda: flows.copy_records(self.imported, rows),
                    "assets": lambda: flows.copy_assets(self.flow, rows),
                    "asset_dependencies": lambda: flows.copy_dependencies(self.flow, rows)}[name]()
        c, e = self.client, self.engagement
        # The rows are made as they are sent, as the bulk path makes its staged rows.
        made: Iterable[Sequence[Any]] = {
            "raw_import_records": lambda: ((c, e, self.imported, i, Jsonb(r)) for i, r in enumerate(rows, 1)),
            "assets": lambda: ((c, e, self.flow, a["name"], a["asset_type"], a["hostname"], Jsonb(a["attributes"]))
                               for a in rows),
            "asset_dependencies": lambda: ((c, e, self.flow, s, t, kind) for s, t, kind in rows)}[name]()
        if self.variant == "insert":
            insert_rows(app, self.schema, name, list(made), "select pyflows.set_context(%s, %s, 'ingest')", (c, e))
        elif self.variant == "keys (insert)":
            insert_rows(owner, self.schema, name, list(made))
        else:
            copy_rows(owner, self.schema, name, made)
        return None

    def asset_ids(self, owner: Conn) -> list[int]:
        with owner.transaction():
            owner.execute("select set_config('pyflows.client_id', %s, true), "
                          "set_config('pyflows.engagement_id', %s, true)", (str(self.client), str(self.engagement)))
            return [r[0] for r in owner.execute(sql.SQL("select id from {}.assets where flow_id = %s order by id")
                                                .format(sql.Identifier(self.schema)), (self.flow,)).fetchall()]


def restore_beside_load(owner: Conn, app: Conn, bulk: Target, given: dict[str, Any], run_: int) -> dict[str, float]:
    """Delete the bulk path's flow, then time restoring it beside loading the same rows into a new flow through
    the bulk path (who goes first swaps every run), and count the WAL each writes; every loaded row must come
    back."""
    flows = Flows(app).tenant(bulk.client, bulk.engagement, "ingest")
    loaded = {"raw_import_records": len(given["raw_import_records"]), "assets": len(given["assets"]),
              "asset_dependencies": edge_count(len(given["assets"]))}
    event = flows.delete(bulk.flow, "bench: restore beside loading", force=True).event_id
    engagement = uuid.UUID(int=bulk.engagement.int + 0x100000)  # a new engagement of the same client
    again = Target("bulk", bulk.client, engagement, *new_flow(owner, bulk.client, engagement, SCHEMA["bulk"]))

    def load() -> None:
        again.load(owner, app, "raw_import_records", given["raw_import_records"])
        again.load(owner, app, "asset_dependencies", edges(again.load(owner, app, "assets", given["assets"])))

    def restore() -> None:
        restored = flows.restore(event).restored
        if {t: restored.get(t) for t in loaded} != loaded:
            raise AssertionError(f"restore gave back {restored}, the bulk path loaded {loaded}")

    def walled(fn: Callable[[], None]) -> Callable[[], float]:
        """fn, answering the MB of WAL it wrote."""
        def run() -> float:
            start = owner.execute("select pg_current_wal_lsn()").fetchone()[0]
            fn()
            return float(owner.execute("select (pg_current_wal_lsn() - %s::pg_lsn) / 1048576", (start,)).fetchone()[0])
        return run

    out: dict[str, float] = {}
    for name, fn in in_turn((("restore", restore), ("reload", load)), run_):
        out[name], out[f"{name} WAL MB"] = timed(owner, walled(fn))
    return out


def run_once(owner: Conn, app: Conn, targets: list[Target], n_records: int, n_assets: int,
             run_: int) -> dict[str, dict[str, float]]:
    """One run: each table loaded by every target in turn (in the order of targets), then the bulk path's
    flow restored beside a second bulk load of the same rows. Seconds per variant and table (and the bulk
    path's restore and reload)."""
    out: dict[str, dict[str, float]] = {t.variant: {} for t in targets}
    given: dict[str, Any] = {"raw_import_records": records(n_records), "assets": assets(n_assets)}
    graphs: dict[str, list[tuple[int, int, str]]] = {}
    for name in NAMES:
        for t in targets:
            rows = graphs[t.variant] if name == "asset_dependencies" else given[name]
            out[t.variant][name], answer = timed(owner, t.load, owner, app, name, rows)
            if name == "assets":
                graphs[t.variant] = edges(answer if t.variant == "bulk" else t.asset_ids(owner))
    out["bulk"].update(restore_beside_load(owner, app, next(t for t in targets if t.variant == "bulk"), given, run_))
    return out


def empty_tables(owner: Conn) -> None:
    """Empty the loaded tables, pyflows' and the copies', so that a run's loads go into tables holding the same
    rows on both sides of each comparison. (As the owner, with the triggers of pyflows' guard against TRUNCATE
    off for the transaction: a superuser's session_replication_role.)"""
    with owner.transaction():
        owner.execute("set local session_replication_role = replica")
        owner.execute(sql.SQL("truncate {}").format(sql.SQL(", ").join(
            sql.Identifier(schema, name) for schema in sorted(set(SCHEMA.values())) for name in NAMES)))


def run(dsn: str, n_records: int, n_assets: int, runs: int) -> dict[str, Any]:
    """dsn: a superuser's connection to the server; the suite migrates a database of its own."""
    results: dict[str, list[dict[str, dict[str, float]]]] = {}
    with scratch_database(dsn, suffix="ingest") as ingest_dsn, psycopg.connect(ingest_dsn, autocommit=True) as owner, \
            psycopg.connect(app_dsn(ingest_dsn), autocommit=True) as app:
        make_copies(owner)
        tables = [r[0] for r in owner.execute(
            "select c.oid::regclass::text from pg_class c where c.relkind = 'r' and c.relnamespace in "
            "('pyflows'::regnamespace, 'bench_keys'::regnamespace, 'bench_plain'::regnamespace)").fetchall()]
        for name in tables:
            owner.execute(sql.SQL("alter table {} set (autovacuum_enabled = off)").format(sql.SQL(name)))
        n = 0
        for round_ in ("no statistics", "analyzed"):
            if round_ == "analyzed":
                owner.execute("analyze")
            for run_ in range(runs):
                empty_tables(owner)
                owner.execute("vacuum")
                if round_ == "no statistics" and owner.execute(
                        "select count(*) from pg_stats where schemaname like any (array['pyflows', 'bench_%'])"
                ).fetchone()[0]:
                    raise AssertionError("the ingest database has statistics in its first round")
                targets = []
                for variant in order(run_):
                    n += 1
                    client, engagement = tenant(0x1A), tenant(0x1A00 + n)
                    targets.append(Target(variant, client, engagement,
                                          *new_flow(owner, client, engagement, SCHEMA[variant])))
                results.setdefault(round_, []).append(run_once(owner, app, targets, n_records, n_assets, run_))
    return {"records": n_records, "assets": n_assets, "edges": edge_count(n_assets), "runs": runs,
            "medians": {round_: {v: {t: statistics.median(r[v][t] for r in rs) for t in rs[0][v]} for v in VARIANTS}
                        for round_, rs in results.items()},
            "paired": {round_: {v: {t: statistics.median(crossover([ratios(r, v)[t] for r in rs])) for t in rs[0][v]}
                                for v in VARIANTS}
                       for round_, rs in results.items()}}


def ratios(run_: dict[str, dict[str, float]], variant: str) -> dict[str, float]:
    """One run's ratios for a variant: each table's time against its base's (BASE) for the same table, loaded
    beside it; the bulk path's restore against the bulk load of the same rows beside it (and that load
    against itself)."""
    out = {t: run_[variant][t] / run_[BASE[variant]][t] for t in NAMES}
    if "restore" in run_[variant]:
        for measure in ("", " WAL MB"):
            out[f"restore{measure}"] = run_[variant][f"restore{measure}"] / run_[variant][f"reload{measure}"]
            out[f"reload{measure}"] = 1.0
    return out


def order(run_: int) -> list[str]:
    """The variants of a run, each beside the one it is compared with; who goes first swaps every run."""
    pairs = [("bulk", "keys (copy)"), ("insert", "keys (insert)")]
    return [v for pair in pairs for v in in_turn(pair, run_)] + ["plain copy"]


def markdown(report: dict[str, Any]) -> list[str]:
    restores = []
    lines = [f"### Loading a flow as the app login: {report['records']:,} raw records, {report['assets']:,} assets, "
             f"{report['edges']:,} edges", "",
             f"Seconds, medians of {report['runs']} run(s), each variant into a flow of its own; in brackets, the "
             "ratio against the keys-and-foreign-keys copy loaded the same way, beside it (bulk and plain copy "
             "against keys (copy), insert against keys (insert)): the median over pairs of runs, one with each "
             "going first, of the geometric mean of the pair's two ratios.", ""]
    for round_, variants in report["medians"].items():
        paired = report["paired"][round_]
        rows = [[variant, *(f"{times[t]:.2f} ({paired[variant][t]:.2f}×)" for t in NAMES),
                 f"{sum(times[t] for t in NAMES):.2f}"] for variant, times in variants.items()]
        bulk = variants["bulk"]
        restores.append(f"{round_}: {bulk['restore']:.2f} s against {bulk['reload']:.2f} s to load the same rows "
                        f"(**{paired['bulk']['restore']:.2f}×**), writing {bulk['restore WAL MB']:.0f} MB of WAL "
                        f"against {bulk['reload WAL MB']:.0f} MB ({paired['bulk']['restore WAL MB']:.2f}×)")
        lines += [f"**{round_}**", "", *table(["variant", *NAMES, "all"], rows), ""]
    fresh, analyzed = report["medians"]["no statistics"]["bulk"], report["medians"]["analyzed"]["bulk"]
    lines.append(f"- Bulk path without statistics / analyzed: "
                 f"**{sum(fresh[t] for t in NAMES) / sum(analyzed[t] for t in NAMES):.2f}×** (1.00× would be equal).")
    lines.append("- `restore_flow` of the flow the bulk path loaded (after `delete_flow`), beside a load of the same "
                 "rows into a new flow through the bulk path (medians; in bold the ratio, paired as above): "
                 + "; ".join(restores) + ".")
    return lines
