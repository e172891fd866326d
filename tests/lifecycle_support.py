"""Running the sync and the async API through the same test cases."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import psycopg

from pyflows.api import AsyncFlows, Flows
from pyflows.models import Tenant


class Blocking:
    """Calls an object's methods, running coroutines to completion on the given loop."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                assert self._loop is not None
                return self._loop.run_until_complete(result)
            return result

        return call


class ApiFactory:
    """``api(tenant)`` gives a TenantFlows (sync or async, behind Blocking); ``api.root`` the Flows."""

    def __init__(self, root: Blocking, flavour: str) -> None:
        self.root = root
        self.flavour = flavour

    def __call__(self, tenant: Tenant) -> Any:
        return Blocking(self.root._target.tenant(tenant.client_id, tenant.engagement_id, tenant.actor),
                        self.root._loop)


def open_api(flavour: str, dsn: str) -> Iterator[ApiFactory]:
    if flavour == "sync":
        conn = psycopg.connect(dsn, autocommit=True)
        try:
            yield ApiFactory(Blocking(Flows(conn), None), flavour)
        finally:
            conn.close()
        return
    loop = asyncio.new_event_loop()
    aconn = loop.run_until_complete(psycopg.AsyncConnection.connect(dsn, autocommit=True))
    try:
        yield ApiFactory(Blocking(AsyncFlows(aconn), loop), flavour)
    finally:
        loop.run_until_complete(aconn.close())
        loop.close()

