"""The operator console: server-rendered pages over the HTTP layer's calls (docs/console.md).

``pyflows serve`` mounts it under ``/console``; an application that includes pyflows.http's router adds it
with :func:`install`. Every page acts as the caller that :func:`pyflows.http.caller` returns (the same
dependency as the JSON routes: the embedding application's own authentication, or under ``pyflows serve``
the bearer JWT, from the ``Authorization`` header or from the sign-in form's cookie). Pages are Jinja2
templates with autoescaping; the only script is htmx, served from the package; every response carries a
Content-Security-Policy that refuses inline scripts and styles; every state-changing request carries a
CSRF token bound to the caller (not needed with an ``Authorization`` header, which a browser never sends
on its own).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import http
from ..api import AsyncFlows, AsyncTenantFlows
from ..errors import Forbidden, IncompleteFlowExists, InvalidRequest, NoContext, PyflowsError

__all__ = ["router", "install", "SESSION_COOKIE", "CSP"]

PREFIX = http.CONSOLE_PREFIX
SESSION_COOKIE = http.SESSION_COOKIE  # the sign-in form's JWT: HttpOnly, SameSite=Strict, Path=/console
CSRF_FIELD, CSRF_HEADER = "csrf", "x-csrf-token"
PAGE = 20
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
_STATIC = {"htmx.min.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}

_env = Environment(loader=PackageLoader("pyflows.console"), autoescape=select_autoescape(default=True),
                   trim_blocks=True, lstrip_blocks=True)


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    return _duration(datetime.now(UTC) - when)


def _duration(span: timedelta | None) -> str:
    if span is None:
        return ""
    seconds = max(0, int(span.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _percent(value: Decimal | float | int) -> int:
    return max(0, min(100, round(float(value))))


_env.filters.update(ago=_ago, duration=_duration, percent=_percent)
_env.globals.update(prefix=PREFIX)


def _static(name: str) -> bytes:
    return importlib.resources.files(__package__).joinpath("static", name).read_bytes()


# ---- who calls, and the CSRF token bound to them --------------------------------------------------------


def _secret(request: Request) -> bytes:
    secret = getattr(request.app.state, "pyflows_console_secret", None)
    if not isinstance(secret, bytes) or len(secret) < 32:
        raise RuntimeError("pyflows.console.install(app) was not called for this application")
    return secret


def csrf_token(request: Request, who: http.Caller) -> str:
    """The token every state-changing request must carry: an HMAC of the caller (and of the session cookie,
    when there is one) under the console's secret. A page of another site can neither read nor make it."""
    message = "\n".join([str(who.client_id), str(who.engagement_id), who.actor, str(who.admin),
                         request.cookies.get(SESSION_COOKIE, "")])
    return hmac.new(_secret(request), message.encode(), hashlib.sha256).hexdigest()


async def _checked(request: Request, who: Annotated[http.Caller, Depends(http.caller)]) -> http.Caller:
    """The caller of a state-changing request, once its CSRF token is checked (403 without it). A request
    with an Authorization header needs none: a browser never adds that header to another site's request."""
    if "authorization" not in request.headers:
        form = await request.form()
        sent = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)
        if not isinstance(sent, str) or not hmac.compare_digest(sent, csrf_token(request, who)):
            raise Forbidden("the form's CSRF token is missing or wrong: reload the page and try again")
    return who


Who = Annotated[http.Caller, Depends(http.caller)]
Checked = Annotated[http.Caller, Depends(_checked)]


def _flows(request: Request, who: http.Caller) -> AsyncTenantFlows:
    return http._flows(request).tenant(who.client_id, who.engagement_id, who.actor)


def _admin_flows(request: Request, who: http.Caller) -> AsyncFlows | None:
    return http.admin_flows(request) if who.admin else None


def page(request: Request, template: str, who: http.Caller | None, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page with the console's security headers."""
    if who is not None:
        context.update(who=who, csrf=csrf_token(request, who), admin_on=_admin_flows(request, who) is not None)
    html = _env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def _see(path: str, **params: Any) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"{PREFIX}{path}{'?' + query if query else ''}", status_code=303, headers=_HEADERS)


