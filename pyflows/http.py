"""pyflows over HTTP: a FastAPI router for the flow-management calls, with RFC 9457 problem details.

Install the extra (``pip install 'pyflows[http]'``). Each route is one call of the SQL API through
:class:`~pyflows.api.AsyncFlows` over an ``AsyncConnectionPool`` of the application login. Who is
calling (tenant, engagement, actor) is what the :func:`caller` dependency returns: the embedding
application overrides it with its own authentication, and nothing in a request (a header, a query
parameter) can name another tenant. Without an override every route is 401.

    pool = AsyncConnectionPool(dsn, open=False)
    app = FastAPI(lifespan=...)                      # opens and closes the pool
    pyflows.http.install(app, AsyncFlows(pool))      # the routes, and the problem+json errors
    app.dependency_overrides[pyflows.http.caller] = my_caller   # returns a pyflows.http.Caller

`pyflows serve` runs :func:`create_app`: the same routes at the root, callers authenticated by bearer
JWTs (:class:`JWTCaller`). docs/http-api.md lists the routes, their bodies and their errors.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api import AsyncFlows, AsyncTenantFlows
from .errors import (
    FlowBusy,
    FlowNotFound,
    Forbidden,
    IncompleteFlowExists,
    InvalidRequest,
    NoContext,
    PyflowsError,
)
from .models import (
    AdminFlowRow,
    AuditEvent,
    BatchItem,
    DeleteResult,
    FlowDetails,
    FlowRow,
    FlowSummary,
    Gate,
    Impact,
    Metrics,
    RestoreResult,
    ResumeResult,
    StartedImport,
)

__all__ = ["Caller", "caller", "router", "admin_router", "install", "create_app", "app_from_environment", "JWTCaller",
           "Problem", "PROBLEM_JSON", "STATUS_OF", "openapi_markdown"]

PROBLEM_JSON = "application/problem+json"
# The HTTP status of each pyflows error class (docs/http-api.md); any other error is a 500 without
# its text, and the server's log has it.
STATUS_OF: dict[type[PyflowsError], int] = {
    NoContext: 401,
    Forbidden: 403,
    FlowNotFound: 404,
    IncompleteFlowExists: 409,
    InvalidRequest: 422,
    FlowBusy: 423,
}
CONSOLE_PREFIX, SESSION_COOKIE = "/console", "pyflows_session"  # the operator console (pyflows.console)
RETRY_AFTER_SECONDS = 1  # what a 423 (another transaction holds the flow's rows) asks a client to wait


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who calls: the tenant context every route acts in, and the actor the audit records."""

    client_id: uuid.UUID
    engagement_id: uuid.UUID
    actor: str
    admin: bool = False  # may use the admin routes (across tenants), with the admin login's pool


async def caller(request: Request) -> Caller:
    """The calling tenant and actor. The embedding application overrides this dependency with its own
    authentication (``app.dependency_overrides[caller] = ...``); until it does, every route is 401.
    ``create_app`` instead keeps its authenticator on the application (FastAPI analyses an overriding
    dependency again on every request: about 0.5 ms a call, measured)."""
    authenticate = getattr(request.app.state, "pyflows_authenticate", None)
    if authenticate is None:
        raise NoContext("no caller: the application has not said how callers are authenticated",
                        hint="Override pyflows.http.caller with a dependency that returns a pyflows.http.Caller.")
    authorization = request.headers.get("authorization")
    if authorization is None and request.url.path.startswith(CONSOLE_PREFIX + "/"):
        # The console's sign-in form keeps the token in a cookie that browsers send to /console only
        # (HttpOnly, SameSite=Strict, Path=/console); its state-changing requests are CSRF-checked.
        session = request.cookies.get(SESSION_COOKIE)
        authorization = f"Bearer {session}" if session else None
    who = await authenticate(authorization)
    assert isinstance(who, Caller)
    return who


