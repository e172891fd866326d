"""The HTTP routes (pyflows.http) in process, through FastAPI's TestClient, on the real database as the
application login: problem+json for every error, the 409 with its blocking flow, 423 with Retry-After,
validation as 422, and no tenant reaching another's rows whatever it sends."""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

pytestmark = pytest.mark.citus  # the HTTP API holds on Citus too (docs/scale-out.md)

pytest.importorskip("fastapi")

import httpx  # noqa: E402
import jwt  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from fastapi import FastAPI, Header  # noqa: E402
from fastapi.routing import APIRoute  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402

from pyflows import console, http  # noqa: E402
from pyflows.api import AsyncFlows, Flows  # noqa: E402
from pyflows.cli import cli  # noqa: E402
from pyflows.errors import Forbidden  # noqa: E402
from pyflows.models import Tenant  # noqa: E402

from .helpers import fingerprint, mark_deleting, write_flow_tree  # noqa: E402

PROBLEM = "application/problem+json"


def make_app(dsn: str, tenants: dict[str, Tenant] | None) -> FastAPI:
    """An application that mounts pyflows' routes over a pool of dsn. Its own authentication (here: a
    header naming one of `tenants`) is what decides the caller; None: the application configured none."""
    pool = AsyncConnectionPool(dsn, open=False, min_size=1, max_size=4)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)
    http.install(app, AsyncFlows(pool))
    if tenants is not None:
        def caller(x_tenant: str = Header()) -> http.Caller:
            tenant = tenants[x_tenant]
            return http.Caller(tenant.client_id, tenant.engagement_id, f"user of {x_tenant}")

        app.dependency_overrides[http.caller] = caller
    return app


@pytest.fixture
def client(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant, tenant_b: Tenant) -> Iterator[TestClient]:
    with TestClient(make_app(pyflows_role_dsn("app"), {"a": tenant_a, "b": tenant_b})) as c:
        yield c


def is_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and "Traceback" not in response.text
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


def test_without_the_applications_authentication_every_route_is_401(pyflows_role_dsn: Callable[[str], str]) -> None:
    with TestClient(make_app(pyflows_role_dsn("app"), None)) as c:
        for method, path in (("GET", "/flows/gate"), ("GET", "/flows"), ("POST", "/flows/batch-delete"),
                             ("DELETE", f"/flows/{uuid.uuid4()}?reason=x")):
            body = is_problem(c.request(method, path, json={"flow_ids": [str(uuid.uuid4())], "reason": "x"}),
                              401, "PF401")
            assert "pyflows.http.caller" in body["hint"]


def test_the_upload_gate_and_the_409_that_names_the_blocking_flow(client: TestClient) -> None:
    a = {"x-tenant": "a"}
    assert client.get("/flows/gate", headers=a).json()["can_start"] is True
    started = client.post("/imports", headers=a, json={"filename": "cmdb.csv", "storage_uri": "s3://b/cmdb.csv",
                                                       "byte_size": 10, "name": "first"})
    assert started.status_code == 201, started.text
    flow_id = started.json()["flow_id"]
    second = is_problem(client.post("/imports", headers=a, json={"filename": "again.csv",
                                                                 "storage_uri": "s3://b/again.csv", "byte_size": 1}),
                        409, "PF409")
    assert second["context"]["flow_id"] == flow_id and second["context"]["status"] == "initialized"
    assert second["context"]["next_steps"] and second["context"]["actions"]
    gate = client.get("/flows/gate", headers=a).json()
    assert gate["can_start"] is False and gate["blocking_flow"]["flow_id"] == flow_id
    # Another tenant's gate is its own.
    assert client.get("/flows/gate", headers={"x-tenant": "b"}).json()["can_start"] is True
    assert [f["flow_id"] for f in client.get("/flows/incomplete", headers=a).json()] == [flow_id]


