"""Applying, rolling back and checking the pyflows schema.

``migrations/`` holds yoyo migrations (immutable once released); ``sql/`` holds repeatable
definitions that are applied, in file-name order and in one transaction, after every migrate,
whether or not a migration was pending (yoyo's post-apply hooks would run only when one was).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from yoyo import read_migrations
from yoyo.backends import PostgresqlPsycopgBackend
from yoyo.exceptions import LockTimeout
from yoyo.migrations import MigrationList

from . import __version__
from .connection import connect
from .errors import MigrationError, SchemaMissing, describe
from .queries import query
from .resources import migrations_dir, sql_files

__all__ = ["MigrateResult", "Status", "migrate", "rollback", "status", "apply_sql", "sql_digest"]

MIGRATION_TABLE = "_yoyo_migration"
LOCK_TIMEOUT_SECONDS = 60
# How long one migration statement may wait for a table lock before the migration fails (and rolls
# back) rather than queue while every query behind it waits too. Used when the session has no
# lock_timeout of its own (set one with PGOPTIONS='-c lock_timeout=...' to choose another).
MIGRATION_LOCK_TIMEOUT = "10s"


@dataclass(frozen=True)
class _Target:
    """What yoyo calls a parsed URI: here any libpq conninfo, or '' for the PG* variables."""

    conninfo: str

    @property
    def database(self) -> str | None:
        dbname = conninfo_to_dict(self.conninfo).get("dbname") if self.conninfo else None
        return None if dbname is None else str(dbname)


class _Backend(PostgresqlPsycopgBackend):  # type: ignore[misc]
    """yoyo's psycopg 3 backend, connecting with any libpq conninfo rather than only a URL."""

    def connect(self, dburi: _Target) -> psycopg.Connection[tuple[object, ...]]:
        conn = connect(dburi.conninfo, autocommit=True, application_name="pyflows-migrate")
        row = conn.execute("select current_setting('lock_timeout')").fetchone()
        if row is not None and row[0] == "0":
            conn.execute("select set_config('lock_timeout', %s, false)", (MIGRATION_LOCK_TIMEOUT,))
        _prepare_for_ddl(conn)
        return conn

    def begin(self) -> None:
        """yoyo's BEGIN of each migration's transaction, with its lock bound for every node (below)."""
        super().begin()
        _bound_lock_waits_everywhere(self.connection)


def _bound_lock_waits_everywhere(conn: psycopg.Connection[Any]) -> None:
    """In the open transaction, the session's lock_timeout again as a SET LOCAL: on Citus that is what
    reaches the workers (migrations' DDL takes its locks there too), a session setting stays on the
    coordinator. The same value on one node."""
    row = conn.execute("select current_setting('lock_timeout')").fetchone()
    assert row is not None
    conn.execute(sql.SQL("set local lock_timeout = {}").format(sql.Literal(row[0])))


def _prepare_for_ddl(conn: psycopg.Connection[Any]) -> None:
    """On Citus, what its DDL on distributed tables needs: for the session, triggers (they run on the
    shards) and one connection per worker (foreign keys to reference tables); and pyflows_app and
    pyflows_admin on every worker, where the shards check privileges. Citus copies a role created in a
    database that has the extension, but not one the coordinator had already (made in another
    database, or by hand as docs/security.md suggests), and a GRANT to a role a worker lacks fails
    there. Nothing of this elsewhere."""
    row = conn.execute(query("citus_installed")).fetchone()
    if row is None or not row[0]:
        return
    conn.execute(query("citus_ddl_settings"))
    for node, ok, result in conn.execute(query("citus_worker_roles")).fetchall():
        if not ok:
            raise MigrationError(f"could not create pyflows_app and pyflows_admin on the Citus worker {node}: {result}")


@dataclass(frozen=True)
class MigrateResult:
    applied: list[str]
    sql_files: list[str]
    dry_run: bool


@dataclass(frozen=True)
class Status:
    applied: list[str]
    pending: list[str]
    schema_present: bool
    sql_current: bool
    problems: list[str] = field(default_factory=list)
    # pyflows.layout(): the engine (postgresql or citus) and, on Citus, how each table is laid out.
    layout: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _migrations() -> MigrationList:
    migrations = read_migrations(str(migrations_dir()))
    for migration in migrations:
        migration.load()  # a broken file fails here, before anything is applied
    return migrations


@contextmanager
def _backend(dsn: str) -> Iterator[_Backend]:
    backend = _Backend(_Target(dsn), MIGRATION_TABLE)
    try:
        backend.init_database()
        yield backend
    finally:
        backend.connection.close()


@contextmanager
def _locked(backend: _Backend) -> Iterator[None]:
    try:
        with backend.lock(timeout=LOCK_TIMEOUT_SECONDS):
            yield
    except LockTimeout as exc:
        raise MigrationError(f"another migration holds the lock: {exc}") from exc


def sql_digest() -> str:
    """A digest of the sql/ definitions shipped with this package."""
    digest = hashlib.sha256()
    for path in sql_files():
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def apply_sql(dsn: str) -> list[str]:
    """Apply every sql/ file in one transaction, serialised against concurrent runs."""
    files = sql_files()
    with connect(dsn, application_name="pyflows-migrate") as conn:
        _prepare_for_ddl(conn)
        try:
            with conn.transaction():
                _bound_lock_waits_everywhere(conn)
                conn.execute(query("lock_sql_definitions"))
                for path in files:
                    try:
                        conn.execute(path.read_text(encoding="utf-8").encode())
                    except psycopg.Error as exc:
                        raise MigrationError(f"sql/{path.name} failed to apply: {describe(exc)}") from exc
                conn.execute(query("distribute"))
                conn.execute(query("record_sql_definitions"),
                             {"digest": sql_digest(), "version": __version__, "migrations": _applied_ids(conn)})
        except psycopg.Error as exc:
            raise MigrationError(f"sql/ failed to apply: {describe(exc)}") from exc
    return [path.name for path in files]