def _flows(request: Request) -> AsyncFlows:
    flows = getattr(request.app.state, "pyflows", None)
    if not isinstance(flows, AsyncFlows):
        raise RuntimeError("pyflows.http.install(app, flows) was not called for this application")
    return flows


async def _tenant(request: Request, who: Annotated[Caller, Depends(caller)]) -> AsyncTenantFlows:
    return _flows(request).tenant(who.client_id, who.engagement_id, who.actor)


# The dependencies are coroutines (they never block): FastAPI runs a plain function's dependency in its
# thread pool, a hop there and back on every request.
Tenant = Annotated[AsyncTenantFlows, Depends(_tenant)]
FlowId = uuid.UUID


class ImportRequest(BaseModel):
    filename: str = Field(min_length=1, max_length=1000)
    storage_uri: str = Field(min_length=1, max_length=2000)
    byte_size: int = Field(ge=0)
    name: str | None = Field(default=None, max_length=200, description="the new flow's name (the filename if absent)")


class ProgressRequest(BaseModel):
    phase: str = Field(min_length=1, max_length=100)
    insight: Any = None


class BatchDeleteRequest(BaseModel):
    flow_ids: list[uuid.UUID] = Field(min_length=1, max_length=10_000)
    reason: str = Field(min_length=1, max_length=1000)
    force: bool = False
    atomic: bool = True
    dry_run: bool = False


class Problem(BaseModel):
    """An RFC 9457 problem, as every error is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: str | None = Field(default=None, description="the PF SQLSTATE (PF401, PF404, PF409, ...)")
    hint: str | None = None
    context: dict[str, Any] | None = Field(default=None, description="the error's JSON DETAIL: for a 409, "
                                                                     "the blocking flow")
    errors: list[dict[str, Any]] | None = Field(default=None, description="for a request that does not validate")


_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": text, "content": {PROBLEM_JSON: {}}}
    for status, text in ((401, "no caller, or a bad token"), (403, "not allowed"), (404, "no such flow or event here"),
                         (409, "the context has an incomplete flow (context: that flow)"),
                         (422, "a request or value that is refused"),
                         (423, "another transaction holds the flow's rows (Retry-After)"))}

router = APIRouter(responses=_PROBLEMS)


@router.get("/flows/gate", response_model=Gate, summary="Whether a new import may start here")
async def gate(flows: Tenant) -> Gate:
    return await flows.gate()


@router.post("/imports", response_model=StartedImport, status_code=201,
             summary="Start a flow with its first import (409 while the context has an incomplete flow)")
async def start_import(body: ImportRequest, flows: Tenant) -> StartedImport:
    return await flows.start_import(body.filename, body.storage_uri, body.byte_size, flow_name=body.name)


@router.get("/flows", response_model=list[FlowRow], summary="The context's flows")
async def list_flows(flows: Tenant, filter: str = "all",
                     limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                     offset: Annotated[int, Query(ge=0)] = 0) -> list[FlowRow]:
    return await flows.list_flows(filter, limit, offset)


@router.get("/flows/incomplete", response_model=list[FlowRow], summary="The context's incomplete flows")
async def list_incomplete(flows: Tenant, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                          offset: Annotated[int, Query(ge=0)] = 0) -> list[FlowRow]:
    return await flows.list_incomplete(limit, offset)


@router.get("/flows/{flow_id}/details", response_model=FlowDetails, summary="One flow, its phases and imports")
async def details(flow_id: FlowId, flows: Tenant) -> FlowDetails:
    return await flows.details(flow_id)


@router.post("/flows/{flow_id}/progress", response_model=FlowSummary, summary="Record a completed phase")
async def progress(flow_id: FlowId, body: ProgressRequest, flows: Tenant) -> FlowSummary:
    return await flows.record_progress(flow_id, body.phase, body.insight)


@router.post("/flows/{flow_id}/resume", response_model=ResumeResult, summary="Resume a paused or failed flow")
async def resume(flow_id: FlowId, flows: Tenant) -> ResumeResult:
    return await flows.resume(flow_id)


@router.get("/flows/{flow_id}/impact", response_model=Impact, summary="What deleting the flow would remove")
async def impact(flow_id: FlowId, flows: Tenant) -> Impact:
    return await flows.deletion_impact(flow_id)


@router.delete("/flows/{flow_id}", response_model=DeleteResult,
               summary="Delete a flow and everything it created, audited and restorable")
async def delete(flow_id: FlowId, flows: Tenant,
                 reason: Annotated[str, Query(min_length=1, max_length=1000)],
                 force: bool = False, dry_run: bool = False) -> DeleteResult:
    return await flows.delete(flow_id, reason, force=force, dry_run=dry_run)


@router.post("/flows/batch-delete", response_model=list[BatchItem],
             summary="Delete several flows: all or nothing (atomic), or each on its own")
async def batch_delete(body: BatchDeleteRequest, flows: Tenant) -> list[BatchItem]:
    return await flows.delete_many(body.flow_ids, body.reason, force=body.force, atomic=body.atomic,
                                   dry_run=body.dry_run)


@router.get("/audit", response_model=list[AuditEvent], summary="The context's audit trail, newest first")
async def audit(flows: Tenant, flow_id: uuid.UUID | None = None, since: datetime | None = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditEvent]:
    return await flows.audit_events(flow_id, since, limit)


@router.get("/audit/{event_id}", response_model=AuditEvent, summary="One audit event")
async def audit_event(event_id: int, flows: Tenant) -> AuditEvent:
    return await flows.audit_event(event_id)


@router.post("/audit/{event_id}/restore", response_model=RestoreResult,
             summary="Put back what a deletion event removed")
async def restore(event_id: int, flows: Tenant) -> RestoreResult:
    return await flows.restore(event_id)


admin_router = APIRouter(responses=_PROBLEMS)


def admin_flows(request: Request) -> AsyncFlows | None:
    """The admin login's AsyncFlows that install() was given, or None (the admin routes are off)."""
    flows = getattr(request.app.state, "pyflows_admin", None)
    return flows if isinstance(flows, AsyncFlows) else None


