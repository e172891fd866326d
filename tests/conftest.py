"""pyflows' own tests use the same plugin that applications get (pyflows.testing)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from .lifecycle_support import ApiFactory, open_api

if TYPE_CHECKING:  # imported by pytest as a plugin below; importing it first would skip assert rewriting
    from pyflows.testing import ServerInfo

pytest_plugins = ["pyflows.testing"]


@pytest.fixture
def blank_dsn(pyflows_server: ServerInfo) -> Iterator[str]:
    """A new, empty database (no pyflows schema), dropped after the test."""
    name = f"pyflows_blank_{uuid.uuid4().hex[:12]}"
    maintenance = pyflows_server.conninfo(pyflows_server.maintenance_dbname)
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield pyflows_server.conninfo(name)
    finally:
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


@pytest.fixture
def owner(pyflows_connect: Callable[..., psycopg.Connection[Any]]) -> psycopg.Connection[Any]:
    """An autocommit connection to the test database as the server's superuser."""
    return pyflows_connect("owner", autocommit=True)


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, pyflows_role_dsn: Callable[[str], str]) -> Iterator[ApiFactory]:
    """The API as pyflows_test_app, once sync and once async."""
    yield from open_api(request.param, pyflows_role_dsn("app"))


@pytest.fixture(params=["sync", "async"])
def admin_api(request: pytest.FixtureRequest, pyflows_role_dsn: Callable[[str], str]) -> Iterator[ApiFactory]:
    """The API as pyflows_test_admin, once sync and once async."""
    yield from open_api(request.param, pyflows_role_dsn("admin"))
