"""pytest plugin: the real pyflows schema on a real PostgreSQL, a fresh database for every test.

Use it from an application's ``conftest.py`` with ``pytest_plugins = ["pyflows.testing"]``.

The server is, in order: ``PYFLOWS_TEST_DSN`` if set; else 127.0.0.1:5432 as ``postgres`` when it
answers; else an embedded server (pgserver) in a temporary directory. ``PYFLOWS_TEST_EMBEDDED=1``
forces the embedded server. A template database is migrated once per session
(pytest-postgresql's ``postgresql_noproc`` factory) and every test gets a clone of it.

``PYFLOWS_TEST_CITUS=DIR`` runs the tests on a local Citus cluster instead: DIR holds Citus'
``install.sh`` and ``cluster.sh`` (pyflows' CI passes ``../shared/citus``); the harness installs
Citus, starts a coordinator and two workers (``CITUS_PORT``, default 9700, and the next two) and
gives every test a database of its own on all three nodes, migrated into the distributed layout
(a Citus database cannot be cloned from a template). Run the marked subset: ``pytest -m citus``.

Isolation claims must be tested as a non-superuser: ``pyflows_connect("app")`` logs in as
``pyflows_test_app``, a LOGIN role whose only privileges come from ``pyflows_app``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor

from . import embedded, migrations
from .models import Tenant
from .queries import query

__all__ = ["Tenant", "TEST_ROLES", "TEST_ROLE_PASSWORD", "ServerInfo", "CitusCluster", "bind"]

# LOGIN roles the harness creates (cluster-wide, once): name -> the pyflows role it is granted.
TEST_ROLES: dict[str, tuple[str, str | None]] = {
    "app": ("pyflows_test_app", "pyflows_app"),
    "admin": ("pyflows_test_admin", "pyflows_admin"),
    "outsider": ("pyflows_test_outsider", None),
}
TEST_ROLE_PASSWORD = "pyflows-test"
LOCAL_SERVER = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TEST_DBNAME = f"pyflows_test_{os.getpid()}"


class ServerInfo(NoopExecutor):
    """Connection details of the test server, in the shape pytest-postgresql's factories take."""

    def __init__(self, *, source: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source  # "PYFLOWS_TEST_DSN", "local", "embedded" or "citus"

    @property
    def template_dbname(self) -> str | None:  # type: ignore[override]
        # The pyflows template is built from scratch (template1), not cloned from another template.
        return None

    def conninfo(self, dbname: str, *, user: str | None = None, password: str | None = None) -> str:
        params: dict[str, Any] = {"host": self.host, "port": str(self.port), "dbname": dbname,
                                  "user": user or self.user}
        secret = password if user else self.password
        if secret:
            params["password"] = secret
        return make_conninfo(**params)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _from_conninfo(dsn: str, source: str) -> ServerInfo:
    params = conninfo_to_dict(dsn)
    return ServerInfo(
        source=source,
        host=str(params.get("host") or "127.0.0.1"),
        port=int(params.get("port") or 5432),
        user=str(params.get("user") or getpass.getuser()),
        password=params.get("password"),
        options=str(params.get("options") or ""),
        dbname=TEST_DBNAME,
        maintenance_dbname=str(params.get("dbname") or "postgres"),
    )


def _local_server_answers() -> bool:
    try:
        with psycopg.connect(LOCAL_SERVER, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


class CitusCluster:
    """A local Citus cluster run by the scripts in ``PYFLOWS_TEST_CITUS`` (install.sh, cluster.sh)."""

    def __init__(self, scripts: str) -> None:
        self.scripts = os.path.abspath(scripts)
        for script in ("install.sh", "cluster.sh"):
            if not os.path.isfile(os.path.join(self.scripts, script)):
                raise pytest.UsageError(f"PYFLOWS_TEST_CITUS={scripts}: no {script} there")
        self.port = int(os.environ.get("CITUS_PORT", "9700"))

    def _run(self, *args: str) -> str:
        done = subprocess.run([os.path.join(self.scripts, args[0]), *args[1:]], check=False,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} {' '.join(args[1:])} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip()

    def start(self) -> None:
        if os.geteuid() == 0:  # installing needs root; elsewhere Citus must be installed already
            self._run("install.sh")
        self._run("cluster.sh", "start")

    def createdb(self, name: str) -> None:
        self._run("cluster.sh", "createdb", name)

    def ensure_login(self, role: str, password: str, member_of: str | None) -> None:
        """A LOGIN role on every node. Citus copies a role created in a database with the extension,
        not one that already existed on the coordinator; this makes sure the workers have it too."""
        for port in (self.port, self.port + 1, self.port + 2):
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
                _ensure_role(conn, role, password, member_of)

    def dropdb(self, name: str, attempts: int = 3) -> None:
        """Drop ``name`` on every node (WITH (FORCE)). Citus' maintenance daemon may connect to a database
        again while it is being dropped, which fails the drop: that, and only that, is tried again."""
        for attempt in range(1, attempts + 1):
            try:
                self._run("cluster.sh", "dropdb", name)
                return
            except RuntimeError as exc:
                if attempt == attempts or "is being accessed by other users" not in str(exc):
                    raise
                time.sleep(attempt)

    def _on_every_node(self, statement: sql.Composed) -> None:
        for port in (self.port, self.port + 1, self.port + 2):
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
                conn.execute(statement)

    def freeze(self, name: str) -> None:
        """Make database ``name`` a template on every node: it accepts no connection any more (Citus'
        maintenance daemon and the connections the nodes cache to each other included), so that
        CREATE DATABASE may copy it."""
        self._on_every_node(sql.SQL("alter database {} allow_connections false").format(sql.Identifier(name)))
        self._on_every_node(sql.SQL("select pg_terminate_backend(pid) from pg_stat_activity where datname = {}")
                            .format(sql.Literal(name)))

    def clone(self, template: str, name: str) -> None:
        """Database ``name`` on every node, a copy of that node's ``template`` (see freeze): the same
        shards and metadata on each, so the copies form a cluster database of their own. The nodes are
        servers of their own, so the three copies are made at once (one after the other, a worker's took
        about 2 s of the 6 s each Citus test spent in its setup)."""
        statement = sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(template))

        def copy_on(port: int) -> None:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
                for attempt in range(50):  # a backend freeze() ended may take a moment to leave
                    try:
                        conn.execute(statement)
                        break
                    except psycopg.errors.ObjectInUse:
                        if attempt == 49:
                            raise
                        time.sleep(0.1)

        with ThreadPoolExecutor(max_workers=3) as pool:
            copies = [pool.submit(copy_on, port) for port in (self.port, self.port + 1, self.port + 2)]
        for copy in copies:
            copy.result()  # raises the first node's error, if any


def _citus() -> CitusCluster | None:
    scripts = os.environ.get("PYFLOWS_TEST_CITUS")
    return CitusCluster(scripts) if scripts else None


@pytest.fixture(scope="session")
def pyflows_citus() -> CitusCluster | None:
    """The Citus cluster the tests run on, or None on a single PostgreSQL server."""
    cluster = _citus()
    if cluster is not None:
        cluster.start()
    return cluster


@pytest.fixture(scope="session")
def pyflows_server(pyflows_citus: CitusCluster | None) -> Iterator[ServerInfo]:
    """The PostgreSQL server the tests run on (see the module docstring for how it is chosen)."""
    if pyflows_citus is not None:
        yield _from_conninfo(f"host=127.0.0.1 port={pyflows_citus.port} user=postgres dbname=postgres", "citus")
        return
    dsn = os.environ.get("PYFLOWS_TEST_DSN")
    if not _truthy(os.environ.get("PYFLOWS_TEST_EMBEDDED")):
        if dsn:
            yield _from_conninfo(dsn, "PYFLOWS_TEST_DSN")
            return
        if _local_server_answers():
            yield _from_conninfo(LOCAL_SERVER, "local")
            return
    with embedded.temporary() as server:
        yield _from_conninfo(server.dsn("postgres"), "embedded")


def _ensure_role(conn: psycopg.Connection[Any], role: str, password: str, member_of: str | None) -> None:
    row = conn.execute(query("role_exists"), {"role": role}).fetchone()
    if not (row and row[0]):
        # Another test session may create it between our check and our create: that is the same role.
        with contextlib.suppress(psycopg.errors.DuplicateObject):
            conn.execute(sql.SQL("create role {} login nosuperuser nobypassrls password {}").format(
                sql.Identifier(role), sql.Literal(password)))
    if member_of:
        conn.execute(sql.SQL("grant {} to {}").format(sql.Identifier(member_of), sql.Identifier(role)))


def _ensure_test_roles(conn: psycopg.Connection[Any]) -> None:
    for role, member_of in TEST_ROLES.values():
        _ensure_role(conn, role, TEST_ROLE_PASSWORD, member_of)


def load_pyflows_schema(host: str, port: int, user: str, dbname: str, password: str | None = None,
                        **_: Any) -> None:
    """pytest-postgresql loader: migrate the template database and create the test login roles."""
    params: dict[str, Any] = {"host": host, "port": str(port), "user": user, "dbname": dbname}
    if password:
        params["password"] = password
    dsn = make_conninfo(**params)
    migrations.migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        _ensure_test_roles(conn)


pyflows_template = factories.postgresql_noproc(
    depends_on="pyflows_server", dbname=TEST_DBNAME, load=[load_pyflows_schema])
pyflows_cloned_db = factories.postgresql("pyflows_template")


@pytest.fixture(scope="session")
def pyflows_citus_template(pyflows_citus: CitusCluster | None, pyflows_server: ServerInfo) -> Iterator[str | None]:
    """On Citus, the session's migrated (and so distributed) database, frozen as a template on every
    node (CitusCluster.freeze); None on one server."""
    if pyflows_citus is None:
        yield None
        return
    name = f"pyflows_citus_template_{uuid.uuid4().hex[:12]}"
    pyflows_citus.createdb(name)
    try:
        load_pyflows_schema(host=pyflows_server.host, port=pyflows_server.port, user=pyflows_server.user,
                            dbname=name)
        for role, member_of in TEST_ROLES.values():
            pyflows_citus.ensure_login(role, TEST_ROLE_PASSWORD, member_of)
        pyflows_citus.freeze(name)
        yield name
    finally:
        pyflows_citus.dropdb(name)


@pytest.fixture
def pyflows_db(request: pytest.FixtureRequest, pyflows_citus: CitusCluster | None,
               pyflows_server: ServerInfo) -> Iterator[psycopg.Connection[Any]]:
    """A connection (as the server's superuser) to this test's fresh, migrated database.

    On one server, a clone of the session's migrated template; on Citus, a copy of the session's
    migrated cluster database on every node (pyflows_citus_template), dropped after the test.
    """
    if pyflows_citus is None:
        yield request.getfixturevalue("pyflows_cloned_db")
        return
    template = request.getfixturevalue("pyflows_citus_template")
    name = f"pyflows_citus_{uuid.uuid4().hex[:12]}"
    try:
        pyflows_citus.clone(template, name)
        with psycopg.connect(pyflows_server.conninfo(name)) as conn:
            yield conn
    finally:
        pyflows_citus.dropdb(name)


@pytest.fixture
def pyflows_dsn(pyflows_db: psycopg.Connection[Any], pyflows_server: ServerInfo) -> str:
    """Conninfo of this test's fresh, migrated database, as the server's (super)user."""
    return pyflows_server.conninfo(pyflows_db.info.dbname)


@pytest.fixture
def pyflows_role_dsn(pyflows_dsn: str, pyflows_server: ServerInfo) -> Callable[[str], str]:
    """Conninfo of this test's database for a test login role: "app", "admin" or "outsider"."""
    dbname = conninfo_to_dict(pyflows_dsn)["dbname"]

    def role_dsn(kind: str) -> str:
        role, _ = TEST_ROLES[kind]
        return pyflows_server.conninfo(str(dbname), user=role, password=TEST_ROLE_PASSWORD)

    return role_dsn


@pytest.fixture
def pyflows_connect(pyflows_dsn: str, pyflows_role_dsn: Callable[[str], str]
                    ) -> Iterator[Callable[..., psycopg.Connection[Any]]]:
    """Open connections to this test's database: ``pyflows_connect("app")``, or "owner" for the superuser.

    Every connection is closed when the test ends.
    """
    opened: list[psycopg.Connection[Any]] = []

    def open_connection(kind: str = "app", *, autocommit: bool = False) -> psycopg.Connection[Any]:
        dsn = pyflows_dsn if kind == "owner" else pyflows_role_dsn(kind)
        conn = psycopg.connect(dsn, autocommit=autocommit)
        opened.append(conn)
        return conn

    yield open_connection
    for conn in opened:
        conn.close()


def bind(conn: psycopg.Connection[Any], tenant: Tenant) -> None:
    """Set the tenant context in the connection's current transaction (one is begun if needed)."""
    conn.execute(query("set_context"), {"client_id": tenant.client_id, "engagement_id": tenant.engagement_id,
                                        "actor": tenant.actor})


@pytest.fixture
def make_tenant(pyflows_db: psycopg.Connection[Any]) -> Callable[..., Tenant]:
    """Create a client with one engagement (as the owner) and return it as a Tenant."""

    def create(client_name: str = "Test client", engagement_name: str = "Test engagement") -> Tenant:
        tenant = Tenant(uuid.uuid4(), uuid.uuid4(), "pytest")
        ids = {"client_id": tenant.client_id, "engagement_id": tenant.engagement_id}
        with pyflows_db.transaction():
            pyflows_db.execute(query("set_raw_context"), ids)
            pyflows_db.execute(query("insert_client"), {**ids, "name": client_name})
            pyflows_db.execute(query("insert_engagement"), {**ids, "name": engagement_name})
        return tenant

    return create


@pytest.fixture
def tenant_a(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant("Client A", "Engagement A")


@pytest.fixture
def tenant_b(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant("Client B", "Engagement B")


@pytest.fixture
def app_conn(pyflows_connect: Callable[..., psycopg.Connection[Any]]
             ) -> Callable[[Tenant], psycopg.Connection[Any]]:
    """A connection as ``pyflows_test_app`` (non-superuser, member of pyflows_app) bound to a tenant.

    The context lives in the open transaction: after ``commit()`` call ``bind(conn, tenant)`` again.
    """

    def open_bound(tenant: Tenant) -> psycopg.Connection[Any]:
        conn = pyflows_connect("app")
        bind(conn, tenant)
        return conn

    return open_bound
