"""Tenant isolation, tested as pyflows_test_app: a LOGIN role that is not a superuser and whose only
privileges come from membership in pyflows_app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pyflows.errors import FlowNotFound, InvalidRequest, wrap_errors
from pyflows.testing import CitusCluster, Tenant, bind

from .helpers import FLOW_TREE_TABLES, TENANT_TABLES, count_rows, write_flow_tree

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus

Connect = Callable[..., psycopg.Connection[Any]]


@pytest.fixture
def two_tenants(owner: psycopg.Connection[Any], tenant_a: Tenant, tenant_b: Tenant) -> tuple[Tenant, Tenant]:
    """Tenants A and B, each with a flow tree and a queued file, written as the owner."""
    for tenant in (tenant_a, tenant_b):
        with owner.transaction():
            write_flow_tree(owner, tenant)
            owner.execute("insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri) "
                          "values (%s, %s, 'file:///tmp/x')", (tenant.client_id, tenant.engagement_id))
    return tenant_a, tenant_b


def _tenant_counts(conn: psycopg.Connection[Any], table: str, tenant: Tenant) -> tuple[int, int]:
    """(rows visible, rows visible that belong to tenant)."""
    column = "id" if table == "clients" else "client_id"
    query = sql.SQL("select count(*), count(*) filter (where {} = %s) from {}").format(
        sql.Identifier(column), sql.Identifier("pyflows", table))
    row = conn.execute(query, (tenant.client_id,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_the_test_role_is_a_plain_member_of_pyflows_app(pyflows_connect: Connect) -> None:
    conn = pyflows_connect("app")
    row = conn.execute("""
        select r.rolsuper, r.rolbypassrls, pg_has_role(current_user, 'pyflows_app', 'member')
          from pg_roles r where r.rolname = current_user""").fetchone()
    assert row == (False, False, True)


@pytest.mark.smoke
def test_no_context_means_no_rows(pyflows_connect: Connect, owner: psycopg.Connection[Any],
                                  two_tenants: tuple[Tenant, Tenant]) -> None:
    conn = pyflows_connect("app")
    for table in TENANT_TABLES:
        assert count_rows(owner, table) > 0, table  # the rows are there ...
        assert count_rows(conn, table) == 0, table  # ... and the app sees none of them


@pytest.mark.smoke
def test_tenant_a_never_sees_tenant_b(app_conn: Callable[[Tenant], psycopg.Connection[Any]],
                                      owner: psycopg.Connection[Any], two_tenants: tuple[Tenant, Tenant]) -> None:
    a, b = two_tenants
    conn = app_conn(a)
    for table in TENANT_TABLES:
        visible, own = _tenant_counts(conn, table, a)
        assert visible == own > 0, table
        assert _tenant_counts(conn, table, b) == (visible, 0), table
        assert _tenant_counts(owner, table, a)[1] == own, table  # sees all of A's rows, not a subset


def test_another_engagement_of_the_same_client_is_isolated(
        app_conn: Callable[[Tenant], psycopg.Connection[Any]], owner: psycopg.Connection[Any],
        tenant_a: Tenant) -> None:
    second = Tenant(tenant_a.client_id, owner.execute(
        "insert into pyflows.engagements (client_id, name) values (%s, 'second') returning id",
        (tenant_a.client_id,)).fetchone()[0])
    with owner.transaction():
        write_flow_tree(owner, tenant_a)
    conn = app_conn(second)
    for table in FLOW_TREE_TABLES:
        assert count_rows(conn, table) == 0, table


def test_set_context_with_another_clients_engagement_is_pf404(
        pyflows_connect: Connect, two_tenants: tuple[Tenant, Tenant]) -> None:
    a, b = two_tenants
    conn = pyflows_connect("app")
    with pytest.raises(FlowNotFound) as caught, wrap_errors():
        bind(conn, Tenant(a.client_id, b.engagement_id))
    assert caught.value.detail == {"client_id": str(a.client_id), "engagement_id": str(b.engagement_id)}
    conn.rollback()
    assert count_rows(conn, "discovery_flows") == 0  # no context was left behind


def test_set_context_with_an_unknown_engagement_is_pf404(pyflows_connect: Connect, tenant_a: Tenant) -> None:
    conn = pyflows_connect("app")
    with pytest.raises(FlowNotFound), wrap_errors():
        bind(conn, Tenant(tenant_a.client_id, tenant_a.client_id))


@pytest.mark.parametrize("client, engagement, actor", [
    (None, "engagement", "x"), ("client", None, "x"), ("client", "engagement", ""),
    ("client", "engagement", "  "), ("client", "engagement", "a" * 201),
])
def test_set_context_refuses_missing_ids_and_blank_actors(pyflows_connect: Connect, tenant_a: Tenant,
                                                         client: str | None, engagement: str | None,
                                                         actor: str) -> None:
    conn = pyflows_connect("app")
    ids = {"client": tenant_a.client_id, "engagement": tenant_a.engagement_id, None: None}
    with pytest.raises(InvalidRequest), wrap_errors():
        conn.execute("select pyflows.set_context(%s, %s, %s)", (ids[client], ids[engagement], actor))


def test_set_context_binds_the_transaction_only(pyflows_connect: Connect, two_tenants: tuple[Tenant, Tenant]
                                                ) -> None:
    a, _ = two_tenants
    conn = pyflows_connect("app")
    bind(conn, Tenant(a.client_id, a.engagement_id, "ops@example.com"))
    row = conn.execute("select pyflows.current_client_id(), pyflows.current_engagement_id(), "
                       "pyflows.current_actor()").fetchone()
    assert row == (a.client_id, a.engagement_id, "ops@example.com")
    assert count_rows(conn, "discovery_flows") == 1
    conn.commit()
    assert conn.execute("select pyflows.current_client_id(), pyflows.current_actor()").fetchone() == (None, None)
    assert count_rows(conn, "discovery_flows") == 0


def test_require_context_fails_closed(pyflows_connect: Connect, tenant_a: Tenant) -> None:
    conn = pyflows_connect("app")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("select pyflows._require_context()")
    assert caught.value.sqlstate == "PF401"
    conn.rollback()
    bind(conn, Tenant(tenant_a.client_id, tenant_a.engagement_id, actor=None))  # type: ignore[arg-type]
    conn.execute("select pyflows._require_context()")
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("select pyflows._require_context(true)")  # an actor is needed and none was named
    assert caught.value.sqlstate == "PF401"


def test_a_forged_setting_fails_closed(pyflows_connect: Connect, two_tenants: tuple[Tenant, Tenant]) -> None:
    conn = pyflows_connect("app")
    conn.execute("select set_config('pyflows.client_id', 'not-a-uuid', true)")
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("select count(*) from pyflows.discovery_flows")


def test_with_check_refuses_writing_another_tenants_ids(
        app_conn: Callable[[Tenant], psycopg.Connection[Any]], owner: psycopg.Connection[Any],
        two_tenants: tuple[Tenant, Tenant], pyflows_citus: CitusCluster | None) -> None:
    a, b = two_tenants
    conn = app_conn(a)
    before = {t: count_rows(owner, t) for t in TENANT_TABLES}
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        conn.execute("insert into pyflows.discovery_flows (client_id, engagement_id, name, status) "
                     "values (%s, %s, 'intruder', 'cancelled')", (b.client_id, b.engagement_id))
    conn.rollback()
    bind(conn, a)
    # On Citus, client_id is the distribution column, which Citus itself refuses to change.
    moved: tuple[type[Exception], str] = (
        (psycopg.errors.InsufficientPrivilege, "row-level security") if pyflows_citus is None
        else (psycopg.errors.FeatureNotSupported, "modifying the partition value"))
    with pytest.raises(moved[0], match=moved[1]):
        conn.execute("update pyflows.assets set client_id = %s, engagement_id = %s",
                     (b.client_id, b.engagement_id))
    conn.rollback()
    assert {t: count_rows(owner, t) for t in TENANT_TABLES} == before


def test_updates_and_deletes_do_not_reach_another_tenant(
        app_conn: Callable[[Tenant], psycopg.Connection[Any]], owner: psycopg.Connection[Any],
        two_tenants: tuple[Tenant, Tenant]) -> None:
    a, b = two_tenants
    conn = app_conn(a)
    before_b = {t: _tenant_counts(owner, t, b)[1] for t in FLOW_TREE_TABLES}
    assert conn.execute("update pyflows.assets set name = 'renamed' where client_id = %s",
                        (b.client_id,)).rowcount == 0
    for table in reversed(FLOW_TREE_TABLES):
        query = sql.SQL("delete from {} where client_id = %s").format(sql.Identifier("pyflows", table))
        assert conn.execute(query, (b.client_id,)).rowcount == 0, table
    conn.commit()
    assert {t: _tenant_counts(owner, t, b)[1] for t in FLOW_TREE_TABLES} == before_b
    assert owner.execute("select count(*) from pyflows.assets where name = 'renamed'").fetchone() == (0,)


def test_the_app_writes_its_own_tenants_flow_tree(
        app_conn: Callable[[Tenant], psycopg.Connection[Any]], owner: psycopg.Connection[Any],
        tenant_a: Tenant) -> None:
    conn = app_conn(tenant_a)
    tree = write_flow_tree(conn, tenant_a)
    conn.commit()
    assert owner.execute("select count(*) from pyflows.assets where flow_id = %s", (tree.flow_id,)).fetchone() == (3,)


@pytest.mark.parametrize("statement", [
    "insert into pyflows.clients (name) values ('x')",
    "update pyflows.engagements set name = 'x'",
    "delete from pyflows.phases",
    "insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri) "
    "values (pyflows.current_client_id(), pyflows.current_engagement_id(), 'file:///x')",
    "update pyflows.installed_sql set digest = 'x'",  # readable since 0013 (pyflows check), never writable
    "truncate pyflows.assets",
])
def test_the_app_role_may_not_write_reference_data_or_the_queue(
        app_conn: Callable[[Tenant], psycopg.Connection[Any]], tenant_a: Tenant, statement: str) -> None:
    conn = app_conn(tenant_a)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


@pytest.mark.parametrize("statement", [
    "select count(*) from pyflows.discovery_flows",
    "select pyflows.set_context(gen_random_uuid(), gen_random_uuid(), 'x')",
])
def test_a_role_outside_pyflows_app_gets_nothing(pyflows_connect: Connect, statement: str) -> None:
    conn = pyflows_connect("outsider")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)