def test_bad_requests_are_422_problems_and_write_nothing(client: TestClient, owner: psycopg.Connection[Any]) -> None:
    a = {"x-tenant": "a"}
    before = fingerprint(owner)
    for method, path, body in (
            ("POST", "/imports", {"filename": "x.csv", "storage_uri": "s3://b/x.csv", "byte_size": -1}),
            ("POST", "/imports", {"filename": "", "storage_uri": "s3://b/x.csv", "byte_size": 1}),
            ("POST", "/imports", None),
            ("DELETE", f"/flows/{uuid.uuid4()}", None),  # no reason
            ("DELETE", "/flows/not-a-uuid?reason=x", None),
            ("GET", "/flows?limit=0", None),
            ("POST", "/flows/batch-delete", {"flow_ids": [], "reason": "x"}),
            ("GET", "/audit/not-a-number", None)):
        problem = is_problem(client.request(method, path, headers=a, json=body), 422, "PF422")
        assert problem["errors"], problem
    # What the SQL API refuses is 422 too, with its message.
    refused = is_problem(client.post("/imports", headers=a, json={"filename": "x.csv", "storage_uri": "file:///../x",
                                                                  "byte_size": 1}), 422, "PF422")
    assert refused["detail"]
    assert fingerprint(owner) == before


def test_no_tenant_reaches_another_tenants_flow(client: TestClient, owner: psycopg.Connection[Any],
                                                tenant_a: Tenant) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused")
    b = {"x-tenant": "b"}
    before = fingerprint(owner)
    for method, path, body in (
            ("GET", f"/flows/{tree.flow_id}/details", None), ("GET", f"/flows/{tree.flow_id}/impact", None),
            ("POST", f"/flows/{tree.flow_id}/resume", None),
            ("POST", f"/flows/{tree.flow_id}/progress", {"phase": "data_import"}),
            ("DELETE", f"/flows/{tree.flow_id}?reason=not+mine&force=true", None)):
        is_problem(client.request(method, path, headers=b, json=body), 404, "PF404")
    batch = client.post("/flows/batch-delete", headers=b, json={"flow_ids": [str(tree.flow_id)], "reason": "x",
                                                                "force": True})
    is_problem(batch, 404, "PF404")
    assert client.get("/flows", headers=b).json() == [] and client.get("/audit", headers=b).json() == []
    assert fingerprint(owner) == before


def test_delete_audit_and_restore(client: TestClient, owner: psycopg.Connection[Any], tenant_a: Tenant) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused", records=4, assets=3)
    a = {"x-tenant": "a"}
    impact = client.get(f"/flows/{tree.flow_id}/impact", headers=a).json()
    dry = client.delete(f"/flows/{tree.flow_id}?reason=try&dry_run=true", headers=a).json()
    assert dry["dry_run"] is True and dry["deleted"] == impact["counts"]
    deleted = client.delete(f"/flows/{tree.flow_id}?reason=obsolete+import", headers=a)
    assert deleted.status_code == 200, deleted.text
    event_id = deleted.json()["event_id"]
    assert deleted.json()["deleted"] == impact["counts"]
    is_problem(client.get(f"/flows/{tree.flow_id}/details", headers=a), 404, "PF404")
    event = client.get(f"/audit/{event_id}", headers=a).json()
    assert event["action"] == "flow.delete" and event["actor"] == "user of a" and event["reason"] == "obsolete import"
    assert [e["event_id"] for e in client.get("/audit", headers=a).json()] == [event_id]
    is_problem(client.get(f"/audit/{event_id}", headers={"x-tenant": "b"}), 404, "PF404")
    restored = client.post(f"/audit/{event_id}/restore", headers=a)
    assert restored.status_code == 200 and restored.json()["restored"] == impact["counts"]
    assert client.get(f"/flows/{tree.flow_id}/details", headers=a).json()["flow"]["flow_id"] == str(tree.flow_id)


def test_a_busy_flow_is_423_with_retry_after(client: TestClient, owner: psycopg.Connection[Any], tenant_a: Tenant,
                                             pyflows_dsn: str) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused")
    with psycopg.connect(pyflows_dsn) as holder:
        holder.execute("select 1 from pyflows.discovery_flows where client_id = %s and id = %s for update",
                       (tenant_a.client_id, tree.flow_id))
        busy = client.delete(f"/flows/{tree.flow_id}?reason=x", headers={"x-tenant": "a"})
        is_problem(busy, 423, "PF423")
        assert busy.headers["retry-after"] == str(http.RETRY_AFTER_SECONDS)


# ---- pyflows serve: the standalone application, callers from bearer JWTs ----------------------------------

SECRET = "s" * 40


