"""An embedded PostgreSQL for pyflows, from the ``pgserver`` wheel: no server to install.

The data directory is pyflows' own (``default_data_dir()`` unless told otherwise) and is reused
on the next run. The server listens on a Unix socket inside that directory only, and keeps running
after the command that started it, so the printed DSN works for later commands; ``stop()`` ends it.
When run as root, pgserver runs PostgreSQL as a system user ``pgserver`` that it creates, and
makes the directories above the data directory traversable by it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .connection import connect
from .errors import PyflowsError
from .queries import query

__all__ = ["EmbeddedServer", "EmbeddedUnavailable", "default_data_dir", "running", "start", "stop", "temporary",
           "DATABASE"]

DATABASE = "pyflows"


class EmbeddedUnavailable(PyflowsError):
    """The embedded server cannot be started (pgserver missing, or it failed)."""


@dataclass(frozen=True)
class EmbeddedServer:
    data_dir: Path
    socket_dir: str
    port: int
    user: str = "postgres"

    def dsn(self, dbname: str = DATABASE) -> str:
        return make_conninfo(host=self.socket_dir, port=str(self.port), user=self.user, dbname=dbname)


def default_data_dir() -> Path:
    return platformdirs.user_data_path("pyflows") / "pgdata"


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver then uses /tmp, which is fine.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "the embedded server needs pgserver: pip install 'pyflows[embedded]'"
        ) from exc
    return pgserver


def start(data_dir: Path | None = None, *, create_database: bool = True) -> EmbeddedServer:
    """Start (or reuse) the embedded server and make sure its ``pyflows`` database exists."""
    pgserver = _pgserver()
    path = (data_dir or default_data_dir()).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = pgserver.get_server(path, cleanup_mode=None)
        info = handle.get_postmaster_info()
    except Exception as exc:  # pgserver raises plain exceptions; say which server failed
        raise EmbeddedUnavailable(f"the embedded PostgreSQL in {path} failed to start: {exc}") from exc
    server = EmbeddedServer(data_dir=path, socket_dir=str(info.socket_dir), port=int(info.port))
    if create_database:
        _ensure_database(server)
    return server


@contextmanager
def temporary() -> Iterator[EmbeddedServer]:
    """A throw-away embedded server in a new temporary directory, stopped and deleted afterwards."""
    pgserver = _pgserver()
    path = Path(tempfile.mkdtemp(prefix="pyflows-pg-")).resolve()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = pgserver.get_server(path / "pgdata", cleanup_mode="delete")
    except Exception as exc:
        shutil.rmtree(path, ignore_errors=True)
        raise EmbeddedUnavailable(f"the embedded PostgreSQL in {path} failed to start: {exc}") from exc
    try:
        info = handle.get_postmaster_info()
        yield EmbeddedServer(data_dir=path / "pgdata", socket_dir=str(info.socket_dir), port=int(info.port))
    finally:
        handle.cleanup()
        shutil.rmtree(path, ignore_errors=True)


def _ensure_database(server: EmbeddedServer) -> None:
    with connect(server.dsn("postgres"), autocommit=True) as conn:
        row = conn.execute(query("database_exists"), {"dbname": DATABASE}).fetchone()
        if row is None or not row[0]:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))


def running(data_dir: Path | None = None) -> EmbeddedServer | None:
    """The embedded server running in ``data_dir`` (default: pyflows' own), or None: none is running there,
    or pgserver is not installed. Starts nothing."""
    try:
        _pgserver()
    except EmbeddedUnavailable:
        return None
    from pgserver.utils import PostmasterInfo

    path = (data_dir or default_data_dir()).expanduser().resolve()
    info = PostmasterInfo.read_from_pgdata(path) if path.is_dir() else None
    if info is None or not info.is_running() or info.socket_dir is None or info.port is None:
        return None
    return EmbeddedServer(data_dir=path, socket_dir=str(info.socket_dir), port=int(info.port))


def stop(data_dir: Path | None = None) -> bool:
    """Stop the embedded server in ``data_dir``; False when none was running there."""
    _pgserver()
    from pgserver import _commands
    from pgserver.utils import PostmasterInfo

    path = (data_dir or default_data_dir()).expanduser().resolve()
    info = PostmasterInfo.read_from_pgdata(path) if path.is_dir() else None
    if info is None or not info.is_running():
        return False
    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user)  # type: ignore[attr-defined]
    return True