def migrate(dsn: str, *, dry_run: bool = False) -> MigrateResult:
    """Apply pending migrations under yoyo's lock, then every sql/ file."""
    migrations = _migrations()
    with _backend(dsn) as backend, _locked(backend):
        pending = backend.to_apply(migrations)
        if dry_run:
            return MigrateResult([m.id for m in pending], [p.name for p in sql_files()], dry_run=True)
        applied: list[str] = []
        for migration in pending:
            try:
                backend.apply_one(migration)
            except psycopg.Error as exc:
                raise MigrationError(f"migration {migration.id} failed: {describe(exc)}") from exc
            applied.append(migration.id)
        files = apply_sql(dsn)
    return MigrateResult(applied, files, dry_run=False)


def rollback(dsn: str, *, to: str | None = None, all_: bool = False) -> list[str]:
    """Roll back the newest migration, every migration after ``to``, or all of them."""
    migrations = _migrations()
    known = [m.id for m in migrations]
    if to is not None and to not in known:
        raise MigrationError(f"no migration {to!r}; known: {', '.join(known)}")
    with _backend(dsn) as backend, _locked(backend):
        applied = backend.to_rollback(migrations)  # newest first
        if all_:
            targets = list(applied)
        elif to is not None:
            keep = set(known[: known.index(to) + 1])
            targets = [m for m in applied if m.id not in keep]
        else:
            targets = list(applied)[:1]
        done: list[str] = []
        for migration in targets:
            try:
                backend.rollback_one(migration)
            except psycopg.Error as exc:
                raise MigrationError(f"rollback of {migration.id} failed: {describe(exc)}") from exc
            done.append(migration.id)
        if done:  # under the migration lock: no migrate writes installed_sql meanwhile
            _record_migrations(dsn)
    return done


def _applied_ids(conn: psycopg.Connection[Any]) -> list[str]:
    """The migrations applied, read from the migration table (the owner's)."""
    return sorted(str(r[0]) for r in conn.execute(query("applied_migrations")))


def _record_migrations(dsn: str) -> None:
    """Keep installed_sql's list of applied migrations current after a rollback (when it has one)."""
    with connect(dsn, application_name="pyflows-migrate") as conn, conn.transaction():
        row = conn.execute(query("schema_state"), {"migration_table": MIGRATION_TABLE}).fetchone()
        if row is not None and row[2]:
            conn.execute(query("record_migrations"), {"migrations": _applied_ids(conn)})


def status(dsn: str) -> Status:
    """What is applied, what is pending, and whether sql/ matches this package."""
    migrations = _migrations()
    with connect(dsn, application_name="pyflows-check") as conn:
        row = conn.execute(query("schema_state"), {"migration_table": MIGRATION_TABLE}).fetchone()
        assert row is not None
        schema_present, reads_installed, lists_migrations, reads_migration_table = (bool(v) for v in row)
        digest = None
        if reads_installed:
            found = conn.execute(query("installed_sql_digest")).fetchone()
            digest = found[0] if found else None
        applied_ids: set[str] | None = set()
        if reads_migration_table:
            applied_ids = set(_applied_ids(conn))
        elif reads_installed and lists_migrations:
            listed = conn.execute(query("installed_migrations")).fetchone()
            names = None if listed is None else cast("list[str] | None", listed[0])
            applied_ids = None if names is None else set(names)
        elif schema_present:
            applied_ids = None  # there, but this role may read neither list (a schema older than 0013)
        layout = None
        readable = conn.execute(query("layout_readable")).fetchone()
        if readable is not None and readable[0]:
            found_layout = conn.execute(query("layout")).fetchone()
            layout = None if found_layout is None else cast("dict[str, Any] | None", found_layout[0])
    if applied_ids is None:
        return Status([], [], schema_present, False, [
            "this role may not read which migrations are applied (a schema before migration 0013): "
            "run `pyflows check` as the schema owner, or `pyflows migrate` as the owner to upgrade"])
    applied = [m.id for m in migrations if m.id in applied_ids]
    pending = [m.id for m in migrations if m.id not in applied_ids]
    unknown = sorted(applied_ids - {m.id for m in migrations})
    sql_current = digest == sql_digest()
    problems: list[str] = []
    if unknown:
        problems.append(f"the database has migrations this pyflows {__version__} does not know: "
                        f"{', '.join(unknown)}; upgrade pyflows")
    if not schema_present or not applied:
        problems.append("the pyflows schema is missing: run `pyflows migrate`")
    else:
        if pending:
            problems.append(f"{len(pending)} migration(s) pending: {', '.join(pending)}; run `pyflows migrate`")
        if not sql_current:
            problems.append("the sql/ definitions differ from this package's: run `pyflows migrate`")
        if layout is not None and layout.get("pending"):
            problems.append(f"Citus is installed but {', '.join(layout['pending'])} not laid out as pyflows "
                            "distributes them: run `pyflows migrate`")
    return Status(applied, pending, schema_present, sql_current, problems, layout)


def require_current(dsn: str) -> None:
    """Raise SchemaMissing unless the schema is fully migrated."""
    state = status(dsn)
    if not state.ok:
        raise SchemaMissing("; ".join(state.problems))
