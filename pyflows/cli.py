"""The ``pyflows`` command line: a thin shell over the library (no SQL here).

Every failure is one line on stderr (``pyflows: ...``), or a JSON object with ``--json``, and a
documented exit code (docs/cli.md), never a traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg

from . import __version__, embedded, migrations
from . import demo as demo_mod
from .api import Flows, TenantFlows
from .connection import connect, describe_dsn, resolve_dsn
from .errors import (
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
)
from .models import FLOW_TABLES, FlowRow, FlowSummary, Gate
from .render import fields, table, to_json


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # a database or migration error
    USAGE = 2  # bad options, or a destructive command refused without --yes
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
    """Where the command's database is (--dsn / environment / libpq, or the embedded server), and how to print."""

    dsn: str | None
    use_embedded: bool
    data_dir: Path | None
    json: bool = False
    _resolved: str | None = None

    def resolve(self) -> str:
        if self._resolved is None:
            if self.use_embedded:
                self._resolved = embedded.start(self.data_dir).dsn()
            else:
                self._resolved = resolve_dsn(self.dsn)
        return self._resolved


def _fail(message: str, code: Exit, *, as_json: bool = False, error: PyflowsError | None = None) -> NoReturn:
    if as_json:
        payload: dict[str, Any] = {"code": (error.sqlstate if error else None) or code.name.lower(),
                                   "message": error.message if error else message}
        if error is not None:
            payload["detail"] = error.detail
            payload["hint"] = error.hint
        click.echo(to_json({"error": payload}), err=True)
    else:
        click.echo(f"pyflows: {message}", err=True)
    sys.exit(int(code))


def _exit_for(error: PyflowsError) -> Exit:
    for cls, code in _EXIT_BY_ERROR:
        if isinstance(error, cls):
            return code
    return Exit.ERROR


