"""The test harness itself: which server it chose, and that each test gets a fresh database."""

from __future__ import annotations

import os
from typing import Any

import psycopg
import pytest

from pyflows.testing import ServerInfo


@pytest.mark.smoke
def test_the_server_follows_the_harness_switches(pyflows_server: ServerInfo) -> None:
    if os.environ.get("PYFLOWS_TEST_EMBEDDED", "").strip().lower() in {"1", "true", "yes", "on"}:
        assert pyflows_server.source == "embedded"
    elif os.environ.get("PYFLOWS_TEST_DSN"):
        assert pyflows_server.source == "PYFLOWS_TEST_DSN"
    else:
        assert pyflows_server.source in {"local", "embedded"}


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_a_fresh_migrated_database(owner: psycopg.Connection[Any], attempt: int) -> None:
    # Both runs start empty, so the first run's row did not survive into the second.
    assert owner.execute("select count(*) from pyflows.clients").fetchone() == (0,)
    owner.execute("insert into pyflows.clients (name) values (%s)", (f"attempt {attempt}",))
    assert owner.execute("select count(*) from pyflows.phases").fetchone() == (7,)
