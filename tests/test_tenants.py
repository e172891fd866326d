"""Adding and listing tenants: the SQL functions, the Python API (sync and async) and `pyflows tenants`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pyflows.cli import Exit, cli
from pyflows.errors import FlowBusy, FlowNotFound, Forbidden, InvalidRequest
from pyflows.models import Tenant

from .lifecycle_support import ApiFactory
from .test_cli import assert_one_line_error

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus


def test_an_admin_adds_a_client_and_an_engagement_that_work(admin_api: ApiFactory, api: ApiFactory,
                                                            owner: psycopg.Connection[Any]) -> None:
    client = admin_api.root.add_client("  Initech  ")
    assert client.name == "Initech"  # trimmed, as every name pyflows keeps
    chosen = uuid.uuid4()
    engagement = admin_api.root.add_engagement(client.client_id, "Lift and shift", chosen)
    assert (engagement.client_id, engagement.engagement_id, engagement.name) == (client.client_id, chosen,
                                                                                 "Lift and shift")
    # The new tenant is usable at once by an application.
    flows = api(Tenant(client.client_id, engagement.engagement_id, "ops"))
    assert flows.gate().can_start is True
    flows.start("first")
    listed = {(r.client_name, r.engagement_name): (r.flows, r.incomplete_flows) for r in admin_api.root.list_tenants()}
    assert listed[("Initech", "Lift and shift")] == (1, 1)
    lonely = admin_api.root.add_client("No engagement yet")
    assert [(r.engagement_id, r.flows) for r in admin_api.root.list_tenants()
            if r.client_id == lonely.client_id] == [(None, 0)]
    assert owner.execute("select count(*) from pyflows.engagements where client_id = %s",
                         (client.client_id,)).fetchone() == (1,)


def test_bad_tenant_requests_are_refused_with_nothing_written(admin_api: ApiFactory, api: ApiFactory,
                                                              owner: psycopg.Connection[Any]) -> None:
    before = owner.execute("select (select count(*) from pyflows.clients), "
                           "(select count(*) from pyflows.engagements)").fetchone()
    client = admin_api.root.add_client("Umbrella")
    cases: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (lambda: admin_api.root.add_client("   "), InvalidRequest, "client name must not be empty"),
        (lambda: admin_api.root.add_client("x" * 201), InvalidRequest, "at most 200 characters"),
        (lambda: admin_api.root.add_client("Again", client.client_id), InvalidRequest, "exists"),
        (lambda: admin_api.root.add_engagement(uuid.uuid4(), "E"), FlowNotFound, "not found"),
        (lambda: admin_api.root.add_engagement(client.client_id, ""), InvalidRequest, "must not be empty"),
        (lambda: api.root.add_client("Sneaky"), Forbidden, "pyflows_admin"),
        (lambda: api.root.add_engagement(client.client_id, "Sneaky"), Forbidden, "pyflows_admin"),
        (lambda: api.root.list_tenants(), Forbidden, "pyflows_admin"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error) as caught:
            call()
        assert fragment in str(caught.value)
    engagement = admin_api.root.add_engagement(client.client_id, "E1")
    with pytest.raises(InvalidRequest, match="exists"):
        admin_api.root.add_engagement(client.client_id, "E2", engagement.engagement_id)
    after = owner.execute("select (select count(*) from pyflows.clients), "
                          "(select count(*) from pyflows.engagements)").fetchone()
    assert after == (before[0] + 1, before[1] + 1)  # Umbrella and E1, nothing else


def run(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--dsn", dsn, "tenants", *args], catch_exceptions=False)


def test_tenants_from_the_cli(pyflows_role_dsn: Callable[[str], str], pyflows_dsn: str) -> None:
    admin = pyflows_role_dsn("admin")
    client = json.loads(run(admin, "add-client", "Hooli", "--json").stdout)
    assert set(client) == {"client_id", "name", "created_at"} and client["name"] == "Hooli"
    added = run(admin, "add-engagement", client["client_id"], "Mainframe exit")
    assert added.exit_code == 0, added.output
    assert f"--client {client['client_id']} --engagement " in added.stdout
    listing = run(admin, "list")
    assert "Hooli" in listing.stdout and "Mainframe exit" in listing.stdout
    rows = json.loads(run(admin, "list", "--json").stdout)
    assert {"client_id", "client_name", "engagement_id", "engagement_name", "flows", "incomplete_flows"} == set(rows[0])
    # The superuser that migrated may too; an application may not.
    assert run(pyflows_dsn, "add-client", "By the owner").exit_code == 0
    assert_one_line_error(run(pyflows_role_dsn("app"), "add-client", "Nope"), Exit.FORBIDDEN, "pyflows_admin")
    assert_one_line_error(run(admin, "add-engagement", str(uuid.uuid4()), "E"), Exit.NOT_FOUND, "not found")
    assert run(admin, "add-client", "X", "--id", "not-a-uuid").exit_code == Exit.USAGE


def test_adding_an_id_another_transaction_is_adding_waits_only_the_bound(admin_api: ApiFactory,
                                                                       pyflows_role_dsn: Callable[[str], str],
                                                                       owner: psycopg.Connection[Any]) -> None:
    client_id, engagement_id = uuid.uuid4(), uuid.uuid4()
    existing = admin_api.root.add_client("Existing").client_id
    with psycopg.connect(pyflows_role_dsn("admin")) as holder:  # adds both and keeps its transaction open
        holder.execute("select pyflows.add_client('First', %s)", (client_id,))
        holder.execute("select pyflows.add_engagement(%s, 'E', %s)", (existing, engagement_id))
        started = time.monotonic()
        with pytest.raises(FlowBusy, match="being added by another transaction"):
            admin_api.root.add_client("Second", client_id)
        with pytest.raises(FlowBusy, match="being added, or its client changed"):
            admin_api.root.add_engagement(existing, "E again", engagement_id)
        assert time.monotonic() - started < 5  # pyflows.lock_timeout (200 ms) each, not until the holder ends
        holder.rollback()
    assert owner.execute("select count(*) from pyflows.clients where id = %s", (client_id,)).fetchone() == (0,)
    assert owner.execute("select count(*) from pyflows.engagements where id = %s", (engagement_id,)).fetchone() == (0,)