def token(tenant: Tenant, *, key: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    payload = {"client_id": str(tenant.client_id), "engagement_id": str(tenant.engagement_id), "sub": "alice",
               "exp": int(time.time()) + 300, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def served(pyflows_role_dsn: Callable[[str], str]) -> Iterator[TestClient]:
    app = http.create_app(pyflows_role_dsn("app"), http.JWTCaller(SECRET), admin_dsn=pyflows_role_dsn("admin"))
    with TestClient(app) as c:
        yield c


def test_only_a_valid_token_reaches_the_routes(served: TestClient, tenant_a: Tenant) -> None:
    assert served.get("/flows/gate", headers=bearer(token(tenant_a))).json()["can_start"] is True
    forged = jwt.encode({"client_id": str(tenant_a.client_id), "engagement_id": str(tenant_a.engagement_id),
                         "sub": "mallory"}, "another secret of forty bytes, not ours!", algorithm="HS256")
    unsigned = jwt.encode({"client_id": str(tenant_a.client_id), "engagement_id": str(tenant_a.engagement_id),
                           "sub": "mallory"}, None, algorithm="none")
    for headers in ({}, {"Authorization": "Basic YWxpY2U6cHc="}, bearer(""), bearer("not.a.jwt"), bearer(forged),
                    bearer(unsigned), bearer(token(tenant_a, exp=int(time.time()) - 10)),
                    bearer(token(tenant_a, client_id="not-a-uuid")), bearer(token(tenant_a, sub=None)),
                    bearer(token(tenant_a, engagement_id=None)), bearer(token(tenant_a, sub=" "))):
        response = served.get("/flows/gate", headers=headers)
        is_problem(response, 401, "PF401")
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_token_checked_once_is_still_refused_when_it_expires(served: TestClient, tenant_a: Tenant) -> None:
    """JWTCaller keeps a checked token's caller; its exp is checked again on every request."""
    expires = int(time.time()) + 2
    short = bearer(token(tenant_a, exp=expires))
    assert served.get("/flows/gate", headers=short).status_code == 200
    assert served.get("/flows/gate", headers=short).status_code == 200  # from the cache
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    body = is_problem(served.get("/flows/gate", headers=short), 401, "PF401")
    assert "expired" in body["detail"]
    # A refused token is not kept: the same forged token is refused every time.
    forged = bearer(jwt.encode({"client_id": str(tenant_a.client_id), "engagement_id": str(tenant_a.engagement_id),
                                "sub": "mallory"}, "another secret of forty bytes, not ours!", algorithm="HS256"))
    for _ in range(2):
        is_problem(served.get("/flows/gate", headers=forged), 401, "PF401")


def test_a_token_reaches_its_own_tenant_only(served: TestClient, owner: psycopg.Connection[Any], tenant_a: Tenant,
                                             tenant_b: Tenant) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused")
    b = bearer(token(tenant_b))
    is_problem(served.get(f"/flows/{tree.flow_id}/details", headers=b), 404, "PF404")
    is_problem(served.delete(f"/flows/{tree.flow_id}?reason=x&force=true", headers=b), 404, "PF404")
    assert served.get(f"/flows/{tree.flow_id}/details", headers=bearer(token(tenant_a))).status_code == 200


def test_the_admin_routes_need_an_admin_token(served: TestClient, owner: psycopg.Connection[Any],
                                              tenant_a: Tenant, tenant_b: Tenant,
                                              pyflows_role_dsn: Callable[[str], str]) -> None:
    with owner.transaction():
        a_flow = write_flow_tree(owner, tenant_a, status="paused")
        b_flow = write_flow_tree(owner, tenant_b, status="running")
    is_problem(served.get("/admin/flows/incomplete", headers=bearer(token(tenant_a))), 403, "PF403")
    is_problem(served.get("/admin/flows/incomplete", headers=bearer(token(tenant_a, pyflows_admin="true"))),
               403, "PF403")  # only the JSON true
    rows = served.get("/admin/flows/incomplete", headers=bearer(token(tenant_a, pyflows_admin=True))).json()
    assert {r["flow_id"] for r in rows} == {str(a_flow.flow_id), str(b_flow.flow_id)}
    idle = served.get("/admin/flows/incomplete?idle_for=PT1H", headers=bearer(token(tenant_a, pyflows_admin=True)))
    assert idle.status_code == 200 and idle.json() == []
    is_problem(served.get("/admin/flows/incomplete?idle_for=soon", headers=bearer(token(tenant_a, pyflows_admin=True))),
               422, "PF422")
    # Without an admin login configured, the admin routes are off for everyone.
    with TestClient(http.create_app(pyflows_role_dsn("app"), http.JWTCaller(SECRET))) as plain:
        body = is_problem(plain.get("/admin/flows/incomplete", headers=bearer(token(tenant_a, pyflows_admin=True))),
                          403, "PF403")
        assert "no admin login" in body["detail"]


def test_a_public_key_checks_asymmetric_tokens_and_never_hmac(pyflows_role_dsn: Callable[[str], str],
                                                              tenant_a: Tenant) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    app = http.create_app(pyflows_role_dsn("app"), http.JWTCaller(public_key=public_pem))
    with TestClient(app) as c:
        assert c.get("/flows/gate", headers=bearer(token(tenant_a, key=private, algorithm="ES256"))).status_code == 200
        # The public key used as an HMAC secret (the algorithm-confusion attack) is refused: a token
        # signed with HS256 and the public PEM as its key, made by hand (PyJWT will not make one).
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing_input = ".".join(b64(json.dumps(part).encode()) for part in (
            {"alg": "HS256", "typ": "JWT"},
            {"client_id": str(tenant_a.client_id), "engagement_id": str(tenant_a.engagement_id), "sub": "mallory"}))
        forged = signing_input + "." + b64(hmac.new(public_pem.encode(), signing_input.encode(), "sha256").digest())
        is_problem(c.get("/flows/gate", headers=bearer(forged)), 401, "PF401")


def test_serve_refuses_to_start_without_a_key(pyflows_role_dsn: Callable[[str], str]) -> None:
    runner = CliRunner()
    env = {"PYFLOWS_JWT_SECRET": None, "PYFLOWS_JWT_PUBLIC_KEY": None, "PYFLOWS_CONSOLE_SECRET": None}
    for extra, message in (({}, "no key to check callers' tokens with"),
                           ({"PYFLOWS_JWT_SECRET": "short"}, "shorter than 32 bytes"),
                           ({"PYFLOWS_JWT_SECRET": SECRET, "PYFLOWS_JWT_PUBLIC_KEY": "x"}, "both set"),
                           ({"PYFLOWS_JWT_PUBLIC_KEY": "/nonexistent/key.pem"}, "neither a PEM public key"),
                           ({"PYFLOWS_JWT_SECRET": SECRET, "PYFLOWS_CONSOLE_SECRET": "short"},
                            "PYFLOWS_CONSOLE_SECRET is shorter than 32 bytes")):
        result = runner.invoke(cli, ["--dsn", pyflows_role_dsn("app"), "serve"], env={**env, **extra})
        assert result.exit_code == 2 and message in result.stderr, result.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(app_dsn: str, log: Path, *args: str) -> Iterator[str]:
    """``pyflows serve`` (with the HS256 SECRET) on a free port of 127.0.0.1, its output in `log`; its base URL,
    once it answers."""
    port = free_port()
    env = {**os.environ, "PYFLOWS_JWT_SECRET": SECRET}
    for name in ("PYFLOWS_JWT_PUBLIC_KEY", "PYFLOWS_SERVE_DSN", "PYFLOWS_ADMIN_DSN", "PYFLOWS_CONSOLE_SECRET"):
        env.pop(name, None)
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "pyflows", "--dsn", app_dsn, "serve", "--port", str(port),
                                   *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.get(f"{base}/openapi.json", timeout=1)
                    break
                except httpx.TransportError:
                    assert server.poll() is None, log.read_text()
                    time.sleep(0.1)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.parametrize("workers", [1, 2])
def test_pyflows_serve_end_to_end(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant, tenant_b: Tenant,
                                  workers: int, tmp_path: Path) -> None:
    """A real server (uvicorn on 127.0.0.1; with --workers 2, two processes built by app_from_environment) and
    a real HTTP client: start an import as tenant A, the 409 for a second, B's own gate open."""
    with serving(pyflows_role_dsn("app"), tmp_path / "serve.log", "--workers", str(workers)) as base:
        a, b = bearer(token(tenant_a)), bearer(token(tenant_b))
        body = {"filename": "cmdb.csv", "storage_uri": "s3://bucket/cmdb.csv", "byte_size": 3}
        started = httpx.post(f"{base}/imports", headers=a, json=body)
        assert started.status_code == 201, started.text
        conflict = httpx.post(f"{base}/imports", headers=a, json=body)
        assert conflict.status_code == 409 and conflict.headers["content-type"] == PROBLEM
        assert conflict.json()["context"]["flow_id"] == started.json()["flow_id"]
        assert httpx.get(f"{base}/flows/gate", headers=b).json()["can_start"] is True
        assert httpx.get(f"{base}/flows/gate").status_code == 401
        for _ in range(6):  # each worker answers alike
            assert httpx.get(f"{base}/flows/gate", headers=a).json()["can_start"] is False
        assert f"the operator console: {base}/console/" in (tmp_path / "serve.log").read_text()
        if workers == 2:  # a console form made by one worker is accepted by the other (one CSRF secret)
            session = token(tenant_b)
            with httpx.Client(base_url=base) as browser:
                assert browser.post("/console/login", data={"token": session}).status_code == 303
                csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', browser.get("/console/").text)
                assert csrf
                for _ in range(6):
                    assert browser.post("/console/logout", data={"csrf": csrf.group(1)}).status_code == 303
                    browser.cookies.set(console.SESSION_COOKIE, session, path="/console")


# ---- metrics: pyflows.admin_metrics() and /metrics ---------------------------------------------------------

def monitored_world(owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant) -> dict[str, Any]:
    """An idle paused flow (A), a running flow just active (B's), a purge left running, a deleted flow's
    stored file queued for removal that failed once, and the audit events all that wrote."""
    with owner.transaction():
        idle = write_flow_tree(owner, tenant_a, status="paused")
        write_flow_tree(owner, tenant_b, status="running")
        owner.execute("update pyflows.discovery_flows set last_activity_at = now() - interval '2 hours' "
                      "where id = %s", (idle.flow_id,))
    other = Tenant(tenant_a.client_id, uuid.uuid4(), "x")
    with owner.transaction():
        owner.execute("select pyflows.add_engagement(%s, 'purged', %s)", (other.client_id, other.engagement_id))
        doomed = write_flow_tree(owner, other, status="completed")
        mark_deleting(owner, other, doomed.flow_id)  # a purge left running: its flow is 'deleting'
    with owner.transaction():
        gone = write_flow_tree(owner, tenant_b, status="completed", name="gone")
        owner.execute("delete from pyflows.discovery_flows where id = %s", (gone.flow_id,))  # its file is queued
        owner.execute("update pyflows.file_cleanup_queue set attempts = 1, last_error = 'denied', "
                      "enqueued_at = now() - interval '10 minutes' where flow_id = %s", (gone.flow_id,))
    return {"idle": idle.flow_id}


def test_admin_metrics_counts_what_monitoring_watches(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                      tenant_b: Tenant, pyflows_role_dsn: Callable[[str], str]) -> None:
    monitored_world(owner, tenant_a, tenant_b)
    with psycopg.connect(pyflows_role_dsn("admin"), autocommit=True) as conn:
        m = Flows(conn).admin_metrics()
    assert m.incomplete_flows == {"paused": 1, "running": 1}
    assert m.idle_flows == 1 and 7100 < m.oldest_idle_seconds < 7300 and m.active_lease_seconds == 300
    assert (m.file_cleanup_pending, m.file_cleanup_failed) == (1, 1)  # the deleted flow's stored file
    assert 590 < m.file_cleanup_oldest_seconds < 700
    assert m.purges_running == 1 and 0 <= m.oldest_purge_seconds < 60
    assert m.audit_events_last_day == {"flow.purge": 1, "sql.delete": 1}
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn, pytest.raises(Forbidden):
        Flows(conn).admin_metrics()


def test_metrics_in_prometheus_format_for_admins(served: TestClient, owner: psycopg.Connection[Any],
                                                 tenant_a: Tenant, tenant_b: Tenant) -> None:
    monitored_world(owner, tenant_a, tenant_b)
    is_problem(served.get("/metrics", headers=bearer(token(tenant_a))), 403, "PF403")
    is_problem(served.get("/metrics"), 401, "PF401")
    scraped = served.get("/metrics", headers=bearer(token(tenant_a, pyflows_admin=True)))
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain; version=")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped.text) for s in family.samples}
    assert samples[("pyflows_incomplete_flows", (("status", "paused"),))] == 1
    assert samples[("pyflows_incomplete_flows", (("status", "running"),))] == 1
    assert samples[("pyflows_idle_flows", ())] == 1 and samples[("pyflows_oldest_idle_flow_seconds", ())] > 7100
    assert samples[("pyflows_file_cleanup_pending", ())] == 1 and samples[("pyflows_file_cleanup_failed", ())] == 1
    assert samples[("pyflows_purges_running", ())] == 1
    assert samples[("pyflows_audit_events_last_day", (("action", "flow.purge"),))] == 1


def test_the_reference_in_the_docs_is_the_openapi_schema() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "http-api.md").read_text()
    section = page.split(http.OPENAPI_START, 1)[1].split(http.OPENAPI_END, 1)[0]
    assert section.strip() == http.openapi_markdown().strip(), "run: python -m pyflows.http docs/http-api.md"
    spec = http.create_app("", http.JWTCaller(SECRET)).openapi()
    for operations in spec["paths"].values():  # every error is documented as a problem
        for operation in operations.values():
            for status in ("401", "404", "409", "422", "423"):
                assert list(operation["responses"][status]["content"]) == [PROBLEM]


# Bodies and queries for routes that need them; every route of the router must be covered here, so that a
# new route is attacked too (the test fails on a route it does not know).
ATTACK: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/flows/gate"): {}, ("GET", "/flows"): {"params": {"filter": "all"}}, ("GET", "/flows/incomplete"): {},
    ("POST", "/imports"): {"json": {"filename": "b.csv", "storage_uri": "s3://b/b.csv", "byte_size": 1}},
    ("GET", "/flows/{flow_id}/details"): {}, ("GET", "/flows/{flow_id}/impact"): {},
    ("POST", "/flows/{flow_id}/progress"): {"json": {"phase": "data_import"}},
    ("POST", "/flows/{flow_id}/resume"): {},
    ("DELETE", "/flows/{flow_id}"): {"params": {"reason": "not mine", "force": "true"}},
    ("POST", "/flows/batch-delete"): {"json": {"flow_ids": ["{flow_id}"], "reason": "x", "force": True}},
    ("GET", "/audit"): {}, ("GET", "/audit/{event_id}"): {}, ("POST", "/audit/{event_id}/restore"): {},
    ("GET", "/admin/flows/incomplete"): {}, ("GET", "/metrics"): {},
}


