"""The HTTP layer's cost (pyflows.http, run as ``pyflows serve``) beside the SQL call it wraps, in one run.

On a database of `engagements` engagements and `flows` completed flows (the gate suite's build, an
incomplete flow on every other engagement), with `clients` concurrent clients and with one:

- ``flow_gate``: the SQL call (each client a thread with its own connection, as the application
  login, ``set_context`` and the call in one transaction) against ``GET /flows/gate`` on a
  ``pyflows serve`` process (each client a thread with its own keep-alive HTTP connection and a JWT
  of its context; the server's pool holds one connection per client);
- ``start + delete``: ``start_import`` then ``delete_flow`` of that new flow, each client in a
  context of its own, against ``POST /imports`` then ``DELETE /flows/{id}``;
- one ``/metrics`` scrape (an admin token, the admin login) against ``admin_metrics()`` itself.

The server is a process of its own (its own interpreter), the clients threads of this one; both share
the machine's cores with PostgreSQL. The clients speak HTTP through the standard library's
``http.client`` (a keep-alive connection each): what is measured is the server's cost, and a richer
client's own work (httpx's, about 0.4 ms a request here) would be counted as the layer's.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pyflows.api import Flows

from . import gate
from .common import Conn, Timings, ensure_tenant, ms, table, tenant

SECRET = "bench-secret-" + "x" * 32
ADMIN_ROLE, ADMIN_PASSWORD = "pyflows_bench_admin", "pyflows-bench"


def admin_dsn(dsn: str) -> str:
    """A LOGIN role whose only privileges come from pyflows_admin, on dsn's database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_roles where rolname = %s", (ADMIN_ROLE,)).fetchone():
            conn.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(ADMIN_ROLE),
                                                                            sql.Literal(ADMIN_PASSWORD)))
        conn.execute(sql.SQL("grant pyflows_admin to {}").format(sql.Identifier(ADMIN_ROLE)))
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    return make_conninfo(**{**params, "user": ADMIN_ROLE, "password": ADMIN_PASSWORD})


def token(client: uuid.UUID, engagement: uuid.UUID, admin: bool = False) -> str:
    claims = {"client_id": str(client), "engagement_id": str(engagement), "sub": "bench",
              "exp": int(time.time()) + 3600, **({"pyflows_admin": True} if admin else {})}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Client:
    """One keep-alive HTTP/1.1 connection to the server, with a bearer token; each call checks the status."""

    def __init__(self, base: str, bearer: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Authorization": f"Bearer {bearer}"}

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status != expect:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:500]!r}")
        return json.loads(payload) if response.getheader("content-type", "").endswith("json") else payload

    def close(self) -> None:
        self.conn.close()


