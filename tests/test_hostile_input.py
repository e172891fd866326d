"""Hostile input against every routine pyflows_app may execute, generated from the catalog.

Hypothesis draws each argument from its type: NULL, empty, huge, unicode, SQL metacharacters,
extreme numbers and intervals (past the range of a timestamp), arrays with NULLs, and real ids of the
caller's own rows. Whatever comes in, a refusal is a PF code (PF422 for bad input), never a bare
PostgreSQL error such as a datetime overflow, and a refused call leaves every row of every table as it
was.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from pyflows.api import Flows
from pyflows.testing import Tenant

from .helpers import Routine, app_routines, call_routine, fingerprint, write_flow_tree

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

BINDERS = {"set_context", "set_session_context", "clear_context"}
NASTY = ["", " ", "'", "\"", "';--", "'); drop table pyflows.assets; --", "%s", "%(x)s", "$1", "\\", "\\x00",
         "NULL", "null", "∅", "ünïcødé", "🙂", "\u202e", "a" * 5000, "x" * 100_000, "\n\t\r", "<script>", "${x}"]

# PostgreSQL's text and jsonb cannot hold NUL, nor JSON an infinite number: a parameter with one is
# refused before any function runs.
characters = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
text = st.one_of(st.none(), st.sampled_from(NASTY), st.text(characters, max_size=300))


def strategy_for(type_: str, own: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a PostgreSQL type: hostile ones and, for ids, the caller's own real ids."""
    ids = st.sampled_from(own["flows"])
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "uuid": st.one_of(st.none(), st.uuids(), ids, st.just(uuid.UUID(int=0))),
        "uuid[]": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.uuids(), ids), max_size=5),
                            st.just([uuid.uuid4() for _ in range(10_001)])),
        "bigint": st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.sampled_from(own["events"] + [0, -1])),
        "bigint[]": st.one_of(st.none(), st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), max_size=5)),
        "integer": st.one_of(st.none(), st.integers(-2**31, 2**31 - 1), st.sampled_from([0, 1, -1, 10_001])),
        "boolean": st.one_of(st.none(), st.booleans()),
        "text": text,
        "text[]": st.one_of(st.none(), st.lists(text, max_size=4)),
        "interval": st.one_of(st.none(), st.timedeltas(min_value=timedelta(days=-10**6),
                                                       max_value=timedelta(days=10**6)),
                              st.sampled_from([timedelta.max, timedelta.min, timedelta(days=106_000_000)])),
        "jsonb": st.one_of(st.none(), st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            | text.filter(lambda t: t is not None),
            lambda inner: st.lists(inner, max_size=3)
            | st.dictionaries(st.text(characters, max_size=5), inner, max_size=3),
            max_leaves=8).map(Jsonb)),
        "timestamp with time zone": st.one_of(st.none(), st.datetimes(timezones=st.just(UTC)),
                                              st.just(datetime(1, 1, 1, tzinfo=UTC))),
    }
    if type_ not in strategies:
        raise AssertionError(f"no strategy for a {type_} argument: teach this test that type")
    return strategies[type_]


def acceptable(sqlstate: str | None) -> bool:
    return bool(sqlstate) and sqlstate.startswith("PF")  # type: ignore[union-attr]


@pytest.fixture
def own(owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant,
        pyflows_role_dsn: Callable[[str], str]) -> dict[str, Any]:
    """Tenant A with flows in several states and an audit event, so real ids reach deep code paths;
    tenant B with nothing, so that calls are not all stopped by A's incomplete flow."""
    with owner.transaction():
        flows = [write_flow_tree(owner, tenant_a, status=s, name=s).flow_id for s in ("paused", "completed",
                                                                                         "cancelled")]
    with psycopg.connect(pyflows_role_dsn("app"), autocommit=True) as conn:
        event = Flows(conn).tenant(tenant_a.client_id, tenant_a.engagement_id, "a").delete(
            flows.pop(), "seed", force=True).event_id
    return {"flows": flows, "events": [event], "tenants": [tenant_a, tenant_b]}


def test_every_routine_refuses_hostile_input_cleanly(owner: psycopg.Connection[Any], tenant_a: Tenant,
                                                     own: dict[str, Any],
                                                     pyflows_connect: Callable[..., psycopg.Connection[Any]]) -> None:
    conn = pyflows_connect("app")
    routines = [r for r in app_routines(owner) if r.name not in BINDERS]
    assert len(routines) > 40
    problems: list[str] = []

    def prober(routine: Routine) -> Callable[[], None]:
        @settings(max_examples=12, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])
        @given(args=st.tuples(*(strategy_for(t, own) for t in routine.arg_types)),
               tenant=st.sampled_from(own["tenants"]))
        def probe(args: tuple[Any, ...], tenant: Tenant) -> None:
            before = fingerprint(owner)
            state, message = call_routine(conn, routine, list(args), tenant, keep=False)
            if state == "ok":
                return
            if not acceptable(state):
                problems.append(f"{routine.signature}{_show(args)}: {state} {message}")
            if fingerprint(owner) != before:
                problems.append(f"{routine.signature}{_show(args)}: refused ({state}) but wrote rows")

        return probe  # type: ignore[no-any-return]

    for routine in routines:
        prober(routine)()
    assert problems == [], "\n".join(problems[:20])


def _show(args: tuple[Any, ...]) -> str:
    return "(" + ", ".join(repr(a)[:40] for a in args) + ")"
