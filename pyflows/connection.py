"""Where pyflows connects, and how a connection is opened.

The DSN comes from, in order: an explicit value (``--dsn``), ``PYFLOWS_DSN``, ``DATABASE_URL``,
and finally libpq's own ``PG*`` variables (an empty conninfo lets libpq fill in the rest).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import ConnectionFailed, connection_failed

__all__ = ["resolve_dsn", "connect", "describe_dsn"]

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
        raise connection_failed(exc) from exc