def test_every_route_keeps_a_caller_to_its_own_tenant(client: TestClient, owner: psycopg.Connection[Any],
                                                      tenant_a: Tenant) -> None:
    """Every route of the routers, called by tenant B with A's flow and A's audit
    event wherever it takes an id: a 404 (or 403 for the admin routes, B not being an admin), or B's own
    empty answer; A's rows unchanged."""
    with owner.transaction():
        kept = write_flow_tree(owner, tenant_a, status="paused")
        gone = write_flow_tree(owner, tenant_a, status="completed", name="gone")
    a = {"x-tenant": "a"}
    event = client.delete(f"/flows/{gone.flow_id}?reason=for+the+event&force=true", headers=a).json()["event_id"]
    before = fingerprint(owner, tenant_a.client_id)
    routes = {(method, route.path) for route in [*http.router.routes, *http.admin_router.routes]
              if isinstance(route, APIRoute) for method in route.methods}
    assert routes == set(ATTACK), "a route was added or removed: say how to attack it in ATTACK"
    for (method, path), request in ATTACK.items():
        url = path.replace("{flow_id}", str(kept.flow_id)).replace("{event_id}", str(event))
        body = json.loads(json.dumps(request.get("json")).replace("{flow_id}", str(kept.flow_id)))
        response = client.request(method, url, headers={"x-tenant": "b"}, json=body, params=request.get("params"))
        if "{" in path or path == "/flows/batch-delete":
            is_problem(response, 404, "PF404")
        elif path.startswith("/admin") or path == "/metrics":
            is_problem(response, 403, "PF403")
        else:
            assert response.status_code in (200, 201), (path, response.text)
            assert str(tenant_a.client_id) not in response.text and str(kept.flow_id) not in response.text
    assert fingerprint(owner, tenant_a.client_id) == before


def test_a_worker_refuses_to_build_without_its_dsn_or_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYFLOWS_SERVE_DSN", "PYFLOWS_JWT_SECRET", "PYFLOWS_JWT_PUBLIC_KEY", "PYFLOWS_ADMIN_DSN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="PYFLOWS_SERVE_DSN is not set"):
        http.app_from_environment()
    monkeypatch.setenv("PYFLOWS_SERVE_DSN", "host=/nonexistent")
    with pytest.raises(ValueError, match="one of them"):
        http.app_from_environment()
    monkeypatch.setenv("PYFLOWS_JWT_SECRET", SECRET)
    assert http.app_from_environment().state.pyflows_authenticate.algorithms == ["HS256"]