async def _admin(request: Request, who: Annotated[Caller, Depends(caller)]) -> AsyncFlows:
    if not who.admin:
        raise Forbidden("the admin routes are for admin callers")
    flows = admin_flows(request)
    if flows is None:
        raise Forbidden("this application has no admin login: the admin routes are off",
                        hint="Give install() (or pyflows serve --admin-dsn) a pool of a pyflows_admin login.")
    return flows


@admin_router.get("/admin/flows/incomplete", response_model=list[AdminFlowRow],
                  summary="Incomplete flows of every tenant, idle at least idle_for (admins)")
async def admin_incomplete(flows: Annotated[AsyncFlows, Depends(_admin)],
                           idle_for: timedelta | None = None) -> list[AdminFlowRow]:
    return await flows.admin_list_incomplete(idle_for)


class _Snapshot(Collector):
    """One scrape's figures, from one call of pyflows.admin_metrics(), as Prometheus gauges."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Any:
        m = self.m
        by_status = GaugeMetricFamily("pyflows_incomplete_flows", "Incomplete flows, by status.", labels=["status"])
        for status, n in sorted(m.incomplete_flows.items()):
            by_status.add_metric([status], n)
        yield by_status
        for name, text, value in (
                ("pyflows_idle_flows", "Incomplete flows with no activity for longer than the active lease.",
                 m.idle_flows),
                ("pyflows_oldest_idle_flow_seconds", "How long the longest-idle of them has been idle.",
                 m.oldest_idle_seconds),
                ("pyflows_active_lease_seconds", "The active lease (pyflows.active_lease).", m.active_lease_seconds),
                ("pyflows_file_cleanup_pending", "Stored files queued for removal, not removed yet.",
                 m.file_cleanup_pending),
                ("pyflows_file_cleanup_failed", "Of those, the ones an earlier removal failed for.",
                 m.file_cleanup_failed),
                ("pyflows_file_cleanup_oldest_seconds", "Age of the oldest pending removal.",
                 m.file_cleanup_oldest_seconds),
                ("pyflows_purges_running", "Flows being purged (status deleting).", m.purges_running),
                ("pyflows_oldest_purge_seconds", "How long the oldest running purge has run.",
                 m.oldest_purge_seconds)):
            yield GaugeMetricFamily(name, text, value=float(value))
        events = GaugeMetricFamily("pyflows_audit_events_last_day", "Audit events of the last 24 hours, by action.",
                                   labels=["action"])
        for action, n in sorted(m.audit_events_last_day.items()):
            events.add_metric([action], n)
        yield events


@admin_router.get("/metrics", response_class=Response,
                  summary="Prometheus metrics from pyflows.admin_metrics() (admins)")
async def metrics(flows: Annotated[AsyncFlows, Depends(_admin)]) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(await flows.admin_metrics()))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem: type, title, status, detail, and the extension members given."""
    body = {"type": "about:blank", "title": title, "status": status, **({"detail": detail} if detail else {}),
            **extra}
    headers = ({"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 423
               else {"WWW-Authenticate": "Bearer"} if status == 401 else None)
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _pyflows_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PyflowsError)
    status = next((s for cls, s in STATUS_OF.items() if isinstance(exc, cls)), None)
    if status is None:
        return problem(500, "Internal Server Error")
    extra: dict[str, Any] = {"code": exc.sqlstate}
    if exc.hint:
        extra["hint"] = exc.hint
    if exc.detail:
        extra["context"] = exc.detail  # the PF error's JSON DETAIL: for a 409, the blocking flow
    return problem(status, _TITLES[status], exc.message, **extra)


