"""What every command shares: the exit codes and the one map from errors to them, the connection
target (--dsn or the embedded server) and the tenant options, confirmations, and --json."""

from __future__ import annotations

import functools
import getpass
import os
import re
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg

from .. import embedded
from ..api import Flows, TenantFlows
from ..connection import LIBPQ_SERVER_VARIABLES, connect, target_summary
from ..errors import (
    ConnectionFailed,
    FlowBusy,
    FlowNotFound,
    Forbidden,
    IncompleteFlowExists,
    InvalidRequest,
    NoContext,
    PyflowsError,
    SchemaMissing,
    describe,
    from_psycopg,
    reworded,
)
from ..render import to_json


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # a database or migration error
    USAGE = 2  # bad options, or a destructive command refused without --yes
    DECLINED = 5  # the user answered no to a confirmation
    CONNECTION = 3  # server unreachable, login refused, no such database, bad DSN
    SCHEMA = 4  # schema missing or not up to date
    NO_CONTEXT = 10  # PF401
    FORBIDDEN = 11  # PF403
    NOT_FOUND = 12  # PF404
    CONFLICT = 13  # PF409, and `flows gate` when a flow blocks new ones
    INVALID = 14  # PF422
    BUSY = 15  # PF423


_EXIT_BY_ERROR: list[tuple[type[PyflowsError], Exit]] = [
    (ConnectionFailed, Exit.CONNECTION), (embedded.EmbeddedUnavailable, Exit.CONNECTION),
    (SchemaMissing, Exit.SCHEMA), (NoContext, Exit.NO_CONTEXT), (Forbidden, Exit.FORBIDDEN),
    (FlowNotFound, Exit.NOT_FOUND), (IncompleteFlowExists, Exit.CONFLICT), (InvalidRequest, Exit.INVALID),
    (FlowBusy, Exit.BUSY),
]

@dataclass
class Target:
    """Where the command's database is, where that came from, and how to print.

    In order: --embedded; --dsn; PYFLOWS_DSN; DATABASE_URL; libpq's PG* variables; the embedded server
    `pyflows demo` left running (in --data-dir / PYFLOWS_DATA_DIR, else pyflows' own data directory);
    and, with nothing named at all, libpq's defaults (``nothing_named``: schema changes ask first).
    """

    dsn: str | None
    use_embedded: bool
    data_dir: Path | None
    json: bool = False
    quiet: bool = False
    origin: str = ""
    nothing_named: bool = False
    embedded_because: str = "--embedded"  # why the embedded server, when use_embedded
    _resolved: str | None = None
    _conn: psycopg.Connection[Any] | None = None

    def resolve(self) -> str:
        if self._resolved is None:
            self._resolved, self.origin = self._find()
        return self._resolved

    def _find(self) -> tuple[str, str]:
        if self.use_embedded:
            server = embedded.running(self.data_dir)
            if server is not None:
                return server.dsn(), f"the embedded PostgreSQL in {server.data_dir} ({self.embedded_because})"
            server = embedded.start(self.data_dir)
            if not self.json:
                click.echo(f"pyflows: started the embedded PostgreSQL in {server.data_dir}", err=True)
            return server.dsn(), f"the embedded PostgreSQL in {server.data_dir}, started ({self.embedded_because})"
        for origin, value in (("--dsn", self.dsn), ("PYFLOWS_DSN", os.environ.get("PYFLOWS_DSN")),
                              ("DATABASE_URL", os.environ.get("DATABASE_URL"))):
            if value:
                return value, origin
        named = [name for name in LIBPQ_SERVER_VARIABLES if os.environ.get(name)]
        if named:
            return "", f"libpq's variables {', '.join(named)}"
        server = embedded.running(self.data_dir)
        if server is not None:
            return server.dsn(), (f"the embedded PostgreSQL in {server.data_dir}, running (nothing else named; "
                                  "`pyflows demo` leaves it running)")
        self.nothing_named = True
        return "", "nothing named: libpq's defaults (give --dsn, PYFLOWS_DSN or DATABASE_URL)"

    def describe(self) -> str:
        """The target and where it came from, for a first line on stderr."""
        return f"{target_summary(self.resolve())} ({self.origin})"

    def announce(self) -> None:
        """Say which database the command works on (stderr; not with --json, whose output says it)."""
        if not self.json:
            click.echo(f"pyflows: database {self.describe()}", err=True)

    def connection(self, application_name: str) -> psycopg.Connection[Any]:
        """The command's one connection (autocommit), named for pg_stat_activity, closed when the command ends."""
        if self._conn is None:
            self._conn = connect(self.resolve(), autocommit=True, application_name=application_name)
            click.get_current_context().call_on_close(self._conn.close)
        return self._conn

    def flows(self, application_name: str) -> Flows:
        return Flows(self.connection(application_name))


