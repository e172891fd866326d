"""The Python API's edges: what it accepts as a source and as an id, and that every public call says what it does."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pyflows import api
from pyflows.api import AsyncFlows, AsyncTenantFlows, Flows, TenantFlows
from pyflows.errors import InvalidRequest
from pyflows.models import Tenant

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus


def test_a_pool_of_the_other_kind_is_a_clear_type_error(pyflows_role_dsn: Callable[[str], str]) -> None:
    dsn = pyflows_role_dsn("app")
    refused = ("AsyncFlows needs a AsyncConnection or AsyncConnectionPool, not ConnectionPool; "
               "for a ConnectionPool use Flows")
    with ConnectionPool(dsn, open=True) as pool, pytest.raises(TypeError, match=refused):
        AsyncFlows(pool)  # type: ignore[arg-type]

    async def async_pool() -> None:
        pool = AsyncConnectionPool(dsn, open=False)
        with pytest.raises(TypeError, match="for a AsyncConnectionPool use AsyncFlows"):
            Flows(pool)  # type: ignore[arg-type]

    asyncio.run(async_pool())
    with pytest.raises(TypeError, match="Flows needs a Connection or ConnectionPool, not str$"):
        Flows(dsn)  # type: ignore[arg-type]


def test_ids_that_are_not_uuids_are_invalid_requests(pyflows_role_dsn: Callable[[str], str], tenant_a: Tenant) -> None:
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        flows = Flows(conn)
        with pytest.raises(InvalidRequest, match="client_id must be a UUID"):
            flows.tenant("acme", tenant_a.engagement_id)
        with pytest.raises(InvalidRequest, match="engagement_id must be a UUID"):
            flows.tenant(tenant_a.client_id, "q4")
        tenant = flows.tenant(str(tenant_a.client_id), str(tenant_a.engagement_id), "ops")  # text of a UUID is fine
        assert tenant.gate().can_start is True
        with pytest.raises(InvalidRequest, match='invalid value: invalid input syntax for type uuid: "flow-1"'):
            tenant.details("flow-1")  # type: ignore[arg-type]
        assert tenant.start("after the bad calls").flow_id  # the connection is still usable
        assert isinstance(uuid.UUID(str(tenant.list_flows()[0].flow_id)), uuid.UUID)


@pytest.mark.parametrize("cls", [Flows, TenantFlows, AsyncFlows, AsyncTenantFlows])
def test_every_public_call_has_a_docstring(cls: type) -> None:
    missing = [name for name, member in inspect.getmembers(cls, inspect.isfunction)
               if not name.startswith("_") and not inspect.getdoc(member)]
    assert missing == [], f"{cls.__name__}: {missing}"
    assert api.__doc__
