"""Item 4: many clients starting and finishing flows on a set of contexts at once, through pyflows' own API.

Each client (a thread with its own connection, logged in as a member of pyflows_app) loops until the
time is up: pick a random context, ``start`` a flow (PF409 when that context already has one), then
``record_progress`` through every phase, which completes it. Any error other than PF409 stops the
run and is raised. At the end: at most one incomplete flow per context (none, in fact: every client
finishes what it started), and exactly one ``flow.start`` audit event per flow started.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from typing import Any

import psycopg

from pyflows.api import Flows
from pyflows.errors import IncompleteFlowExists

from .common import PHASES, Conn, ensure_tenant, table, tenant

PER_CLIENT = 100


def contexts(count: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    return [(tenant(0x300000 + i // PER_CLIENT), tenant(0x400000 + i)) for i in range(count)]


def run(conn: Conn, app_dsn: str, clients: int, context_count: int, seconds: float) -> dict[str, Any]:
    every = contexts(context_count)
    with conn.transaction():
        for client, engagement in every:
            ensure_tenant(conn, client, engagement)
    counts = {"started": 0, "completed": 0, "refused_pf409": 0, "calls": 0}
    lock = threading.Lock()
    failures: list[BaseException] = []
    deadline = [0.0]
    ready = threading.Barrier(clients + 1, action=lambda: deadline.__setitem__(0, time.perf_counter() + seconds))

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine = {"started": 0, "completed": 0, "refused_pf409": 0, "calls": 0}
        try:
            with psycopg.connect(app_dsn, autocommit=True) as c:
                flows = Flows(c)
                ready.wait()
                while time.perf_counter() < deadline[0] and not failures:
                    api = flows.tenant(*rng.choice(every), actor=f"bench-{seed}")
                    mine["calls"] += 1
                    try:
                        flow = api.start("concurrent")
                    except IncompleteFlowExists:
                        mine["refused_pf409"] += 1
                        continue
                    mine["started"] += 1
                    for phase in PHASES:
                        mine["calls"] += 1
                        summary = api.record_progress(flow.flow_id, phase)
                    if summary.status != "completed":
                        raise AssertionError(f"flow {flow.flow_id} ended {summary.status}, not completed")
                    mine["completed"] += 1
        except BaseException as exc:  # reported after the run: raised by run()
            with lock:
                failures.append(exc)
            ready.abort()  # a client that fails before the start must not leave the others waiting
        finally:
            with lock:
                for key, value in mine.items():
                    counts[key] += value

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    # Broken only when a client failed before the start: its error is in failures, raised below.
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} client(s) failed; the first: {failures[0]!r}") from failures[0]

    mine = {"e": [e for _, e in every]}  # other suites share the database: count these contexts only
    over = conn.execute("select count(*) from (select 1 from pyflows.discovery_flows "
                        "where engagement_id = any(%(e)s) and status not in ('completed', 'cancelled') "
                        "group by client_id, engagement_id having count(*) > 1) as t", mine).fetchone()[0]
    incomplete = conn.execute("select count(*) from pyflows.discovery_flows where engagement_id = any(%(e)s) "
                              "and status not in ('completed', 'cancelled')", mine).fetchone()[0]
    start_events = conn.execute("select count(*) from pyflows_audit.events where engagement_id = any(%(e)s) "
                                "and action = 'flow.start'", mine).fetchone()[0]
    flows_total = conn.execute("select count(*) from pyflows.discovery_flows where engagement_id = any(%(e)s)",
                               mine).fetchone()[0]
    report = {"clients": clients, "contexts": context_count, "seconds": elapsed, **counts,
              "flows_per_second": counts["completed"] / elapsed, "calls_per_second": counts["calls"] / elapsed,
              "contexts_with_more_than_one_incomplete": over, "incomplete_left": incomplete,
              "start_events": start_events, "flows_in_table": flows_total}
    if over or incomplete or start_events != counts["started"] or flows_total != counts["started"]:
        raise AssertionError(f"invariant broken after the concurrent run: {report}")
    return report


def markdown(report: dict[str, Any]) -> list[str]:
    return [f"### Concurrency: {report['clients']} clients, {report['contexts']:,} contexts, "
            f"{report['seconds']:.0f} s", "",
            "Each client: `start` on a random context, then `record_progress` through the 7 phases "
            "(8 transactions per flow), through `pyflows.Flows` as a member of pyflows_app.", "",
            *table(["flows completed", "flows / s", "API calls / s", "PF409 refusals", "other errors"],
                   [[f"{report['completed']:,}", f"{report['flows_per_second']:.1f}",
                     f"{report['calls_per_second']:.0f}", f"{report['refused_pf409']:,}", 0]]), "",
            f"Checked at the end: contexts with more than one incomplete flow "
            f"**{report['contexts_with_more_than_one_incomplete']}**, incomplete flows left "
            f"{report['incomplete_left']}, `flow.start` events {report['start_events']:,} = flows started "
            f"{report['started']:,} = rows in discovery_flows."]