def _validation_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]
    return problem(422, "Unprocessable Content", "the request does not match what the route takes",
                   code="PF422", errors=errors)


def _http_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail))


_TITLES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           422: "Unprocessable Content", 423: "Locked", 500: "Internal Server Error"}


def install(app: FastAPI, flows: AsyncFlows, prefix: str = "", admin: AsyncFlows | None = None) -> None:
    """Mount the routes under ``prefix`` and answer errors as problem+json: pyflows' errors with their
    status (STATUS_OF), a request that does not validate with 422, any other HTTP error in the same
    shape. ``flows`` serves every request (an AsyncFlows over the application login's pool); ``admin``,
    over a pool of a pyflows_admin login, serves the admin routes to callers with ``admin`` set (403
    without it)."""
    app.state.pyflows = flows
    app.state.pyflows_admin = admin
    app.include_router(router, prefix=prefix)
    app.include_router(admin_router, prefix=prefix)
    app.add_exception_handler(PyflowsError, _pyflows_problem)
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    _problems_in_openapi(app)


def _problems_in_openapi(app: FastAPI) -> None:
    """The application's OpenAPI schema says the errors are application/problem+json (FastAPI would list
    a response model under application/json)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        spec = generate()
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    if PROBLEM_JSON in content and "application/json" in content:
                        content[PROBLEM_JSON] = content.pop("application/json")
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


# What a public key may sign with: never HMAC (a public key used as a shared secret would let anyone
# who has it sign), never "none".
ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class JWTCaller:
    """The caller from a bearer JWT: an HS256 ``secret``, or a ``public_key`` (PEM) for RS/PS/ES/EdDSA.
    Claims: ``client_id`` and ``engagement_id`` (UUIDs), ``sub`` (the actor), ``exp`` if present (checked),
    ``pyflows_admin: true`` for the admin routes. A missing, malformed, badly signed or expired token is
    401."""

    def __init__(self, secret: str | None = None, public_key: str | None = None, cache_size: int = 4096) -> None:
        if bool(secret) == bool(public_key):
            raise ValueError("give an HS256 secret or a public key, one of them")
        self.key: str = secret or public_key or ""
        self.algorithms = ["HS256"] if secret else ASYMMETRIC
        # A token is checked once and its caller kept while it is valid: PyJWT's checks cost about 0.3 ms a
        # request (measured), and a client sends the same token with every request. The key is the whole
        # token, signature included, so only a token that was checked can hit; its exp is checked again on
        # every hit; a refused token is never kept (lru_cache keeps no exception).
        self._verified = functools.lru_cache(maxsize=cache_size)(self._verify)

    @classmethod
    def from_environment(cls) -> JWTCaller:
        """The key of ``pyflows serve`` and its workers: PYFLOWS_JWT_SECRET (HS256, at least 32 bytes), or
        PYFLOWS_JWT_PUBLIC_KEY (a PEM, or the path of a file holding one). ValueError, saying what to set,
        for no key, both, a short secret or a public key that is neither."""
        secret = os.environ.get("PYFLOWS_JWT_SECRET") or None
        public_key = os.environ.get("PYFLOWS_JWT_PUBLIC_KEY") or None
        if not secret and not public_key:
            raise ValueError("no key to check callers' tokens with: set PYFLOWS_JWT_SECRET (HS256) or "
                             "PYFLOWS_JWT_PUBLIC_KEY (PEM), one of them; pyflows serve does not start without one")
        if secret and public_key:
            raise ValueError("PYFLOWS_JWT_SECRET and PYFLOWS_JWT_PUBLIC_KEY are both set: give one")
        if secret and len(secret.encode()) < 32:
            raise ValueError("PYFLOWS_JWT_SECRET is shorter than 32 bytes: too short for HS256")
        if public_key and not public_key.lstrip().startswith("-----BEGIN"):
            if not os.path.isfile(public_key):
                raise ValueError(f"PYFLOWS_JWT_PUBLIC_KEY is neither a PEM public key nor a file: {public_key!r}")
            with open(public_key, encoding="utf-8") as f:
                public_key = f.read()
        return cls(secret, public_key)

    async def __call__(self, authorization: Annotated[str | None, Header()] = None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NoContext("a bearer token is required (Authorization: Bearer <JWT>)")
        who, expires = self._verified(token.strip())
        if expires is not None and time.time() >= expires:
            raise NoContext("the bearer token was refused: Signature has expired")
        return who

    def _verify(self, token: str) -> tuple[Caller, float | None]:
        """The caller a token names and when it expires (None: never), or NoContext if it is refused."""
        try:
            claims = jwt.decode(token, self.key, algorithms=self.algorithms,
                                options={"require": ["sub", "client_id", "engagement_id"]})
            who = Caller(uuid.UUID(str(claims["client_id"])), uuid.UUID(str(claims["engagement_id"])),
                         str(claims["sub"]), claims.get("pyflows_admin") is True)
        except (jwt.PyJWTError, ValueError) as exc:
            raise NoContext(f"the bearer token was refused: {exc}") from exc
        if not who.actor.strip():
            raise NoContext("the bearer token was refused: its sub (the actor) is empty")
        expires = claims.get("exp")
        return who, None if expires is None else float(expires)


def create_app(dsn: str, authenticate: Callable[[str | None], Awaitable[Caller]], admin_dsn: str | None = None,
               pool_size: int = 10, console_secret: bytes | None = None) -> FastAPI:
    """The standalone application (``pyflows serve``): the routes at the root over a pool of ``dsn`` (the
    application login), callers from ``authenticate`` (given the Authorization header, e.g. a JWTCaller), the admin
    routes over a pool of ``admin_dsn`` when given, and the operator console under /console (pyflows.console;
    ``console_secret`` keys its CSRF tokens, the same in every worker)."""
    from . import console

    pool = AsyncConnectionPool(dsn, open=False, min_size=1, max_size=pool_size, name="pyflows-http")
    admin_pool = (AsyncConnectionPool(admin_dsn, open=False, min_size=1, max_size=2, name="pyflows-http-admin")
                  if admin_dsn else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        if admin_pool is not None:
            await admin_pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()
            if admin_pool is not None:
                await admin_pool.close()

    app = FastAPI(title="pyflows", lifespan=lifespan)
    install(app, AsyncFlows(pool), admin=None if admin_pool is None else AsyncFlows(admin_pool))
    console.install(app, console_secret)
    app.state.pyflows_authenticate = authenticate
    return app


def app_from_environment() -> FastAPI:
    """``create_app`` from the environment ``pyflows serve --workers N`` sets for its worker processes:
    PYFLOWS_SERVE_DSN, PYFLOWS_SERVE_POOL_SIZE, PYFLOWS_ADMIN_DSN, PYFLOWS_CONSOLE_SECRET (the console's CSRF
    key, shared by the workers) and the JWT key (JWTCaller.from_environment).
    Refuses to build an application without a DSN or a key."""
    dsn = os.environ.get("PYFLOWS_SERVE_DSN")
    if dsn is None:
        raise RuntimeError("PYFLOWS_SERVE_DSN is not set: start the workers with pyflows serve --workers N")
    return create_app(dsn, JWTCaller.from_environment(), os.environ.get("PYFLOWS_ADMIN_DSN") or None,
                      int(os.environ.get("PYFLOWS_SERVE_POOL_SIZE", "10")),
                      console_secret=console_secret_from_environment())


def console_secret_from_environment() -> bytes | None:
    """PYFLOWS_CONSOLE_SECRET (at least 32 characters), the key of the console's CSRF tokens; None when unset
    (the console makes a random one). ValueError for a shorter one."""
    secret = os.environ.get("PYFLOWS_CONSOLE_SECRET") or None
    if secret is not None and len(secret.encode()) < 32:
        raise ValueError("PYFLOWS_CONSOLE_SECRET is shorter than 32 bytes: give at least 32 (openssl rand -hex 32)")
    return secret.encode() if secret else None


# ---- docs/http-api.md's reference, from the OpenAPI schema --------------------------------------------------

OPENAPI_START, OPENAPI_END = "<!-- openapi:start -->", "<!-- openapi:end -->"


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return f"`{schema['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def openapi_markdown() -> str:
    """The routes and schemas of ``pyflows serve``'s OpenAPI schema as Markdown: docs/http-api.md's
    reference section (``python -m pyflows.http docs/http-api.md`` rewrites it; a test keeps them equal)."""
    spec = create_app("", JWTCaller("openapi" * 8)).openapi()
    out = ["## Reference", "", "Generated from the OpenAPI schema of `pyflows serve` (`python -m pyflows.http "
           "docs/http-api.md`).", ""]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            out += [f"### `{method.upper()} {path}`", "", f"{op['summary']}.", ""]
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | default |", "|---|---|---|---|---|"]
                out += [f"| `{p['name']}` | {p['in']} | {_type(p['schema'])} | {'yes' if p.get('required') else 'no'} "
                        f"| {p['schema'].get('default', '')} |" for p in params]
                out.append("")
            body = op.get("requestBody")
            if body:
                out += [f"Body: {_type(body['content']['application/json']['schema'])}.", ""]
            for status, response in op["responses"].items():
                content = response.get("content", {})
                media = next(iter(content), None)
                schema = _type(content[media]["schema"]) if media and content[media].get("schema") else ""
                out.append(f"- {status} {response['description']}" + (f": {schema} ({media})" if schema else ""))
            out.append("")
    out += ["### Schemas", ""]
    for name, schema in spec["components"]["schemas"].items():
        if name in ("HTTPValidationError", "ValidationError"):
            continue
        required = set(schema.get("required", []))
        out += [f"#### `{name}`", "", "| field | type | required |", "|---|---|---|"]
        out += [f"| `{field}` | {_type(prop)} | {'yes' if field in required else 'no'} |"
                for field, prop in schema.get("properties", {}).items()]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _rewrite(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(OPENAPI_START) + len(OPENAPI_START), text.index(OPENAPI_END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text[:start] + "\n" + openapi_markdown() + text[end:])


if __name__ == "__main__":
    import sys

    _rewrite(sys.argv[1]) if len(sys.argv) > 1 else print(openapi_markdown(), end="")