def fail(message: str, code: Exit, *, as_json: bool = False, error: PyflowsError | None = None,
         name: str | None = None) -> NoReturn:
    """One line on stderr (or a JSON object with as_json), then exit with code. The JSON's code is the
    error's SQLSTATE, else name, else the exit code's name."""
    if as_json:
        payload: dict[str, Any] = {"code": (error.sqlstate if error else None) or name or code.name.lower(),
                                   "message": error.message if error else message}
        if error is not None:
            payload["detail"] = error.detail
            payload["hint"] = error.hint
        click.echo(to_json({"error": payload}), err=True)
    else:
        click.echo(f"pyflows: {message}", err=True)
    sys.exit(int(code))


def _wants_json(ctx: click.Context, raw: list[str]) -> bool:
    target = ctx.find_object(Target)
    options = raw[:raw.index("--")] if "--" in raw else raw  # after --, "--json" would be an argument
    return bool(target and target.json) or "--json" in options


def exit_for(error: PyflowsError) -> Exit:
    for cls, code in _EXIT_BY_ERROR:
        if isinstance(error, cls):
            return code
    return Exit.ERROR


class Group(click.Group):
    """Maps every pyflows and database error, usage error, refusal and declined confirmation to one stderr
    line (or, with --json, a JSON object) and its exit code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[f"pyflows.args.{self.name}"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        # This group's arguments, its subcommand's among them: --json there asks for JSON errors even when
        # parsing them failed before the option was seen.
        raw: list[str] = ctx.meta.get(f"pyflows.args.{self.name}", [])
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, SystemExit):
            raise
        except click.Abort:
            fail("not confirmed: nothing was done", Exit.DECLINED, as_json=_wants_json(ctx, raw), name="declined")
        except click.ClickException as exc:
            if not _wants_json(ctx, raw):
                raise
            fail(exc.format_message(), Exit(exc.exit_code) if exc.exit_code in set(Exit) else Exit.USAGE,
                 as_json=True, name="usage")
        except Exception as exc:
            as_json = _wants_json(ctx, raw)
            mapped = exc if isinstance(exc, PyflowsError) else (
                from_psycopg(exc) if isinstance(exc, psycopg.Error) else None)
            if mapped is not None:
                mapped = reworded(mapped, "cli")
                fail(str(mapped), exit_for(mapped), as_json=as_json, error=mapped)
            if isinstance(exc, psycopg.Error):
                fail(f"database error: {describe(exc)}", Exit.ERROR, as_json=as_json)
            # A bug, not a user error: still one line, with the way to the full traceback.
            if os.environ.get("PYFLOWS_DEBUG"):
                raise
            fail(f"internal error {type(exc).__name__}: {describe(exc)} (set PYFLOWS_DEBUG=1 for the traceback)",
                 Exit.ERROR, as_json=as_json)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # declaration order, not alphabetical


def json_flag(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(Target).json = True
    return value


json_option = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=json_flag,
                           is_eager=True, help="Print stable JSON (errors as JSON on stderr).")



@dataclass
class FlowsTarget:
    target: Target
    client_id: uuid.UUID | None
    engagement_id: uuid.UUID | None
    actor: str

    def connection(self) -> psycopg.Connection[Any]:
        return self.target.connection(application_name="pyflows-cli")

    def api(self) -> Flows:
        return Flows(self.connection())

    def tenant(self) -> TenantFlows:
        if self.client_id is None or self.engagement_id is None:
            raise click.UsageError("this command needs --client and --engagement "
                                   "(or PYFLOWS_CLIENT_ID and PYFLOWS_ENGAGEMENT_ID)")
        return self.api().tenant(self.client_id, self.engagement_id, self.actor)


def tenant_options(group: Callable[..., None]) -> Callable[..., None]:
    """--client, --engagement and --actor for a command group; its commands get a FlowsTarget."""
    options = [
        click.option("--client", "client_id", type=click.UUID, envvar="PYFLOWS_CLIENT_ID",
                     help="Client id (PYFLOWS_CLIENT_ID)."),
        click.option("--engagement", "engagement_id", type=click.UUID, envvar="PYFLOWS_ENGAGEMENT_ID",
                     help="Engagement id (PYFLOWS_ENGAGEMENT_ID)."),
        click.option("--actor", default=lambda: getpass.getuser(), show_default="the OS user",
                     help="Who acts, as recorded by pyflows."),
    ]

    @functools.wraps(group)
    def bind(client_id: uuid.UUID | None, engagement_id: uuid.UUID | None, actor: str) -> None:
        ctx = click.get_current_context()
        ctx.obj = FlowsTarget(ctx.find_object(Target) or Target(None, False, None), client_id, engagement_id, actor)

    for option in reversed(options):
        bind = option(bind)
    return bind


def invocation() -> str:
    """How to run pyflows again, for the commands it suggests: ``pyflows`` when that is on PATH; else the path it
    was started by (a virtual environment's ``.venv/bin/pyflows`` that is not activated); ``python -m pyflows``
    (with this interpreter) when it was started that way."""
    started = sys.argv[0] if sys.argv else ""
    if started.endswith("__main__.py"):
        return f"{shlex.quote(sys.executable)} -m pyflows"
    if os.path.basename(started) != "pyflows":
        return "pyflows"  # not the script (a test runner, an embedding program): the name it installs
    on_path = shutil.which("pyflows")
    if on_path and os.path.realpath(on_path) == os.path.realpath(started):
        return "pyflows"
    return shlex.quote(started)


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: progress is shown there only."""
    return sys.stderr.isatty()


def shows_progress(target: Target) -> bool:
    """Progress goes to stderr on a terminal, never with --json or --quiet."""
    return not target.json and not target.quiet and stderr_is_terminal()


def interactive() -> bool:
    """Whether a person can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()


def confirm(question: str, given: bool, dry_run: bool = False, action: str = "delete", *, needs: str = "--yes",
            ask_anyway: bool = False) -> None:
    """Before a destructive step: go on when ``given`` (the options that answer the question, ``needs``) or for a
    dry run; else ask on a terminal, and refuse without one. ``ask_anyway``: a terminal is asked even when given."""
    if dry_run or (given and not ask_anyway):
        return
    if interactive():
        click.confirm(question, abort=True, err=True)
    elif not given:
        raise Refused(f"refusing to {action} without {needs} (no terminal to ask)")


class Refused(click.ClickException):
    exit_code = int(Exit.USAGE)

    def show(self, file: Any = None) -> None:
        click.echo(f"pyflows: {self.message}", err=True)


def parse_duration(text: str, option: str = "--idle-for") -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d`` or ``1w``; a plain number is seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 2h or 7d", param_hint=option)
    unit = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
    return timedelta(**{unit: int(match[1])})
