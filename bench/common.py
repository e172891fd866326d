"""What every benchmark suite shares: a scratch database, flows of a given shape, timing and statistics."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyflows import migrations

Conn = psycopg.Connection[Any]

TABLES = ("discovery_flows", "data_imports", "raw_import_records", "import_field_mappings", "assets",
          "asset_dependencies")
PHASES = ("data_import", "data_validation", "field_mapping", "data_cleansing", "asset_inventory",
          "dependency_analysis", "tech_debt_analysis")
BENCH_ROLE = "pyflows_bench_app"
BENCH_ROLE_PASSWORD = "pyflows-bench"


def tenant(n: int) -> uuid.UUID:
    """A fixed, readable id: bench clients and engagements are numbered."""
    return uuid.UUID(f"be0c0000-0000-4000-8000-{n:012x}")


@dataclass
class Timings:
    """Seconds of repeated measurements of one thing."""

    name: str
    seconds: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.seconds.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile (p in 0..100)."""
        ordered = sorted(self.seconds)
        rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, float]:
        return {"min": min(self.seconds), "median": self.median, "max": max(self.seconds),
                "p50": self.percentile(50), "p99": self.percentile(99), "n": len(self.seconds)}


@contextmanager
def scratch_database(dsn: str, suffix: str = "") -> Iterator[str]:
    """A new, migrated database on the server named by dsn, dropped afterwards."""
    name = f"pyflows_bench_{os.getpid()}{'_' + suffix if suffix else ''}"
    params = conninfo_to_dict(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        bench_dsn = make_conninfo(**{**{k: str(v) for k, v in params.items() if v is not None}, "dbname": name})
        migrations.migrate(bench_dsn)
        yield bench_dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def app_dsn(dsn: str) -> str:
    """A LOGIN role whose only privileges come from pyflows_app (RLS applies to it), on dsn's database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (BENCH_ROLE,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("create role {} login password {}").format(
                sql.Identifier(BENCH_ROLE), sql.Literal(BENCH_ROLE_PASSWORD)))
        conn.execute(sql.SQL("grant pyflows_app to {}").format(sql.Identifier(BENCH_ROLE)))
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    return make_conninfo(**{**params, "user": BENCH_ROLE, "password": BENCH_ROLE_PASSWORD})


def environment(conn: Conn) -> dict[str, Any]:
    """What the figures were measured on."""
    version = conn.execute("select version()").fetchone()[0]
    names = ["shared_buffers", "work_mem", "synchronous_commit", "max_wal_size", "fsync"]
    settings = dict(conn.execute("select name, current_setting(name) from pg_settings where name = any(%s)",
                                 (names,)).fetchall())
    return {"postgres": version.split(",")[0], "machine": platform.platform(), "cpus": os.cpu_count(),
            "settings": settings}


def describe(env: dict[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in sorted(env["settings"].items()))
    return f"{env['postgres']}; {env['machine']}; {env['cpus']} CPUs; {settings}."


def ensure_tenant(conn: Conn, client: uuid.UUID, engagement: uuid.UUID) -> None:
    conn.execute("insert into pyflows.clients (id, name) values (%s, 'bench') on conflict do nothing", (client,))
    conn.execute("insert into pyflows.engagements (client_id, id, name) values (%s, %s, 'bench') "
                 "on conflict do nothing", (client, engagement))


def build_flow(conn: Conn, client: uuid.UUID, engagement: uuid.UUID, assets: int, *, status: str = "paused",
               imports: int = 1) -> uuid.UUID:
    """One flow: `imports` imports sharing `assets` raw records and 4 mappings each, `assets` assets and
    2 dependency edges per asset (2·assets − 2 in all): about 4·assets rows. ANALYZEs what it loaded."""
    ids: dict[str, Any] = {"c": client, "e": engagement, "n": assets, "s": status, "imports": imports,
                           "phases": list(PHASES) if status == "completed" else []}
    with conn.transaction():
        ensure_tenant(conn, client, engagement)
        ids["f"] = conn.execute(
            "insert into pyflows.discovery_flows (client_id, engagement_id, name, status, phases_completed) "
            "values (%(c)s, %(e)s, 'bench', %(s)s, %(phases)s) returning id", ids).fetchone()[0]
        conn.execute("insert into pyflows.data_imports (client_id, engagement_id, flow_id, filename, storage_uri, "
                     "byte_size) select %(c)s, %(e)s, %(f)s, 'b' || g || '.csv', "
                     "'file:///nonexistent/pyflows-bench/' || gen_random_uuid() || '.csv', 1 "
                     "from generate_series(1, %(imports)s) g", ids)
        ids["imps"] = conn.execute("select array_agg(id order by id) from pyflows.data_imports "
                                   "where client_id = %(c)s and engagement_id = %(e)s and flow_id = %(f)s",
                                   ids).fetchone()[0]
        conn.execute("insert into pyflows.raw_import_records (client_id, engagement_id, import_id, row_number, data) "
                     "select %(c)s, %(e)s, (%(imps)s::uuid[])[1 + g %% %(imports)s], g, "
                     "jsonb_build_object('Host', 'h' || g, 'IP', '10.0.0.1') from generate_series(1, %(n)s) g", ids)
        conn.execute("insert into pyflows.import_field_mappings (client_id, engagement_id, import_id, source_field) "
                     "select %(c)s, %(e)s, i.id, f from pyflows.data_imports i, "
                     "unnest(array['Host','IP','OS','Role']) f "
                     "where i.client_id = %(c)s and i.engagement_id = %(e)s and i.flow_id = %(f)s", ids)
        conn.execute("insert into pyflows.assets (client_id, engagement_id, flow_id, name, asset_type) "
                     "select %(c)s, %(e)s, %(f)s, 'h' || g, 'server' from generate_series(1, %(n)s) g", ids)
    # For the plan of the self-join below, which pairs each asset with the next. (The edges' own
    # foreign-key checks read their index whatever the statistics: migration 0011.)
    conn.execute("analyze pyflows.assets")
    with conn.transaction():
        conn.execute("insert into pyflows.asset_dependencies (client_id, engagement_id, flow_id, source_asset_id, "
                     "target_asset_id, dependency_type) "
                     "select %(c)s, %(e)s, %(f)s, a.id, b.id, t from pyflows.assets a "
                     "join pyflows.assets b on b.client_id = a.client_id and b.engagement_id = a.engagement_id "
                     "and b.id = a.id + 1, (values ('network'), ('database')) v(t) "
                     "where a.client_id = %(c)s and a.engagement_id = %(e)s and a.flow_id = %(f)s", ids)
    conn.execute("vacuum analyze")
    return uuid.UUID(str(ids["f"]))


def set_context(conn: Conn, client: uuid.UUID, engagement: uuid.UUID) -> None:
    conn.execute("select pyflows.set_context(%s, %s, 'bench')", (client, engagement))


def enable_triggers(conn: Conn) -> None:
    """Every user trigger of the tenant tables on again (after disable_triggers), in the caller's transaction."""
    _allow_trigger_ddl(conn)
    for table in TABLES:
        conn.execute(sql.SQL("alter table {} enable trigger user").format(sql.Identifier("pyflows", table)))


def disable_triggers(conn: Conn) -> None:
    """Every user trigger of the tenant tables off (in the caller's transaction): the unaudited baseline.
    On Citus, which refuses DDL on the triggers of its tables otherwise, with citus.enable_unsafe_triggers
    for the transaction (the change then reaches the shards, and is rolled back with the transaction)."""
    _allow_trigger_ddl(conn)
    for table in TABLES:
        conn.execute(sql.SQL("alter table {} disable trigger user").format(sql.Identifier("pyflows", table)))


def _allow_trigger_ddl(conn: Conn) -> None:
    if conn.execute("select current_setting('citus.enable_unsafe_triggers', true) is not null").fetchone() == (True,):
        conn.execute("set local citus.enable_unsafe_triggers = on")


def rolled_back(conn: Conn, statements: Callable[[Conn], Any]) -> float:
    """Seconds for `statements` inside a transaction that is then rolled back; VACUUM afterwards, so every
    variant meets the same table state."""
    with conn.transaction(force_rollback=True):
        started = time.perf_counter()
        statements(conn)
        elapsed = time.perf_counter() - started
    conn.execute("vacuum")
    return elapsed


def interleaved(conn: Conn, variants: dict[str, Callable[[Conn], Any]], runs: int) -> dict[str, Timings]:
    """Each variant `runs` times in rolled-back transactions, in turn, so drift on a shared machine
    touches every variant alike."""
    results = {name: Timings(name) for name in variants}
    for _ in range(runs):
        for name, statements in variants.items():
            results[name].add(rolled_back(conn, statements))
    return results


def in_turn(pair: tuple[Any, Any], run_: int) -> tuple[Any, Any]:
    """A pair measured side by side, in the order of run run_: who goes first swaps every run."""
    return pair if run_ % 2 == 0 else pair[::-1]


def crossover(per_run: Sequence[float]) -> list[float]:
    """The ratios of runs taken two by two, the first pair's variant going first in one and second in the other
    (in_turn): the geometric mean of each pair, in which the cost of going first or second cancels out. (On this
    machine the second of two 1M-record COPYs made side by side costs 5-20 % more than the first, whichever it
    is: a median of single runs leans to the order that had more of them.) An odd run left over is left out,
    unless it is the only one."""
    if len(per_run) == 1:
        return list(per_run)
    return [math.sqrt(a * b) for a, b in zip(per_run[0::2], per_run[1::2], strict=False)]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"
