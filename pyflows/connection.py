"""Where pyflows connects, and how a connection is opened.

The DSN comes from, in order: an explicit value (``--dsn``), ``PYFLOWS_DSN``, ``DATABASE_URL``,
and finally libpq's own ``PG*`` variables (an empty conninfo lets libpq fill in the rest).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionFailed, connection_failed

__all__ = ["resolve_dsn", "connect", "describe_dsn", "target_summary", "LIBPQ_SERVER_VARIABLES"]

# The libpq variables that choose a server or database: any of them set names a target.
LIBPQ_SERVER_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")

DEFAULT_APPLICATION_NAME = "pyflows"


def resolve_dsn(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The conninfo string to use: explicit, else PYFLOWS_DSN, else DATABASE_URL, else '' (libpq PG*)."""
    env = os.environ if environ is None else environ
    for candidate in (explicit, env.get("PYFLOWS_DSN"), env.get("DATABASE_URL")):
        if candidate:
            return candidate
    return ""


def describe_dsn(dsn: str) -> str:
    """The DSN with any password masked, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    shown = {key: str(value) for key, value in params.items() if value is not None}
    if "password" in shown:
        shown["password"] = "***"
    return make_conninfo(**shown) if shown else "<libpq defaults>"


def target_summary(dsn: str) -> str:
    """The host, port, database and user that dsn reaches, libpq's variables and defaults filled in."""
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None} if dsn else {}
    except psycopg.ProgrammingError:
        return describe_dsn(dsn)
    defaults = {o.keyword.decode(): (o.val or o.compiled or b"").decode() for o in pq.Conninfo.get_defaults()}
    value = {key: params.get(key) or defaults.get(key, "") for key in ("host", "port", "dbname", "user")}
    return (f"host={value['host'] or 'the local socket'} port={value['port'] or '5432'} "
            f"dbname={value['dbname'] or value['user']} user={value['user']}")


def connect(
    dsn: str,
    *,
    autocommit: bool = False,
    application_name: str = DEFAULT_APPLICATION_NAME,
    connect_timeout: int = 10,
) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection, turning any failure to connect into one readable ConnectionFailed."""
    try:
        params = conninfo_to_dict(dsn) if dsn else {}
    except psycopg.ProgrammingError as exc:
        raise ConnectionFailed(f"invalid DSN: {str(exc).strip()}", reason="dsn") from exc
    params.setdefault("application_name", application_name)
    params.setdefault("connect_timeout", str(connect_timeout))
    conninfo = make_conninfo(**{key: str(value) for key, value in params.items() if value is not None})
    try:
        return psycopg.connect(conninfo, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        failed = connection_failed(exc)
        host = str(params.get("host") or "")
        if failed.reason == "unreachable" and os.path.isabs(host) and os.path.isfile(os.path.join(host, "PG_VERSION")):
            # The embedded server listens in its own data directory: this one is there, and stopped.
            failed.hint = (f"{host} is an embedded PostgreSQL's data directory and it is not running: "
                           f"start it with `pyflows --data-dir {host} embedded start`")
        raise failed from exc
