"""Item 3: the gate and the listings on a large installation (many engagements, many finished flows).

Every engagement holds `flows / engagements` completed flows; every other one also an incomplete
(paused) flow. Timed, each call in its own transaction after ``set_context`` (the call's round trip
from the client, without the COMMIT, whose fsync is the disk's, not pyflows'):

- ``flow_gate`` on every engagement (half answer "blocked", half "can start");
- ``start_flow`` on every engagement: half start a flow, half are refused with PF409;
- ``list_incomplete_flows`` as a member of pyflows_app (row-level security applies) against the
  same function called by a superuser (RLS bypassed), on the same engagements, each first in turn.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import psycopg

from .common import PHASES, Conn, Timings, ms, table, tenant

PER_CLIENT = 100


def contexts(engagements: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    return [(tenant(0x100000 + i // PER_CLIENT), tenant(0x200000 + i)) for i in range(engagements)]


def build(conn: Conn, engagements: int, flows: int) -> None:
    """The clients and engagements, `flows` completed flows spread evenly, an incomplete one on every other."""
    every = contexts(engagements)
    per = max(1, flows // engagements)
    with conn.transaction():
        conn.execute("insert into pyflows.clients (id, name) select distinct c, 'bench' from unnest(%s::uuid[]) c",
                     ([c for c, _ in every],))
        conn.execute("insert into pyflows.engagements (client_id, id, name) "
                     "select c, e, 'bench' from unnest(%s::uuid[], %s::uuid[]) as t(c, e)",
                     ([c for c, _ in every], [e for _, e in every]))
        conn.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status, phases_completed, "
                     "created_at) select t.c, t.e, 'done ' || g, 'completed', %s, now() - g * interval '1 minute' "
                     "from unnest(%s::uuid[], %s::uuid[]) as t(c, e), generate_series(1, %s) g",
                     (list(PHASES), [c for c, _ in every], [e for _, e in every], per))
        conn.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                     "select t.c, t.e, 'open', 'paused' from unnest(%s::uuid[], %s::uuid[]) "
                     "with ordinality as t(c, e, n) where t.n %% 2 = 0",
                     ([c for c, _ in every], [e for _, e in every]))
    conn.execute("vacuum analyze")


def call(conn: Conn, context: tuple[uuid.UUID, uuid.UUID], statement: str) -> tuple[float, str]:
    """(seconds, outcome) of one call in its own transaction; outcome 'ok' or 'PF409' (any other error raises)."""
    elapsed, outcome = 0.0, "ok"
    try:
        with conn.transaction():
            conn.execute("select pyflows.set_context(%s, %s, 'bench')", context)
            started = time.perf_counter()
            try:
                conn.execute(statement).fetchall()
            finally:
                elapsed = time.perf_counter() - started
    except psycopg.Error as exc:
        if exc.sqlstate != "PF409":
            raise
        outcome = "PF409"
    return elapsed, outcome


def run(conn: Conn, app_conn: Conn, engagements: int, flows: int, list_calls: int) -> dict[str, Any]:
    started = time.perf_counter()
    build(conn, engagements, flows)
    built = time.perf_counter() - started
    order = contexts(engagements)
    total = conn.execute("select count(*) from pyflows.discovery_flows where engagement_id = any(%s)",
                         ([e for _, e in order],)).fetchone()[0]
    random.Random(6).shuffle(order)
    timings: dict[str, Timings] = {}

    def record(name: str, elapsed: float) -> None:
        timings.setdefault(name, Timings(name)).add(elapsed)

    for context in order:
        elapsed, _ = call(conn, context, "select pyflows.flow_gate()")
        record("flow_gate", elapsed)
    for context in order:
        elapsed, outcome = call(conn, context, "select pyflows.start_flow('bench start')")
        record("start_flow (started)" if outcome == "ok" else "start_flow (PF409)", elapsed)
    listers = [("list_incomplete_flows as pyflows_app (RLS)", app_conn),
               ("list_incomplete_flows as superuser (no RLS)", conn)]
    for n, context in enumerate(order[:list_calls]):
        # Both on the same engagement, each going first every other time: the first to read an
        # engagement's pages pays for bringing them into memory.
        for name, lister in listers if n % 2 == 0 else reversed(listers):
            record(name, call(lister, context, "select * from pyflows.list_incomplete_flows()")[0])
    results = {name: t.summary() for name, t in timings.items()}
    rls = results["list_incomplete_flows as pyflows_app (RLS)"]["median"]
    plain = results["list_incomplete_flows as superuser (no RLS)"]["median"]
    return {"engagements": engagements, "flows": total, "build_seconds": built, "results": results,
            "rls_ratio": rls / plain}


def markdown(report: dict[str, Any]) -> list[str]:
    rows = [[name, r["n"], ms(r["p50"]), ms(r["p99"]), ms(r["max"])] for name, r in report["results"].items()]
    worst_p99 = max(r["p99"] for name, r in report["results"].items() if not name.startswith("list"))
    return [f"### Gate and listings: {report['engagements']:,} engagements, {report['flows']:,} flows", "",
            "Each call in its own transaction after `set_context`; the client's round trip over TCP, without the "
            "COMMIT.", "",
            *table(["call", "calls", "p50 ms", "p99 ms", "max ms"], rows), "",
            f"- Worst p99 of `flow_gate` / `start_flow`: **{ms(worst_p99)} ms** (target ≤ 2 ms).",
            f"- `list_incomplete_flows` under RLS / without: **{report['rls_ratio']:.2f}×** (medians; target ≤ 1.2×)."]