class _Group(click.Group):
    """Maps every pyflows and database error to one stderr line (or JSON) and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            target = ctx.find_object(Target)
            as_json = bool(target and target.json)
            mapped = exc if isinstance(exc, PyflowsError) else (
                from_psycopg(exc) if isinstance(exc, psycopg.Error) else None)
            if mapped is not None:
                _fail(str(mapped), _exit_for(mapped), as_json=as_json, error=mapped)
            if isinstance(exc, psycopg.Error):
                _fail(f"database error: {describe(exc)}", Exit.ERROR, as_json=as_json)
            # A bug, not a user error: still one line, with the way to the full traceback.
            if os.environ.get("PYFLOWS_DEBUG"):
                raise
            _fail(f"internal error {type(exc).__name__}: {describe(exc)} (set PYFLOWS_DEBUG=1 for the traceback)",
                  Exit.ERROR, as_json=as_json)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # declaration order, not alphabetical


def _json_flag(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(Target).json = True
    return value


json_option = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_json_flag,
                           is_eager=True, help="Print stable JSON (errors as JSON on stderr).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", metavar="DSN",
              help="PostgreSQL conninfo or URL. Default: $PYFLOWS_DSN, else $DATABASE_URL, else libpq's PG* variables.")
@click.option("--embedded", "use_embedded", is_flag=True,
              help="Use the embedded PostgreSQL (started if needed) instead of a DSN.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PYFLOWS_DATA_DIR",
              help="Data directory of the embedded server. Default: the user's data directory.")
@click.version_option(__version__, prog_name="pyflows")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, use_embedded: bool, data_dir: Path | None) -> None:
    """Manage pyflows discovery flows and the schema that keeps them."""
    if dsn and use_embedded:
        raise click.UsageError("--dsn and --embedded name two different servers; give one")
    ctx.obj = Target(dsn=dsn, use_embedded=use_embedded, data_dir=data_dir)


# ---- schema ---------------------------------------------------------------------------------------------


@cli.command()
@click.option("--dry-run", is_flag=True, help="Say what would be applied, and apply nothing.")
@click.pass_obj
def migrate(target: Target, dry_run: bool) -> None:
    """Apply pending migrations, then the sql/ definitions (always)."""
    result = migrations.migrate(target.resolve(), dry_run=dry_run)
    verb = "would apply" if dry_run else "applied"
    if result.applied:
        for migration_id in result.applied:
            click.echo(f"{verb} migration {migration_id}")
    else:
        click.echo("no migration pending")
    click.echo(f"{verb} sql/ definitions: {', '.join(result.sql_files)}")


@cli.command()
@click.option("--to", "to", metavar="ID", help="Roll back every migration applied after ID (ID stays).")
@click.option("--all", "all_", is_flag=True, help="Roll back every migration: drops the pyflows schemas.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def rollback(target: Target, to: str | None, all_: bool, yes: bool) -> None:
    """Roll back the newest migration (or --to ID, or --all). Destroys the data those migrations hold."""
    if to and all_:
        raise click.UsageError("--to and --all contradict each other; give one")
    what = "every pyflows migration" if all_ else (f"every migration after {to}" if to else "the newest migration")
    dsn = target.resolve()
    if not yes:
        if not sys.stdin.isatty():
            _fail(f"refusing to roll back {what} without --yes (no terminal to ask)", Exit.USAGE)
        click.confirm(f"Roll back {what} on {describe_dsn(dsn)}? Data in the dropped tables is lost",
                      abort=True)
    done = migrations.rollback(dsn, to=to, all_=all_)
    if not done:
        click.echo("nothing to roll back")
    for migration_id in done:
        click.echo(f"rolled back migration {migration_id}")


@cli.command()
@click.pass_obj
def check(target: Target) -> None:
    """Exit non-zero unless the schema is fully migrated and sql/ is current."""
    state = migrations.status(target.resolve())
    for migration_id in state.applied:
        click.echo(f"applied  {migration_id}")
    for migration_id in state.pending:
        click.echo(f"pending  {migration_id}")
    if not state.ok:
        for problem in state.problems:
            click.echo(f"pyflows: {problem}", err=True)
        sys.exit(int(Exit.SCHEMA))
    click.echo("pyflows schema is up to date")


@cli.command()
@click.pass_obj
def demo(target: Target) -> None:
    """Migrate and seed two demo tenants; with no DSN, on the embedded PostgreSQL."""
    if not target.use_embedded and not resolve_dsn(target.dsn):
        target.use_embedded = True
    dsn = target.resolve()
    if target.use_embedded:
        data_dir = target.data_dir or embedded.default_data_dir()
        click.echo(f"Embedded PostgreSQL in {data_dir} (left running; stop it with `pyflows embedded stop`)")
    result = migrations.migrate(dsn)
    click.echo(f"Migrated: {len(result.applied)} migration(s) applied, sql/ definitions applied.")
    demo_mod.seed(dsn)
    for tenant in demo_mod.describe(dsn):
        click.echo("")
        click.echo(f"{tenant.client_name} / {tenant.engagement_name}")
        click.echo(f"  client {tenant.client_id}  engagement {tenant.engagement_id}")
        rendered = table(
            ("flow", "name", "status", "phase", "progress", "imports", "records", "mappings", "assets",
             "dependencies"),
            [(f.id, f.name, f.status, f.current_phase, f"{f.progress_percentage}%", f.imports, f.raw_records,
              f.mappings, f.assets, f.dependencies) for f in tenant.flows])
        click.echo("\n".join("  " + line for line in rendered.splitlines()))
    first_client, first_engagement = demo_mod.DEMO_TENANTS[0]
    click.echo("")
    click.echo("Use this database with the other commands:")
    click.echo(f"  export PYFLOWS_DSN='{dsn}'")
    click.echo("  pyflows check")
    click.echo(f"  pyflows flows --client {first_client} --engagement {first_engagement} gate")
    click.echo("  # as pyflows_app under Acme's context, row-level security shows Acme's flows only:")
    click.echo(f"  {demo_mod.psql_example()}")


@cli.group(name="embedded", cls=_Group)
def embedded_group() -> None:
    """The embedded PostgreSQL (from the pgserver wheel)."""


@embedded_group.command(name="start")
@click.pass_obj
def embedded_start(target: Target) -> None:
    """Start the embedded server (or find it running) and print its DSN."""
    click.echo(embedded.start(target.data_dir).dsn())


@embedded_group.command(name="stop")
@click.pass_obj
def embedded_stop(target: Target) -> None:
    """Stop the embedded server."""
    data_dir = target.data_dir or embedded.default_data_dir()
    if embedded.stop(target.data_dir):
        click.echo(f"stopped the embedded PostgreSQL in {data_dir}")
    else:
        click.echo(f"no embedded PostgreSQL is running in {data_dir}")


# ---- flows ----------------------------------------------------------------------------------------------


@dataclass
class FlowsTarget:
    target: Target
    client_id: uuid.UUID | None
    engagement_id: uuid.UUID | None
    actor: str

    def api(self) -> Flows:
        conn = connect(self.target.resolve(), autocommit=True, application_name="pyflows-cli")
        click.get_current_context().call_on_close(conn.close)
        return Flows(conn)

    def tenant(self) -> TenantFlows:
        if self.client_id is None or self.engagement_id is None:
            raise click.UsageError("this command needs --client and --engagement "
                                   "(or PYFLOWS_CLIENT_ID and PYFLOWS_ENGAGEMENT_ID)")
        return self.api().tenant(self.client_id, self.engagement_id, self.actor)


@cli.group(cls=_Group)
@click.option("--client", "client_id", type=click.UUID, envvar="PYFLOWS_CLIENT_ID",
              help="Client id (PYFLOWS_CLIENT_ID).")
@click.option("--engagement", "engagement_id", type=click.UUID, envvar="PYFLOWS_ENGAGEMENT_ID",
              help="Engagement id (PYFLOWS_ENGAGEMENT_ID).")
@click.option("--actor", default=lambda: getpass.getuser(), show_default="the OS user",
              help="Who acts, as recorded by pyflows.")
@click.pass_context
def flows(ctx: click.Context, client_id: uuid.UUID | None, engagement_id: uuid.UUID | None, actor: str) -> None:
    """Discovery flows of one client and engagement: gate, start, list, show, resume, progress."""
    ctx.obj = FlowsTarget(ctx.find_object(Target) or Target(None, False, None), client_id, engagement_id, actor)


def _emit(obj: FlowsTarget, value: Any, human: str) -> None:
    click.echo(to_json(value) if obj.target.json else human)


def _summary(flow: FlowSummary) -> str:
    phase = f"{flow.current_phase} ({flow.phase_title})" if flow.current_phase else None
    return fields([("flow", flow.flow_id), ("name", flow.name), ("status", flow.status), ("phase", phase),
                   ("progress", f"{flow.progress_percentage}%"), ("created by", flow.created_by),
                   ("created", flow.created_at), ("last activity", flow.last_activity_at),
                   ("heartbeat", flow.heartbeat_at), ("completed", flow.completed_at)])


def _steps(steps: list[str]) -> str:
    return "\n".join(["Next steps:"] + [f"  - {step}" for step in steps])


def _gate_text(gate: Gate) -> str:
    if gate.can_start or gate.blocking_flow is None:
        return "A new flow can start.\n" + _steps(gate.next_steps)
    flow = gate.blocking_flow
    return "\n".join([
        f'A new flow cannot start: "{flow.name}" is {flow.status.replace("_", " ")} '
        f"in {flow.phase_title or 'no phase'} at {flow.progress_percentage}%.",
        "", _summary(flow), "", _steps(gate.next_steps), "",
        f"  pyflows flows resume {flow.flow_id}",
    ])


def _rows_text(rows: list[FlowRow]) -> str:
    if not rows:
        return "no flows"
    return table(("flow", "name", "status", "phase", "progress", "imports", "records", "assets", "dependencies",
                  "last activity"),
                 [(r.flow_id, r.name, r.status, r.current_phase, f"{r.progress_percentage}%",
                   r.counts.get("data_imports"), r.counts.get("raw_import_records"), r.counts.get("assets"),
                   r.counts.get("asset_dependencies"), r.last_activity_at) for r in rows])


@flows.command()
@json_option
@click.pass_obj
def gate(obj: FlowsTarget) -> None:
    """Can a new flow start? If not, which flow blocks it and what to do. Exits 13 when blocked."""
    result = obj.tenant().gate()
    _emit(obj, result, _gate_text(result))
    if not result.can_start:
        sys.exit(int(Exit.CONFLICT))


@flows.command()
@click.argument("name")
@click.option("--created-by", help="Who the flow is for (default: the actor).")
@json_option
@click.pass_obj
def start(obj: FlowsTarget, name: str, created_by: str | None) -> None:
    """Start a new flow called NAME (refused while another flow is incomplete)."""
    flow = obj.tenant().start(name, created_by)
    _emit(obj, flow, f"started flow {flow.flow_id}\n" + _summary(flow))


@flows.command()
@click.argument("filename")
@click.option("--storage-uri", required=True, help="Where the uploaded file is stored (file://, s3://, ...).")
@click.option("--byte-size", required=True, type=int, help="The file's size in bytes.")
@click.option("--flow-name", help="Name of the new flow (default: FILENAME).")
@click.option("--flow", "flow_id", type=click.UUID, help="Add the file to this incomplete flow instead.")
@json_option
@click.pass_obj
def upload(obj: FlowsTarget, filename: str, storage_uri: str, byte_size: int, flow_name: str | None,
           flow_id: uuid.UUID | None) -> None:
    """Record an uploaded file: a new flow with its first import, or (--flow) another import of a flow."""
    api = obj.tenant()
    if flow_id is not None:
        if flow_name:
            raise click.UsageError("--flow-name names a new flow; --flow adds to an existing one")
        result = api.add_import(flow_id, filename, storage_uri, byte_size)
    else:
        result = api.start_import(filename, storage_uri, byte_size, flow_name)
    _emit(obj, result, f"import {result.import_id} in flow {result.flow_id}")


@flows.command(name="list")
@click.option("--filter", "filter_", type=click.Choice(["incomplete", "terminal", "all"]), default="all",
              show_default=True)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--all-tenants", is_flag=True, help="Incomplete flows of every tenant (pyflows_admin only).")
@click.option("--idle-for", metavar="DURATION", help="With --all-tenants: only flows idle longer, e.g. 2h, 7d.")
@json_option
@click.pass_obj
def list_(obj: FlowsTarget, filter_: str, limit: int, offset: int, all_tenants: bool, idle_for: str | None) -> None:
    """The context's flows, most recently active first; or, for admins, every tenant's incomplete flows."""
    if not all_tenants:
        if idle_for:
            raise click.UsageError("--idle-for goes with --all-tenants")
        rows = obj.tenant().list_flows(filter_, limit, offset)
        _emit(obj, rows, _rows_text(rows))
        return
    admin_rows = obj.api().admin_list_incomplete(parse_duration(idle_for) if idle_for else None)
    human = "no incomplete flows" if not admin_rows else table(
        ("client", "engagement", "flow", "name", "status", "phase", "progress", "idle"),
        [(r.client_name, r.engagement_name, r.flow_id, r.name, r.status, r.current_phase,
          f"{r.progress_percentage}%", r.idle_for) for r in admin_rows])
    _emit(obj, admin_rows, human)


@flows.command()
@click.argument("flow_id", type=click.UUID)
@json_option
@click.pass_obj
def show(obj: FlowsTarget, flow_id: uuid.UUID) -> None:
    """Everything about one flow: phases, counts, errors, insights, next steps."""
    details = obj.tenant().details(flow_id)
    phases = table(("phase", "title", "state"), [(p.phase, p.title, p.state) for p in details.phases])
    counts = fields([(name, details.counts.get(name)) for name in FLOW_TABLES])
    parts = [_summary(details.flow), "", phases, "", counts]
    if details.errors:
        parts += ["", "Errors:"] + [f"  - {json.dumps(e, ensure_ascii=False)}" for e in details.errors]
    if details.agent_insights:
        parts += ["", "Agent insights:"] + [f"  - {json.dumps(i, ensure_ascii=False)}" for i in details.agent_insights]
    yes_no = {True: "yes", False: "no"}
    parts += ["", _steps(details.next_steps), "",
              f"can resume: {yes_no[details.can_resume]}   can delete: {yes_no[details.can_delete]}"]
    _emit(obj, details, "\n".join(parts))


@flows.command()
@click.argument("flow_id", type=click.UUID)
@json_option
@click.pass_obj
def resume(obj: FlowsTarget, flow_id: uuid.UUID) -> None:
    """Resume a paused, failed, waiting or new flow (a running flow is left as it is)."""
    result = obj.tenant().resume(flow_id)
    _emit(obj, result, f"{result.message}; continue with {result.phase_title or 'no phase'}\n"
                       + _steps(result.next_steps))


@flows.command()
@click.argument("flow_id", type=click.UUID)
@click.argument("phase")
@click.option("--insight", metavar="JSON", help="An agent insight to keep with the phase (JSON).")
@json_option
@click.pass_obj
def progress(obj: FlowsTarget, flow_id: uuid.UUID, phase: str, insight: str | None) -> None:
    """Mark PHASE of a flow complete (the flow completes after its last phase)."""
    try:
        parsed = json.loads(insight) if insight is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--insight") from exc
    flow = obj.tenant().record_progress(flow_id, phase, parsed)
    _emit(obj, flow, _summary(flow))


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d`` or ``1w``; a plain number is seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 2h or 7d", param_hint="--idle-for")
    unit = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
    return timedelta(**{unit: int(match[1])})


def main() -> None:
    cli(prog_name="pyflows")


__all__ = ["cli", "main", "Exit", "parse_duration"]
