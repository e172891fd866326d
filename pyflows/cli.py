"""The ``pyflows`` command line: a thin shell over the library (no SQL here).

Every failure is one line on stderr (``pyflows: ...``), or a JSON object with ``--json``, and a
documented exit code (docs/cli.md), never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import itertools
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
from .files import ROOTS_ENV
from .files import drain as drain_files
from .models import FLOW_TABLES, BatchItem, FlowRow, FlowSummary, Gate, Impact, Safety
from .render import fields, plain, table, to_json


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
        if not _interactive():
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

    _conn: psycopg.Connection[Any] | None = None

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            self._conn = connect(self.target.resolve(), autocommit=True, application_name="pyflows-cli")
            click.get_current_context().call_on_close(self._conn.close)
        return self._conn

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


@cli.group(cls=_Group)
@tenant_options
def flows() -> None:
    """Discovery flows of one client and engagement: gate, start, list, show, resume, progress, impact, delete,
    purge, restore."""


def _emit(obj: FlowsTarget, value: Any, human: str) -> None:
    _emit_plain(obj.target, value, human)


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


def _impact_text(impact: Impact) -> str:
    flow = impact.flow
    lines = [f'Deleting "{flow.name}" ({flow.flow_id}, {flow.status}, {flow.progress_percentage}%) removes:',
             fields([("discovery_flows", impact.counts.get("discovery_flows"))]
                    + [(name, impact.counts.get(name)) for name in FLOW_TABLES]),
             f"{impact.total_rows} rows in all; {impact.files.count} stored file(s) will be queued for removal"]
    lines += [f"  {uri}" for uri in impact.files.sample]
    if impact.files.count > len(impact.files.sample):
        lines.append(f"  ... and {impact.files.count - len(impact.files.sample)} more")
    lines.append(_verdict_text(impact.safety))
    return "\n".join(lines)


def _verdict_text(safety: Safety) -> str:
    lines = ["safe to delete" if safety.safe else "BLOCKED"]
    lines += [f"  blocker {b.code}: {b.message}" + ("" if b.overridable else " (cannot be forced)")
              for b in safety.blockers]
    lines += [f"  warning {w.code}: {w.message}" for w in safety.warnings]
    return "\n".join(lines)


@flows.command()
@click.argument("flow_id", type=click.UUID)
@json_option
@click.pass_obj
def impact(obj: FlowsTarget, flow_id: uuid.UUID) -> None:
    """What deleting a flow would remove, and whether it is safe (nothing is deleted)."""
    result = obj.tenant().deletion_impact(flow_id)
    _emit(obj, result, _impact_text(result))


def _read_ids(path: str) -> Iterator[uuid.UUID]:
    """Flow ids from a file (or - for stdin), one a line; blank lines and # comments are skipped."""
    with click.open_file(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                yield uuid.UUID(text)
            except ValueError:
                raise click.BadParameter(f"line {number}: {text!r} is not a flow id",
                                         param_hint="--from-file") from None


def _chunks(ids: Iterator[uuid.UUID], size: int) -> Iterator[list[uuid.UUID]]:
    chunk: list[uuid.UUID] = []
    for flow_id in ids:
        chunk.append(flow_id)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


BATCH_CHUNK = 1000


@flows.command()
@click.argument("flow_ids", nargs=-1, type=click.UUID)
@click.option("--reason", required=True, help="Why: kept in the audit event (required, not empty).")
@click.option("--force", is_flag=True, help="Delete even a running (live) or a completed/cancelled flow.")
@click.option("--dry-run", is_flag=True, help="Run the delete and roll it back: report what it would remove.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--from-file", "from_file", metavar="FILE", help="Flow ids, one a line (- for stdin).")
@click.option("--atomic/--per-flow", default=True, show_default=True,
              help="All or nothing, or each flow on its own with a result per flow.")
@json_option
@click.pass_obj
def delete(obj: FlowsTarget, flow_ids: tuple[uuid.UUID, ...], reason: str, force: bool, dry_run: bool, yes: bool,
           from_file: str | None, atomic: bool) -> None:
    """Delete flows and everything they created, audited. Shows the impact first and asks for confirmation."""
    if bool(flow_ids) == bool(from_file):
        raise click.UsageError("give flow ids as arguments or --from-file FILE (one of them)")
    api = obj.tenant()
    if flow_ids and len(flow_ids) == 1 and not from_file:
        _delete_one(obj, api, flow_ids[0], reason, force, dry_run, yes)
        return
    _delete_batch(obj, api, flow_ids, from_file, reason, force, dry_run, yes, atomic)


def _interactive() -> bool:
    """Whether a person can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()


def _confirm(question: str, yes: bool, dry_run: bool, action: str = "delete") -> None:
    if yes or dry_run:
        return
    if not _interactive():
        raise _Refused(f"refusing to {action} without --yes (no terminal to ask)")
    click.confirm(question, abort=True, err=True)


class _Refused(click.ClickException):
    exit_code = int(Exit.USAGE)

    def show(self, file: Any = None) -> None:
        click.echo(f"pyflows: {self.message}", err=True)


def _delete_one(obj: FlowsTarget, api: TenantFlows, flow_id: uuid.UUID, reason: str, force: bool, dry_run: bool,
                yes: bool) -> None:
    preview = api.deletion_impact(flow_id)
    if not obj.target.json:
        click.echo(_impact_text(preview))
    _confirm(f"Delete flow {flow_id} and {preview.total_rows} rows?", yes, dry_run)
    result = api.delete(flow_id, reason, force=force, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    human = (f"{verb} flow {flow_id}: {sum(result.deleted.values())} rows "
             f"({', '.join(f'{k} {v}' for k, v in sorted(result.deleted.items()))}); "
             f"{result.files_enqueued} file(s) queued" + ("" if dry_run else f"; audit event {result.event_id}"))
    _emit(obj, result, human)


def _delete_batch(obj: FlowsTarget, api: TenantFlows, flow_ids: tuple[uuid.UUID, ...], from_file: str | None,
                  reason: str, force: bool, dry_run: bool, yes: bool, atomic: bool) -> None:
    def ids() -> Iterator[uuid.UUID]:
        return _read_ids(from_file) if from_file else iter(flow_ids)

    total = sum(1 for _ in ids()) if (from_file and from_file != "-") else (len(flow_ids) or None)
    if from_file == "-" and not (yes or dry_run):
        raise _Refused("ids from stdin need --yes or --dry-run (stdin cannot also answer a prompt)")
    if not obj.target.json:
        click.echo(f"{total if total is not None else 'the'} flow(s) to delete"
                   f" ({'all or nothing' if atomic else 'each on its own'}); impact of the first:")
        for flow_id in list(itertools.islice(ids(), 3)):
            try:
                click.echo(_impact_text(api.deletion_impact(flow_id)))
            except PyflowsError as exc:  # shown, and the batch reports this flow's outcome again below
                click.echo(f"flow {flow_id}: {exc}")
    _confirm(f"Delete {total if total is not None else 'these'} flow(s) and everything they created?", yes, dry_run)

    counts = {"ok": 0, "failed": 0}
    failures: list[BatchItem] = []
    conn = obj.connection()
    # Atomic or dry run: one transaction around every chunk; per flow: one transaction per chunk.
    outer = conn.transaction(force_rollback=dry_run) if (atomic or dry_run) else contextlib.nullcontext()
    progress: Any = click.progressbar(length=total, label="deleting", file=sys.stderr,
                                      hidden=obj.target.json or not sys.stderr.isatty())
    with outer, progress as bar:
        for chunk in _chunks(ids(), BATCH_CHUNK):
            for item in api.delete_many(chunk, reason, force=force, atomic=atomic):
                counts["ok" if item.ok else "failed"] += 1
                if not item.ok and len(failures) < 100:  # the first 100 are listed; all are counted
                    failures.append(item)
                if obj.target.json:
                    click.echo(json.dumps(plain(item), sort_keys=True))
            bar.update(len(chunk))
    summary = {"deleted": counts["ok"], "failed": counts["failed"], "dry_run": dry_run, "atomic": atomic}
    if obj.target.json:
        click.echo(json.dumps({"summary": summary}, sort_keys=True))
    else:
        verb = "would delete" if dry_run else "deleted"
        click.echo(f"{verb} {counts['ok']} flow(s); {counts['failed']} failed")
        for item in failures:
            click.echo(f"  {item.flow_id}: [{item.error_code}] {item.message}")
    if counts["failed"]:
        sys.exit(int(Exit.ERROR))


@flows.command()
@click.argument("flow_id", type=click.UUID)
@click.option("--reason", required=True, help="Why: kept in the audit event (required, not empty).")
@click.option("--batch-rows", type=int, default=10000, show_default=True, help="Rows deleted per committed batch.")
@click.option("--force", is_flag=True, help="Purge even a running (live) or a completed/cancelled flow.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def purge(obj: FlowsTarget, flow_id: uuid.UUID, reason: str, batch_rows: int, force: bool, yes: bool) -> None:
    """Delete a very large flow in short committed batches; run it again to resume an interrupted purge."""
    api = obj.tenant()
    try:
        preview = api.deletion_impact(flow_id)
    except FlowNotFound:
        preview = None  # a flow being purged is hidden: this call resumes it
    if preview is not None and not obj.target.json:
        click.echo(_impact_text(preview))
    if preview is not None:
        _confirm(f"Purge flow {flow_id} and {preview.total_rows} rows?", yes, dry_run=False, action="purge")

    def progress(message: str) -> None:
        if not obj.target.json:
            click.echo(message.removeprefix("pyflows "), err=True)

    event = api.purge(flow_id, reason, batch_rows=batch_rows, force=force, on_progress=progress)
    human = (f"purged flow {flow_id}: {sum(event.deleted.values())} rows in "
             f"{(event.details or {}).get('batches', 0)} batch(es); audit event {event.event_id}")
    _emit(obj, event, human)


@flows.command()
@click.argument("event_id", type=int)
@json_option
@click.pass_obj
def restore(obj: FlowsTarget, event_id: int) -> None:
    """Put back the flow an audit event deleted, with the same ids and values."""
    result = obj.tenant().restore(event_id)
    lines = [f"restored flow {result.flow_id} ({result.status}) from audit event {result.restored_event_id}: "
             f"{sum(result.restored.values())} rows; restore event {result.event_id}"]
    if result.skipped.get("asset_dependencies"):
        lines.append(f"  {result.skipped['asset_dependencies']} dependency edge(s) of other flows not restored: "
                     "their flow or assets are gone")
    lines += [f"  file already removed, not restored: {uri}" for uri in result.missing_files]
    _emit(obj, result, "\n".join(lines))


# ---- audit ----------------------------------------------------------------------------------------------


@cli.group(cls=_Group)
@tenant_options
def audit() -> None:
    """The audit trail of one client and engagement."""


@audit.command(name="list")
@click.option("--flow", "flow_id", type=click.UUID, help="Only this flow's events.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only events at or after this time (UTC).")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
@click.pass_obj
def audit_list(obj: FlowsTarget, flow_id: uuid.UUID | None, since: datetime | None, limit: int) -> None:
    """Events, newest first: who deleted what, when, why, and how much."""
    when = since.replace(tzinfo=UTC) if since is not None else None
    events = obj.tenant().audit_events(flow_id, when, limit)
    human = "no events" if not events else table(
        ("event", "when", "action", "actor", "flow", "rows", "reason"),
        [(e.event_id, e.occurred_at, e.action, e.actor, e.flow_id, sum(e.deleted.values()), e.reason)
         for e in events])
    _emit(obj, events, human)


@audit.command(name="show")
@click.argument("event_id", type=int)
@json_option
@click.pass_obj
def audit_show(obj: FlowsTarget, event_id: int) -> None:
    """One event in full, with the impact shown before and the counts actually deleted."""
    event = obj.tenant().audit_event(event_id)
    parts = [fields([("event", event.event_id), ("when", event.occurred_at), ("action", event.action),
                     ("actor", event.actor), ("database user", event.db_user),
                     ("application", event.application_name), ("client address", event.client_addr),
                     ("transaction", event.txid), ("flow", event.flow_id), ("batch", event.batch_id),
                     ("forced", "yes" if event.forced else "no"), ("reason", event.reason)])]
    shown = (event.impact or {}).get("counts", {})
    parts += ["", table(("table", "impact shown", "deleted"),
                        [(name, shown.get(name), event.deleted.get(name))
                         for name in sorted(set(shown) | set(event.deleted))])]
    if event.statement:
        parts += ["", f"statement: {event.statement}"]
    _emit(obj, event, "\n".join(parts))


@audit.command(name="prune")
@click.option("--older-than", required=True, metavar="DURATION", help="e.g. 90d: events older than this go.")
@click.option("--dry-run", is_flag=True, help="Count what would be removed, and remove nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def audit_prune(obj: FlowsTarget, older_than: str, dry_run: bool, yes: bool) -> None:
    """Remove audit events older than DURATION with their archived rows (pyflows_admin); leaves an audit.prune event."""
    age = parse_duration(older_than, "--older-than")
    api = obj.api()
    if not dry_run:
        would = api.prune_audit(age, dry_run=True).events
        _confirm(f"Remove {would} audit event(s) older than {older_than} and their archived rows?", yes, False,
                 action="prune the audit")
    result = api.prune_audit(age, dry_run=dry_run)
    _emit(obj, result, f"{'would remove' if dry_run else 'removed'} {result.events} audit event(s) "
                       f"older than {older_than}")


# ---- files ----------------------------------------------------------------------------------------------


@cli.group(cls=_Group)
def files() -> None:
    """The outbox of stored files whose rows were deleted."""


class StorageRoot(click.ParamType):  # type: ignore[type-arg]
    """A folder that exists, or a template of one naming {client_id} and/or {engagement_id}."""

    name = "dir"
    envvar_list_splitter = os.pathsep

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(os.fspath(value))
        if not os.path.isabs(text):
            self.fail(f"{text!r} is not an absolute path", param, ctx)
        if "{client_id}" not in text and "{engagement_id}" not in text and not os.path.isdir(text):
            self.fail(f"{text!r} is not a folder", param, ctx)
        return text


@files.command(name="drain")
@click.option("--limit", type=int, help="Handle at most N entries (default: until the queue is empty).")
@click.option("--lease", default="5m", show_default=True, help="How long a claimed entry is reserved.")
@click.option("--root", "roots", multiple=True, envvar=ROOTS_ENV, type=StorageRoot(),
              help=f"A folder file:// objects may be removed from (repeatable; or {ROOTS_ENV}, separated by "
                   f"{os.pathsep!r}); {{client_id}} and {{engagement_id}} in it stand for each entry's tenant. "
                   "A file outside every root, or any file when none is given, is not removed.")
@json_option
@click.pass_obj
def files_drain(target: Target, limit: int | None, lease: str, roots: tuple[str, ...]) -> None:
    """Remove queued stored objects; a missing one counts as removed; failures stay queued (pyflows_admin).

    file:// objects are removed only under --root folders (symbolic links resolved first); other URI
    schemes go to the storage backends installed under the entry-point group pyflows.storage.
    """
    duration = parse_duration(lease, "--lease")
    conn = connect(target.resolve(), autocommit=True, application_name="pyflows-files")
    click.get_current_context().call_on_close(conn.close)
    report = drain_files(Flows(conn), limit=limit, lease=duration, roots=roots)
    human = "\n".join([f"removed {report.removed}; failed {report.failed}"]
                      + [f"  {entry_id} {uri}: {error}" for entry_id, uri, error in report.errors])
    _emit_plain(target, report, human)
    if report.failed:
        sys.exit(int(Exit.ERROR))


def _emit_plain(target: Target, value: Any, human: str) -> None:
    click.echo(to_json(value) if target.json else human)


def parse_duration(text: str, option: str = "--idle-for") -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d`` or ``1w``; a plain number is seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 2h or 7d", param_hint=option)
    unit = {"": "seconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match[2]]
    return timedelta(**{unit: int(match[1])})


def main() -> None:
    cli(prog_name="pyflows")


__all__ = ["cli", "main", "Exit", "parse_duration"]
