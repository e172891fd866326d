"""The operator console (pyflows.console) in process, through FastAPI's TestClient, on the real database as the
application login: sign-in and its cookie, CSRF on every state-changing request, escaping, the security headers
of every page, the gate's banner, delete with its impact, batch, audit and restore, the admin view, and no tenant
reaching another's flows through any console route (the routes attacked are read from the router)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.citus  # the console holds on Citus too (docs/scale-out.md)

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")

from fastapi.routing import APIRoute  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from pyflows import console, http  # noqa: E402
from pyflows.models import Tenant  # noqa: E402

from .helpers import write_flow_tree  # noqa: E402
from .test_http import PROBLEM, SECRET, bearer, make_app, token  # noqa: E402

C = console.PREFIX


@pytest.fixture
def app_client(pyflows_role_dsn: Callable[[str], str]) -> Iterator[TestClient]:
    app = http.create_app(pyflows_role_dsn("app"), http.JWTCaller(SECRET), admin_dsn=pyflows_role_dsn("admin"),
                          console_secret=b"k" * 32)
    with TestClient(app, follow_redirects=False) as c:
        yield c


def sign_in(c: TestClient, tenant: Tenant, **claims: Any) -> str:
    """Sign in through the form; the CSRF token of the pages that follow."""
    response = c.post(f"{C}/login", data={"token": token(tenant, **claims)})
    assert response.status_code == 303 and response.headers["location"] == f"{C}/", response.text
    return csrf_of(c.get(f"{C}/").text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, html
    return found.group(1)


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, dict(attrs)))


def count_flows(owner: psycopg.Connection[Any], tenant: Tenant) -> int:
    row = owner.execute("select count(*) from pyflows.discovery_flows where client_id = %s and engagement_id = %s",
                        (tenant.client_id, tenant.engagement_id)).fetchone()
    assert row is not None
    return int(row[0])


def test_signing_in_keeps_the_token_in_a_strict_httponly_cookie_for_the_console_only(app_client: TestClient,
                                                                                      tenant_a: Tenant) -> None:
    assert app_client.get(f"{C}/").headers["location"] == f"{C}/login"  # not signed in: to the form
    refused = app_client.post(f"{C}/login", data={"token": "not.a.jwt"})
    assert refused.status_code == 401 and "the bearer token was refused" in refused.text
    assert console.SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    response = app_client.post(f"{C}/login", data={"token": token(tenant_a)})
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{console.SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert app_client.get(f"{C}/").status_code == 200
    # The cookie is the console's: the JSON routes want the Authorization header.
    json_route = TestClient(app_client.app, cookies={console.SESSION_COOKIE: token(tenant_a)})
    assert json_route.get("/flows/gate").status_code == 401
    # Another site's form cannot sign a browser in (login CSRF).
    cross = app_client.post(f"{C}/login", data={"token": token(tenant_a)}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    cross = app_client.post(f"{C}/login", data={"token": token(tenant_a)}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    # Signing out clears the cookie.
    out = app_client.post(f"{C}/logout", data={"csrf": csrf_of(app_client.get(f"{C}/").text)})
    assert out.status_code == 303 and f'{console.SESSION_COOKIE}=""' in out.headers["set-cookie"]


def test_every_state_changing_request_needs_the_callers_csrf_token(app_client: TestClient,
                                                                   owner: psycopg.Connection[Any],
                                                                   tenant_a: Tenant, tenant_b: Tenant) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused")
    csrf_b = sign_in(app_client, tenant_b)
    csrf_a = sign_in(app_client, tenant_a)
    assert csrf_a != csrf_b
    form = {"reason": "cleanup", "confirm": "yes"}
    for sent in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": csrf_b}):
        response = app_client.post(f"{C}/flows/{tree.flow_id}/delete", data={**form, **sent})
        assert response.status_code == 403 and "CSRF" in response.text
        assert count_flows(owner, tenant_a) == 1  # nothing written
    # The same request with the token deletes; a script with the Authorization header needs none.
    assert app_client.post(f"{C}/flows/{tree.flow_id}/delete", data={**form, "csrf": csrf_a}).status_code == 200
    assert count_flows(owner, tenant_a) == 0
    with owner.transaction():
        other = write_flow_tree(owner, tenant_a, status="paused")
    scripted = TestClient(app_client.app, follow_redirects=False)
    assert scripted.post(f"{C}/flows/{other.flow_id}/delete", data=form,
                         headers=bearer(token(tenant_a))).status_code == 200
    assert count_flows(owner, tenant_a) == 0


def test_every_page_is_escaped_and_carries_the_security_headers(app_client: TestClient, owner: psycopg.Connection[Any],
                                                                tenant_a: Tenant) -> None:
    evil = '<script>alert("owned")</script><img src=x onerror=alert(1)>'
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused", name=evil)
        owner.execute("update pyflows.discovery_flows set error = %s, agent_insights = %s where id = %s",
                      (Jsonb({"phase": evil, "message": evil}), Jsonb([{"insight": evil}, {"raw": evil}]),
                       tree.flow_id))
    csrf = sign_in(app_client, tenant_a, sub=evil, pyflows_admin=True)
    app_client.post(f"{C}/flows/{tree.flow_id}/delete", data={"reason": evil, "confirm": "yes", "csrf": csrf})
    event = app_client.get(f"{C}/audit").text
    event_id = re.search(r'id="event-(\d+)"', event)
    assert event_id
    app_client.post(f"{C}/audit/{event_id.group(1)}/restore", data={"csrf": csrf})
    pages = [f"{C}/", f"{C}/?filter=all", f"{C}/flows/{tree.flow_id}", f"{C}/flows/{tree.flow_id}/delete",
             f"{C}/batch?flow_id={tree.flow_id}", f"{C}/audit", f"{C}/audit/{event_id.group(1)}", f"{C}/admin",
             f"{C}/login", f"{C}/flows/{uuid.uuid4()}"]
    for path in pages:
        response = app_client.get(path)
        assert response.status_code in (200, 404), (path, response.text)
        html = response.text
        assert response.headers["content-security-policy"] == console.CSP
        assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"
        assert "<script>" not in html, path  # the flow's name, the actor, the reason: inert
        # Nothing a strict CSP refuses: the only script is htmx from the package; no inline style or handler.
        tags = Tags()
        tags.feed(html)
        assert [attrs for tag, attrs in tags.seen if tag == "script"] == [{"src": f"{C}/static/htmx.min.js",
                                                                           "defer": None}], path
        assert not [tag for tag, _ in tags.seen if tag in ("style", "img", "iframe", "object")], path
        assert not [(tag, a) for tag, attrs in tags.seen for a in attrs if a == "style" or a.startswith("on")], path
        assert not [(tag, attrs) for tag, attrs in tags.seen
                    if any(str(v).lower().lstrip().startswith("javascript:") for v in attrs.values())], path
    assert "&lt;script&gt;alert(&#34;owned&#34;)&lt;/script&gt;" in app_client.get(f"{C}/flows/{tree.flow_id}").text
    for name in console._STATIC:
        assert app_client.get(f"{C}/static/{name}").status_code == 200
    assert app_client.get(f"{C}/static/..%2F__init__.py").status_code == 404


def test_the_gate_blocks_the_upload_with_a_banner_naming_the_flow(app_client: TestClient,
                                                                   owner: psycopg.Connection[Any],
                                                                   tenant_a: Tenant) -> None:
    csrf = sign_in(app_client, tenant_a)
    open_page = app_client.get(f"{C}/").text
    assert 'id="upload"' in open_page and "gate-banner" not in open_page
    started = app_client.post(f"{C}/imports", data={"filename": "cmdb.csv", "storage_uri": "s3://b/cmdb.csv",
                                                    "byte_size": "10", "csrf": csrf})
    assert started.status_code == 303
    flow_id = started.headers["location"].split("/flows/")[1].split("?")[0]
    blocked = app_client.get(f"{C}/").text
    assert 'id="gate-banner"' in blocked and f'href="{C}/flows/{flow_id}" id="blocking-flow"' in blocked
    assert '<fieldset disabled class="grid" id="upload-disabled"' in blocked and 'id="upload"' not in blocked
    # A second import anyway: the 409 as a page naming the blocking flow, and nothing written.
    again = app_client.post(f"{C}/imports", data={"filename": "b.csv", "storage_uri": "s3://b/b.csv", "byte_size": "1",
                                                  "csrf": csrf})
    assert again.status_code == 409 and f"{C}/flows/{flow_id}" in again.text
    assert count_flows(owner, tenant_a) == 1
    # A form that does not validate is a 422 page, nothing written.
    bad = app_client.post(f"{C}/imports", data={"filename": "", "storage_uri": "s3://b/b.csv", "byte_size": "-1",
                                                "csrf": csrf})
    assert bad.status_code == 422 and "byte_size" in bad.text and "Traceback" not in bad.text


def test_delete_shows_the_impact_then_needs_a_reason_and_a_confirmation(app_client: TestClient,
                                                                         owner: psycopg.Connection[Any],
                                                                         tenant_a: Tenant) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused", records=4, assets=3)
    csrf = sign_in(app_client, tenant_a)
    impact = app_client.get(f"{C}/flows/{tree.flow_id}/delete").text
    assert "raw_import_records</th><td>4</td>" in impact and 'id="confirm-delete"' in impact
    assert 'id="force"' not in impact  # a safe verdict offers no force
    for form in ({"reason": "x"}, {"confirm": "yes"}, {"reason": "x", "confirm": "no"}):
        refused = app_client.post(f"{C}/flows/{tree.flow_id}/delete", data={**form, "csrf": csrf})
        assert refused.status_code == 422
        assert count_flows(owner, tenant_a) == 1
    done = app_client.post(f"{C}/flows/{tree.flow_id}/delete", data={"reason": "stale import", "confirm": "yes",
                                                                      "csrf": csrf})
    assert done.status_code == 200 and count_flows(owner, tenant_a) == 0
    event_id = re.search(r'audit/(\d+)" id="event-link"', done.text)
    assert event_id
    event = app_client.get(f"{C}/audit/{event_id.group(1)}").text
    assert "stale import" in event and 'id="restore"' in event
    restored = app_client.post(f"{C}/audit/{event_id.group(1)}/restore", data={"csrf": csrf})
    assert restored.status_code == 303 and count_flows(owner, tenant_a) == 1
    assert 'id="restore"' not in app_client.get(f"{C}/audit/{event_id.group(1)}").text  # restored once only
    # A link cannot put words of its own on a page: notices are named, their texts fixed.
    notice = app_client.get(restored.headers["location"]).text
    assert re.search(r'class="notice" role="status">Restored by audit event \d+\.<', notice)
    forged = app_client.get(f"{C}/flows/{tree.flow_id}?done=Your+session+expired")
    assert forged.status_code == 422 and "Your session expired" not in forged.text


def test_force_is_offered_only_where_the_verdict_allows_it(app_client: TestClient, owner: psycopg.Connection[Any],
                                                           tenant_a: Tenant) -> None:
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="running")
        owner.execute("update pyflows.discovery_flows set heartbeat_at = now() where id = %s", (tree.flow_id,))
    csrf = sign_in(app_client, tenant_a)
    impact = app_client.get(f"{C}/flows/{tree.flow_id}/delete").text
    assert "Blocked:" in impact and 'id="force"' in impact
    unforced = app_client.post(f"{C}/flows/{tree.flow_id}/delete", data={"reason": "r", "confirm": "yes", "csrf": csrf})
    assert unforced.status_code == 423 and "heartbeat" in unforced.text and count_flows(owner, tenant_a) == 1
    forced = app_client.post(f"{C}/flows/{tree.flow_id}/delete", data={"reason": "r", "confirm": "yes", "force": "true",
                                                                       "csrf": csrf})
    assert forced.status_code == 200 and "(forced)" in forced.text and count_flows(owner, tenant_a) == 0


def test_a_batch_shows_the_combined_impact_and_a_result_per_flow(app_client: TestClient, owner: psycopg.Connection[Any],
                                                                 tenant_a: Tenant) -> None:
    with owner.transaction():
        trees = [write_flow_tree(owner, tenant_a, status="completed", records=2, name=f"finished-{i}")
                 for i in range(3)]
    csrf = sign_in(app_client, tenant_a)
    query = "&".join(f"flow_id={t.flow_id}" for t in trees)
    summary = app_client.get(f"{C}/batch?{query}").text
    assert "raw_import_records</th><td>6</td>" in summary and "Delete 3 flows" in summary
    assert 'id="force"' in summary  # finished flows: deleting them is a forced delete
    # Every filter the page links to lists; the finished flows are under all and finished, not incomplete.
    links = re.findall(r'href="\?filter=(\w+)"', app_client.get(f"{C}/").text)
    assert sorted(links) == ["all", "incomplete", "terminal"]
    for link in links:
        listing = app_client.get(f"{C}/?filter={link}")
        assert listing.status_code == 200 and ("finished-0" in listing.text) == (link != "incomplete"), link
    assert app_client.get(f"{C}/?filter=finished").status_code == 422  # list_flows' own PF422
    form = {"flow_id": [str(t.flow_id) for t in trees], "reason": "batch", "confirm": "yes", "csrf": csrf}
    refused = app_client.post(f"{C}/batch", data=form)  # all or nothing, unforced: each one is refused
    assert refused.status_code == 423 and count_flows(owner, tenant_a) == 3
    result = app_client.post(f"{C}/batch", data={**form, "mode": "each", "force": "true"})
    assert result.status_code == 200 and result.text.count('class="ok"') == 3 and count_flows(owner, tenant_a) == 0
    assert app_client.get(f"{C}/batch").status_code == 422  # nothing selected


def test_the_admin_view_is_for_admins(app_client: TestClient, owner: psycopg.Connection[Any], tenant_a: Tenant,
                                      tenant_b: Tenant) -> None:
    with owner.transaction():
        write_flow_tree(owner, tenant_a, status="paused", name="a-flow")
        write_flow_tree(owner, tenant_b, status="paused", name="b-flow")
    sign_in(app_client, tenant_a)
    assert app_client.get(f"{C}/admin").status_code == 403
    assert 'id="nav-admin"' not in app_client.get(f"{C}/").text
    sign_in(app_client, tenant_a, pyflows_admin=True)
    everyone = app_client.get(f"{C}/admin").text
    assert "a-flow" in everyone and "b-flow" in everyone
    assert "a-flow" not in app_client.get(f"{C}/admin?idle=1h").text
    assert app_client.get(f"{C}/admin?idle=soon").status_code == 422


def _console_routes() -> list[tuple[str, str]]:
    return [(method, route.path) for route in console.router.routes if isinstance(route, APIRoute)
            for method in sorted(route.methods)]


def test_every_console_route_refuses_strangers_and_other_tenants(app_client: TestClient,
                                                                 owner: psycopg.Connection[Any],
                                                                 tenant_a: Tenant, tenant_b: Tenant) -> None:
    """Read from the router: a new console route is attacked without editing this test."""
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused", name="only-for-a")
        finished = write_flow_tree(owner, tenant_a, status="completed", name="only-for-a-too")
    csrf_a = sign_in(app_client, tenant_a)
    deleted = app_client.post(f"{C}/flows/{finished.flow_id}/delete",
                              data={"reason": "r", "confirm": "yes", "force": "true", "csrf": csrf_a})
    assert deleted.status_code == 200  # an event of A's that B's restore must not reach
    events = re.findall(r'id="event-(\d+)"', app_client.get(f"{C}/audit").text)
    assert events
    before = count_flows(owner, tenant_a)
    public = {("GET", f"{C}/login"), ("POST", f"{C}/login"), ("GET", f"{C}/static/{{name}}")}
    values = {"flow_id": str(tree.flow_id), "event_id": events[0], "name": "console.css"}
    routes = _console_routes()
    assert len(routes) >= 15
    stranger = TestClient(app_client.app, follow_redirects=False)
    for method, path in routes:
        csrf_b = sign_in(app_client, tenant_b)  # again: the route before may have been logout
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        form = {"reason": "r", "confirm": "yes", "flow_id": str(tree.flow_id), "filename": "x", "storage_uri": "s3://x",
                "byte_size": "1", "token": "x"}
        params = {"flow_id": str(tree.flow_id)} if method == "GET" else None
        if (method, path) not in public:
            anonymous = stranger.request(method, url, data=form if method == "POST" else None, params=params)
            assert anonymous.status_code == 303 and anonymous.headers["location"] == f"{C}/login", (method, path)
        as_b = app_client.request(method, url, data={**form, "csrf": csrf_b} if method == "POST" else None,
                                  params=params)
        assert as_b.status_code < 500, (method, path, as_b.text)
        assert "only-for-a" not in as_b.text, (method, path)  # nothing of A's: not its flows, not its events
        assert count_flows(owner, tenant_a) == before, (method, path)


def test_an_application_mounts_the_console_with_its_own_authentication(pyflows_role_dsn: Callable[[str], str],
                                                                       owner: psycopg.Connection[Any],
                                                                       tenant_a: Tenant, tenant_b: Tenant) -> None:
    """The embedding application's override of pyflows.http.caller decides the console's caller too; its
    forms still need the CSRF token; the sign-in form is off; errors outside /console stay problem+json."""
    app = make_app(pyflows_role_dsn("app"), {"a": tenant_a, "b": tenant_b})
    with pytest.raises(ValueError, match="32 bytes"):
        console.install(app, secret=b"short")
    console.install(app, secret=b"s" * 32)
    with owner.transaction():
        tree = write_flow_tree(owner, tenant_a, status="paused", name="mounted-flow")
    with TestClient(app, follow_redirects=False) as c:
        a = {"x-tenant": "a"}
        flows = c.get(f"{C}/", headers=a)
        assert flows.status_code == 200 and "mounted-flow" in flows.text and "user of a" in flows.text
        assert "mounted-flow" not in c.get(f"{C}/", headers={"x-tenant": "b"}).text
        form = {"reason": "r", "confirm": "yes"}
        assert c.post(f"{C}/flows/{tree.flow_id}/delete", headers=a, data=form).status_code == 403
        assert count_flows(owner, tenant_a) == 1
        done = c.post(f"{C}/flows/{tree.flow_id}/delete", headers=a, data={**form, "csrf": csrf_of(flows.text)})
        assert done.status_code == 200 and count_flows(owner, tenant_a) == 0
        assert c.post(f"{C}/login", data={"token": "x"}).status_code == 403
        assert c.get(f"/flows/{tree.flow_id}/details", headers=a).headers["content-type"] == PROBLEM
