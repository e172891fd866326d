"""Loading a flow: raw records, assets and dependency edges, as an application login under RLS.

Each table's rows are loaded five ways, interleaved, each into a flow (and import) of its own:

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
(autovacuum off: a new install, or rows loaded inside one transaction), then after ANALYZE. The
result is each table's time per variant and the ratios bulk / keys (copy) and insert / keys (insert).

Each variant starts from the same state: before its flow, the database is VACUUMed (without ANALYZE,
so the first round keeps no statistics), which clears the rows the previous restore's delete left dead
in pyflows' tables (the copies have none), and before each timed load a CHECKPOINT writes out what the
loads before it left dirty, so that no load pays for another's pages.

Side by side with loading, restoring: each flow the bulk path loaded is deleted (``delete_flow``,
not timed) and put back by ``restore_flow`` (timed, as the app login), and the restore's time is
set beside the time the bulk path took to load that very flow; the restore must give back every row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pyflows.api import Flows

from .common import Conn, app_dsn, ensure_tenant, scratch_database, table, tenant

VARIANTS = ("bulk", "insert", "keys (copy)", "keys (insert)", "plain copy")
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


def timed(owner: Conn, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds fn took, and its value; started after a CHECKPOINT, so that it pays for no other load's pages."""
    owner.execute("checkpoint")
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def restore_once(owner: Conn, app: Conn, client: uuid.UUID, engagement: uuid.UUID, flow: uuid.UUID,
                 loaded: dict[str, int]) -> float:
    """Delete the flow, then time restoring it; every loaded row must come back."""
    flows = Flows(app).tenant(client, engagement, "ingest")
    event = flows.delete(flow, "bench: restore beside loading", force=True).event_id
    seconds, restored = timed(owner, lambda: flows.restore(event))
    if {t: restored.restored.get(t) for t in loaded} != loaded:
        raise AssertionError(f"restore gave back {restored.restored}, the bulk path loaded {loaded}")
    return float(seconds)


def load_once(owner: Conn, app: Conn, variant: str, client: uuid.UUID, engagement: uuid.UUID,
              n_records: int, n_assets: int) -> dict[str, float]:
    schema = {"bulk": "pyflows", "insert": "pyflows", "plain copy": "bench_plain"}.get(variant, "bench_keys")
    flow, imported = new_flow(owner, client, engagement, schema)
    context = ("select pyflows.set_context(%s, %s, 'ingest')", (client, engagement))
    out: dict[str, float] = {}
    recs, items = records(n_records), assets(n_assets)
    if variant == "bulk":
        flows = Flows(app).tenant(client, engagement, "ingest")
        out["raw_import_records"], _ = timed(owner, lambda: flows.copy_records(imported, recs))
        out["assets"], asset_ids = timed(owner, lambda: flows.copy_assets(flow, items))
        graph = edges(asset_ids)
        out["asset_dependencies"], _ = timed(owner, lambda: flows.copy_dependencies(flow, graph))
        out["restore"] = restore_once(owner, app, client, engagement, flow, {
            "raw_import_records": len(recs), "assets": len(items), "asset_dependencies": len(graph)})
        return out
    conn = app if variant == "insert" else owner

    def load(name: str, rows: Iterable[Sequence[Any]]) -> None:
        # The rows are made as they are sent, as the bulk path makes its staged rows.
        if variant in ("insert", "keys (insert)"):
            insert_rows(conn, schema, name, list(rows), *(context if variant == "insert" else (None, ())))
        else:
            copy_rows(conn, schema, name, rows)

    out["raw_import_records"], _ = timed(owner, lambda: load("raw_import_records", (
        (client, engagement, imported, i, Jsonb(r)) for i, r in enumerate(recs, 1))))
    out["assets"], _ = timed(owner, lambda: load("assets", (
        (client, engagement, flow, a["name"], a["asset_type"], a["hostname"], Jsonb(a["attributes"])) for a in items)))
    with owner.transaction():
        owner.execute("select set_config('pyflows.client_id', %s, true), set_config('pyflows.engagement_id', %s, true)",
                      (str(client), str(engagement)))
        asset_ids = [r[0] for r in owner.execute(sql.SQL("select id from {}.assets where flow_id = %s order by id")
                                                 .format(sql.Identifier(schema)), (flow,)).fetchall()]
    graph = [(client, engagement, flow, s, t, kind) for s, t, kind in edges(asset_ids)]
    out["asset_dependencies"], _ = timed(owner, lambda: load("asset_dependencies", graph))
    return out


def run(dsn: str, n_records: int, n_assets: int, runs: int) -> dict[str, Any]:
    """dsn: a superuser's connection to the server; the suite migrates a database of its own."""
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
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
            per_variant = results.setdefault(round_, {v: {} for v in VARIANTS})
            for _ in range(runs):
                for variant in VARIANTS:
                    n += 1
                    owner.execute("vacuum")
                    if round_ == "no statistics" and owner.execute(
                            "select count(*) from pg_stats where schemaname like any (array['pyflows', 'bench_%'])"
                    ).fetchone()[0]:
                        raise AssertionError("the ingest database has statistics in its first round")
                    for name, seconds in load_once(owner, app, variant, tenant(0x1A), tenant(0x1A00 + n),
                                                   n_records, n_assets).items():
                        per_variant[variant].setdefault(name, []).append(seconds)
    medians = {round_: {v: {t: sorted(s)[len(s) // 2] for t, s in tables_.items()} for v, tables_ in variants.items()}
               for round_, variants in results.items()}
    return {"records": n_records, "assets": n_assets, "edges": len(edges(range(n_assets))), "runs": runs,
            "medians": medians}


def markdown(report: dict[str, Any]) -> list[str]:
    names = ("raw_import_records", "assets", "asset_dependencies")
    restores = []
    lines = [f"### Loading a flow as the app login: {report['records']:,} raw records, {report['assets']:,} assets, "
             f"{report['edges']:,} edges", "",
             f"Medians of {report['runs']} run(s) per variant, each into a flow of its own, interleaved; seconds.", ""]
    for round_, variants in report["medians"].items():
        keys_copy, keys_insert = variants["keys (copy)"], variants["keys (insert)"]
        rows = []
        for variant, times in variants.items():
            base = keys_copy if variant in ("bulk", "keys (copy)", "plain copy") else keys_insert
            rows.append([variant, *(f"{times[t]:.2f} ({times[t] / base[t]:.2f}×)" for t in names),
                         f"{sum(times[t] for t in names):.2f}"])
        bulk = variants["bulk"]
        restores.append(f"{round_}: {bulk['restore']:.2f} s against {sum(bulk[t] for t in names):.2f} s to load it "
                        f"(**{bulk['restore'] / sum(bulk[t] for t in names):.2f}×**)")
        lines += [f"**{round_}** (ratios against the keys-and-foreign-keys copies loaded the same way)", "",
                  *table(["variant", *names, "all"], rows), ""]
    fresh, analyzed = report["medians"]["no statistics"]["bulk"], report["medians"]["analyzed"]["bulk"]
    lines.append(f"- Bulk path without statistics / analyzed: "
                 f"**{sum(fresh[t] for t in names) / sum(analyzed[t] for t in names):.2f}×** (1.00× would be equal).")
    lines.append("- `restore_flow` of the flow the bulk path loaded (after `delete_flow`), beside that load: "
                 + "; ".join(restores) + ".")
    return lines