router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in _STATIC:
        raise StarletteHTTPException(404, "no such file")
    return Response(_static(name), media_type=_STATIC[name],
                    headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


# ---- sign in and out (pyflows serve: a JWT kept in an HttpOnly cookie) -----------------------------------


def _same_origin(request: Request) -> bool:
    """Whether a browser says the request comes from this site (Sec-Fetch-Site, else Origin); a client that
    sends neither (a script) is not a browser posting another site's form."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", None)


@router.post("/login")
async def login(request: Request, token: Annotated[str, Form(min_length=1, max_length=16384)]) -> Response:
    if not _same_origin(request):
        raise Forbidden("sign in from this site's own form")
    authenticate: Callable[[str | None], Awaitable[http.Caller]] | None = getattr(
        request.app.state, "pyflows_authenticate", None)
    if authenticate is None:
        raise Forbidden("this application signs callers in itself: the console has no sign-in form here")
    try:
        await authenticate(f"Bearer {token.strip()}")
    except NoContext as exc:
        return page(request, "login.html", None, status=401, error=exc.message)
    response = _see("/")
    response.set_cookie(SESSION_COOKIE, token.strip(), httponly=True, samesite="strict", path=PREFIX,
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request, who: Checked) -> Response:
    response = _see("/login")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


# ---- the tenant's flows, the gate and the upload panel ---------------------------------------------------

# list_flows' filters (it refuses any other with PF422), and what the page calls them.
FILTERS = {"incomplete": "Incomplete", "all": "All", "terminal": "Finished"}


@router.get("/", response_class=HTMLResponse)
async def flows_page(request: Request, who: Who, filter: Annotated[str, Query()] = "incomplete",
                     offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    flows = _flows(request, who)
    gate = await flows.gate()
    rows = await flows.list_flows(filter, PAGE + 1, offset)
    return page(request, "flows.html", who, gate=gate, rows=rows[:PAGE], more=len(rows) > PAGE, filter=filter,
                filters=FILTERS, offset=offset, page_size=PAGE)


@router.post("/imports")
async def start_import(request: Request, who: Checked, filename: Annotated[str, Form(min_length=1, max_length=1000)],
                       storage_uri: Annotated[str, Form(min_length=1, max_length=2000)],
                       byte_size: Annotated[int, Form(ge=0)],
                       name: Annotated[str | None, Form(max_length=200)] = None) -> Response:
    started = await _flows(request, who).start_import(filename, storage_uri, byte_size, flow_name=name or None)
    return _see(f"/flows/{started.flow_id}", done="started")


# ---- one flow: timeline, resume, delete with its impact -------------------------------------------------


# What a page says after an action redirected to it: a fixed text by name (a link cannot put words of its
# own on a page), and the number of the audit event it names, if any.
NOTICES = {"started": "The import started: this is its flow.", "resumed": "Resumed.",
           "restored": "Restored by audit event {event}."}
Done = Annotated[str | None, Query(pattern="^(" + "|".join(NOTICES) + ")$")]


def _notice(done: str | None, event: int | None) -> str | None:
    return NOTICES[done].format(event=event) if done else None


@router.get("/flows/{flow_id}", response_class=HTMLResponse)
async def flow_page(request: Request, who: Who, flow_id: uuid.UUID, done: Done = None,
                    event: int | None = None) -> HTMLResponse:
    details = await _flows(request, who).details(flow_id)
    return page(request, "flow.html", who, d=details, f=details.flow, notice=_notice(done, event))


@router.post("/flows/{flow_id}/resume")
async def resume(request: Request, who: Checked, flow_id: uuid.UUID) -> Response:
    await _flows(request, who).resume(flow_id)
    return _see(f"/flows/{flow_id}", done="resumed")


def _force_allowed(safety: Any) -> bool:
    """Force is offered only where the verdict allows it: not safe, and every blocker may be overridden."""
    return not safety.safe and bool(safety.blockers) and all(b.overridable for b in safety.blockers)


@router.get("/flows/{flow_id}/delete", response_class=HTMLResponse)
async def delete_form(request: Request, who: Who, flow_id: uuid.UUID) -> HTMLResponse:
    impact = await _flows(request, who).deletion_impact(flow_id)
    return page(request, "delete.html", who, impact=impact, f=impact.flow, force_allowed=_force_allowed(impact.safety))


@router.post("/flows/{flow_id}/delete", response_class=HTMLResponse)
async def delete(request: Request, who: Checked, flow_id: uuid.UUID,
                 reason: Annotated[str, Form(min_length=1, max_length=1000)],
                 confirm: Annotated[str, Form(pattern="^yes$")], force: Annotated[bool, Form()] = False) -> Response:
    result = await _flows(request, who).delete(flow_id, reason, force=force)
    return page(request, "deleted.html", who, results=[result])


# ---- batch -----------------------------------------------------------------------------------------------

BatchIds = Annotated[list[uuid.UUID], Query(alias="flow_id", min_length=1, max_length=200)]


@router.get("/batch", response_class=HTMLResponse)
async def batch_form(request: Request, who: Who, flow_ids: BatchIds) -> HTMLResponse:
    flows = _flows(request, who)
    impacts = [await flows.deletion_impact(flow_id) for flow_id in dict.fromkeys(flow_ids)]
    totals: dict[str, int] = {}
    for impact in impacts:
        for table, n in impact.counts.items():
            totals[table] = totals.get(table, 0) + n
    return page(request, "batch.html", who, impacts=impacts, counts=totals,
                total_rows=sum(i.total_rows for i in impacts), files=sum(i.files.count for i in impacts),
                external=sum(i.external_dependencies for i in impacts),
                force_allowed=any(_force_allowed(i.safety) for i in impacts))


@router.post("/batch", response_class=HTMLResponse)
async def batch(request: Request, who: Checked, flow_id: Annotated[list[uuid.UUID], Form(min_length=1, max_length=200)],
                reason: Annotated[str, Form(min_length=1, max_length=1000)],
                confirm: Annotated[str, Form(pattern="^yes$")],
                mode: Annotated[str, Form(pattern="^(atomic|each)$")] = "atomic",
                force: Annotated[bool, Form()] = False) -> HTMLResponse:
    items = await _flows(request, who).delete_many(list(dict.fromkeys(flow_id)), reason, force=force,
                                                   atomic=mode == "atomic")
    return page(request, "batch_result.html", who, items=items, atomic=mode == "atomic")


# ---- the audit trail and restore -------------------------------------------------------------------------


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(request: Request, who: Who, flow_id: uuid.UUID | None = None) -> HTMLResponse:
    events = await _flows(request, who).audit_events(flow_id, None, 100)
    return page(request, "audit.html", who, events=events, flow_id=flow_id)


@router.get("/audit/{event_id}", response_class=HTMLResponse)
async def event_page(request: Request, who: Who, event_id: int) -> HTMLResponse:
    event = await _flows(request, who).audit_event(event_id)
    tables = sorted(set((event.impact or {}).get("counts", {})) | set(event.deleted))
    return page(request, "event.html", who, e=event, tables=tables,
                restorable=event.action in ("flow.delete", "flow.purge") and event.restored_by_event_id is None
                and (event.details or {}).get("state") != "running")  # a purge still running restores nothing


@router.post("/audit/{event_id}/restore")
async def restore(request: Request, who: Checked, event_id: int) -> Response:
    result = await _flows(request, who).restore(event_id)
    return _see(f"/flows/{result.flow_id}", done="restored", event=result.event_id)


# ---- admins: incomplete flows of every tenant -------------------------------------------------------------

IDLE_CHOICES = {"": None, "15min": timedelta(minutes=15), "1h": timedelta(hours=1), "1d": timedelta(days=1),
                "7d": timedelta(days=7)}


@router.get("/admin", response_class=HTMLResponse)
async def admin_page(request: Request, who: Who, idle: Annotated[str, Query()] = "") -> HTMLResponse:
    admin = _admin_flows(request, who)
    if admin is None:
        raise Forbidden("the admin view is for admin callers, on a server with an admin login")
    if idle not in IDLE_CHOICES:
        raise InvalidRequest(f"idle must be one of {', '.join(k or '(any)' for k in IDLE_CHOICES)}")
    rows = await admin.admin_list_incomplete(IDLE_CHOICES[idle])
    return page(request, "admin.html", who, rows=rows, idle=idle, idle_choices=list(IDLE_CHOICES))


# ---- errors as pages --------------------------------------------------------------------------------------


def _in_console(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


def _error_page(request: Request, status: int, message: str, hint: str | None = None,
                blocking: dict[str, Any] | None = None) -> Response:
    if status == 401:
        return _see("/login")
    return page(request, "error.html", None, status=status, title=http._TITLES.get(status, "Error"), message=message,
                hint=hint, blocking=blocking)


def _dispatch(json_handler: Callable[[Request, Exception], Response],
              html_handler: Callable[[Request, Exception], Response]) -> Callable[[Request, Exception], Response]:
    def handle(request: Request, exc: Exception) -> Response:
        return html_handler(request, exc) if _in_console(request) else json_handler(request, exc)
    return handle


def _pyflows_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PyflowsError)
    status = next((s for cls, s in http.STATUS_OF.items() if isinstance(exc, cls)), 500)
    if status == 500:
        return _error_page(request, 500, "the request failed; the server's log has the error")
    blocking = exc.detail if isinstance(exc, IncompleteFlowExists) and isinstance(exc.detail, dict) else None
    return _error_page(request, status, exc.message, exc.hint, blocking)


def _validation_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = ", ".join(str(e.get("loc", ("",))[-1]) + ": " + str(e.get("msg", "")) for e in exc.errors())
    return _error_page(request, 422, f"the form is not complete or not valid ({fields})")


def _http_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _error_page(request, exc.status_code, str(exc.detail))


def install(app: FastAPI, secret: bytes | None = None) -> None:
    """Add the console under /console to an application that pyflows.http.install() has set up. ``secret``
    (32 bytes or more) keys the CSRF tokens: give every process of one application the same (a new random
    one otherwise). Errors under /console are answered as pages, elsewhere as problem+json."""
    if not isinstance(getattr(app.state, "pyflows", None), AsyncFlows):
        raise RuntimeError("call pyflows.http.install(app, flows) before pyflows.console.install(app)")
    if secret is not None and len(secret) < 32:
        raise ValueError("the console's secret must be 32 bytes or more")
    app.state.pyflows_console_secret = secret or secrets.token_bytes(32)
    app.include_router(router)
    for exc_class, json_handler, html_handler in (
            (PyflowsError, http._pyflows_problem, _pyflows_page),
            (RequestValidationError, http._validation_problem, _validation_page),
            (StarletteHTTPException, http._http_problem, _http_page)):
        app.add_exception_handler(exc_class, _dispatch(json_handler, html_handler))
