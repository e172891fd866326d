"""The upload gate under a storm: many clients starting an import in one context at once, for a while.

- ``pyflows``: each client calls ``start_import`` (as the app login, under RLS) in a loop; the partial
  unique index decides, the losers get PF409.
- ``app-level check``: what the platform this replaces did: in one transaction, count the context's
  incomplete flows and insert one when there is none, on a copy of the flows table without the
  partial unique index (READ COMMITTED, PostgreSQL's default).

The result is how many incomplete flows the context holds afterwards: the rule allows one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from pyflows.api import Flows
from pyflows.errors import IncompleteFlowExists

from .common import Conn, app_dsn, ensure_tenant, table, tenant

INCOMPLETE = ["initialized", "running", "paused", "waiting_for_user", "failed"]


def storm(clients: int, seconds: float, attempt: Any) -> dict[str, int]:
    """Run attempt(n) from `clients` threads, each on its own connection, until `seconds` have passed."""
    counts = {"attempts": 0, "started": 0, "refused": 0}
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    deadline: list[float] = []

    def client(n: int) -> None:
        barrier.wait()
        if n == 0:
            deadline.append(time.monotonic() + seconds)
        while not deadline:
            time.sleep(0.001)
        while time.monotonic() < deadline[0]:
            started = attempt(n)
            with lock:
                counts["attempts"] += 1
                counts["started" if started else "refused"] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return counts


def run(conn: Conn, dsn: str, clients: int, seconds: float) -> dict[str, Any]:
    client, engagement, other = tenant(0x2A), tenant(0x2A1), tenant(0x2A2)
    with conn.transaction():
        ensure_tenant(conn, client, engagement)
        ensure_tenant(conn, client, other)
        conn.execute("create table if not exists public.bench_flows_app_check "
                     "(like pyflows.discovery_flows including defaults)")
    app = [psycopg.connect(app_dsn(dsn), autocommit=True) for _ in range(clients)]
    plain = [psycopg.connect(dsn, autocommit=True) for _ in range(clients)]
    try:
        def pyflows_start(n: int) -> bool:
            try:
                Flows(app[n]).tenant(client, engagement, f"uploader {n}").start_import(
                    "cmdb.csv", "file:///uploads/cmdb.csv", 1)
                return True
            except IncompleteFlowExists:
                return False

        def app_level_start(n: int) -> bool:
            with plain[n].transaction():
                incomplete = plain[n].execute(
                    "select count(*) from public.bench_flows_app_check where client_id = %s and engagement_id = %s "
                    "and status = any(%s)", (client, other, INCOMPLETE)).fetchone()[0]
                if incomplete:
                    return False
                plain[n].execute("insert into public.bench_flows_app_check (client_id, engagement_id, name, "
                                 "progress_percentage) values (%s, %s, 'cmdb.csv', 0)", (client, other))
                return True

        results = {}
        for name, attempt, count in (
                ("pyflows", pyflows_start,
                 ("select count(*) from pyflows.discovery_flows where client_id = %s and engagement_id = %s "
                  "and status = any(%s)", (client, engagement, INCOMPLETE))),
                ("app-level check", app_level_start,
                 ("select count(*) from public.bench_flows_app_check where client_id = %s and engagement_id = %s "
                  "and status = any(%s)", (client, other, INCOMPLETE)))):
            counts = storm(clients, seconds, attempt)
            counts["incomplete_after"] = conn.execute(*count).fetchone()[0]
            results[name] = counts
    finally:
        for c in app + plain:
            c.close()
    return {"clients": clients, "seconds": seconds, "results": results}


def markdown(report: dict[str, Any]) -> list[str]:
    return [f"### The gate under {report['clients']} concurrent uploads for {report['seconds']:g} s", "",
            *table(["gate", "attempts", "started", "refused", "incomplete flows after (the rule: 1)"],
                   [[name, f"{r['attempts']:,}", f"{r['started']:,}", f"{r['refused']:,}",
                     f"**{r['incomplete_after']}**"] for name, r in report["results"].items()])]