@contextmanager
def server(app_login: str, admin_login: str, pool_size: int, workers: int = 1) -> Iterator[str]:
    """``pyflows serve`` (with `workers` processes) on a free port of 127.0.0.1; its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYFLOWS_JWT_SECRET": SECRET}
    env.pop("PYFLOWS_JWT_PUBLIC_KEY", None)
    process = subprocess.Popen([sys.executable, "-m", "pyflows", "-q", "--dsn", app_login, "serve", "--port", str(port),
                                "--pool-size", str(pool_size), "--workers", str(workers), "--admin-dsn", admin_login],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"pyflows serve exited: {process.stderr.read() if process.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def concurrently(clients: int, calls: int, one: Callable[[int], Callable[[], None]]) -> Timings:
    """`clients` threads, each making `calls` timed calls of what one(i) returns, all released at once."""
    timings, lock, failures = Timings("calls"), threading.Lock(), []
    ready = threading.Barrier(clients)

    def worker(i: int) -> None:
        try:
            call = one(i)
            ready.wait()
            mine = []
            for _ in range(calls):
                started = time.perf_counter()
                call()
                mine.append(time.perf_counter() - started)
            with lock:
                for t in mine:
                    timings.add(t)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failures.append(exc)
            ready.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return timings


def run(conn: Conn, bench_dsn: str, app_login: str, engagements: int, flows: int, clients: int,
        calls: int) -> dict[str, Any]:
    contexts = gate.contexts(engagements)
    if not conn.execute("select 1 from pyflows.engagements where client_id = %s and id = %s", contexts[0]).fetchone():
        gate.build(conn, engagements, flows)  # unless the gate suite, run before in this database, has
    own = [(tenant(0x5000), tenant(0x500000 + i)) for i in range(clients)]  # one context each, for start + delete
    with conn.transaction():
        for client, engagement in own:
            ensure_tenant(conn, client, engagement)
    admin_login = admin_dsn(bench_dsn)
    results: dict[str, dict[str, Any]] = {}
    opened: list[Any] = []

    def sql_gate(i: int) -> Callable[[], None]:
        c = psycopg.connect(app_login, autocommit=True)
        opened.append(c)
        api = Flows(c).tenant(*contexts[(i * 7919) % len(contexts)], actor="bench")
        return lambda: None if api.gate() else None

    def sql_cycle(i: int) -> Callable[[], None]:
        c = psycopg.connect(app_login, autocommit=True)
        opened.append(c)
        api = Flows(c).tenant(*own[i], actor="bench")

        def cycle() -> None:
            started = api.start_import("cmdb.csv", "s3://bench/cmdb.csv", 1)
            api.delete(started.flow_id, "bench")
        return cycle

    def http_variants(base: str) -> tuple[Callable[[int], Callable[[], None]], Callable[[int], Callable[[], None]]]:
        def http_gate(i: int) -> Callable[[], None]:
            h = Client(base, token(*contexts[(i * 7919) % len(contexts)]))
            opened.append(h)
            return lambda: h.call("GET", "/flows/gate")

        def http_cycle(i: int) -> Callable[[], None]:
            h = Client(base, token(*own[i]))
            opened.append(h)

            def cycle() -> None:
                started = h.call("POST", "/imports", {"filename": "cmdb.csv", "storage_uri": "s3://bench/cmdb.csv",
                                                      "byte_size": 1}, expect=201)
                h.call("DELETE", f"/flows/{started['flow_id']}?reason=bench")
            return cycle
        return http_gate, http_cycle

    def measure(base: str, label: str, n: int) -> None:
        http_gate, http_cycle = http_variants(base)
        for name, variant in (("flow_gate (SQL)", sql_gate), ("GET /flows/gate", http_gate),
                              ("start_import + delete_flow (SQL)", sql_cycle),
                              ("POST /imports + DELETE /flows/{id}", http_cycle)):
            timings = concurrently(n, calls if n == 1 else max(1, calls // 4), variant)
            results.setdefault(label, {})[name] = timings.summary()
            for resource in opened:
                resource.close()
            opened.clear()

    with server(app_login, admin_login, max(1, clients // 2), workers=2) as base:
        measure(base, f"{clients} clients, 2 server processes", clients)
    with server(app_login, admin_login, clients) as base:
        measure(base, "1 client", 1)
        measure(base, f"{clients} clients", clients)
        with psycopg.connect(admin_login, autocommit=True) as admin_conn:
            admin = Flows(admin_conn)
            sql_scrape = Timings("admin_metrics")
            for _ in range(20):
                started = time.perf_counter()
                admin.admin_metrics()
                sql_scrape.add(time.perf_counter() - started)
        h = Client(base, token(*own[0], admin=True))
        http_scrape = Timings("/metrics")
        for _ in range(20):
            started = time.perf_counter()
            h.call("GET", "/metrics")
            http_scrape.add(time.perf_counter() - started)
        h.close()
    flows_in_all = conn.execute("select count(*) from pyflows.discovery_flows").fetchone()
    return {"engagements": engagements, "flows": flows_in_all[0] if flows_in_all else 0, "clients": clients,
            "calls": calls, "results": results,
            "scrape": {"admin_metrics()": sql_scrape.summary(), "GET /metrics": http_scrape.summary()}}


def markdown(report: dict[str, Any]) -> list[str]:
    lines = [f"### The HTTP layer beside the SQL calls: {report['flows']:,} flows, {report['engagements']:,} "
             f"engagements", "",
             f"`pyflows serve` (uvicorn, one process, its access log on) against the same calls through psycopg, as "
             f"the application login; each client a thread with its own connection (over HTTP, a keep-alive "
             f"`http.client` connection); {report['calls']} calls per client alone, "
             f"{max(1, report['calls'] // 4)} each with {report['clients']} clients.", ""]
    rows = []
    for label, variants in sorted(report["results"].items(), key=lambda kv: len(kv[0])):
        names = list(variants)
        for sql_name, http_name in ((names[0], names[1]), (names[2], names[3])):
            a, b = variants[sql_name], variants[http_name]
            rows.append([label, http_name, ms(a["p50"]), ms(b["p50"]), ms(b["p50"] - a["p50"]),
                         ms(a["p99"]), ms(b["p99"])])
    lines += table(["clients", "route", "p50 ms SQL", "p50 ms HTTP", "HTTP adds (p50) ms", "p99 ms SQL",
                    "p99 ms HTTP"], rows)
    scrape = report["scrape"]
    http_scrape, sql_scrape = scrape["GET /metrics"], scrape["admin_metrics()"]
    lines += ["", f"- One `/metrics` scrape at {report['flows']:,} flows: p50 **{ms(http_scrape['p50'])} ms**, "
                  f"max {ms(http_scrape['max'])} ms (target < 100 ms); `admin_metrics()` alone "
                  f"p50 {ms(sql_scrape['p50'])} ms."]
    return lines
