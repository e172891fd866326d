"""``pyflows flows``: the discovery flows of one client and engagement."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import click
from click.core import ParameterSource

from ..api import TenantFlows, rolled_back
from ..errors import FlowNotFound, InvalidRequest, PyflowsError
from ..models import FLOW_TABLES, PHASES, BatchItem
from ..render import cell, fields, plain, table
from . import base
from .base import Exit, FlowsTarget, Group, Refused, confirm, json_option, parse_duration, tenant_options
from .output import emit, gate_text, impact_text, progress_bar, rows_text, steps, summary_text, working


@click.group(cls=Group)
@tenant_options
def flows() -> None:
    """Discovery flows of one client and engagement: gate, start, upload, load, list, show, resume, status,
    heartbeat, progress, impact, delete, purge, restore."""


@flows.command()
@json_option
@click.pass_obj
def gate(obj: FlowsTarget) -> None:
    """Can a new flow start? If not, which flow blocks it and what to do. Exits 13 when blocked."""
    result = obj.tenant().gate()
    emit(obj.target, result, gate_text(result))
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
    emit(obj.target, flow, f"started flow {flow.flow_id}\n" + summary_text(flow))


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
    emit(obj.target, result, f"import {result.import_id} in flow {result.flow_id}")


def _csv_records(source: BinaryIO, read: Callable[[int], None]) -> Iterator[dict[str, str]]:
    """The rows of a CSV export (UTF-8, a header line first) as objects keyed by the header, reporting each
    line's bytes to read. A line with more or fewer fields than the header, or bytes that are not UTF-8,
    is InvalidRequest: the load it feeds then rolls back."""
    def lines() -> Iterator[str]:
        for number, raw in enumerate(source, 1):
            read(len(raw))
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidRequest(f"line {number} is not UTF-8: {exc.reason}") from exc

    reader = csv.reader(lines())
    header = next(reader, None)
    if not header:
        raise InvalidRequest("the CSV file has no header line")
    for row in reader:
        if len(row) != len(header):
            raise InvalidRequest(f"line {reader.line_num} has {len(row)} fields, the header {len(header)}")
        yield dict(zip(header, row, strict=True))


@flows.command()
@click.argument("import_id", type=click.UUID)
@click.argument("csv_file", type=click.File("rb"))
@json_option
@click.pass_obj
def load(obj: FlowsTarget, import_id: uuid.UUID, csv_file: BinaryIO) -> None:
    """Load a CSV export (UTF-8, header first; - for stdin) into an import as its raw records: each line one
    JSON object keyed by the header, numbered after the import's last record. One transaction: nothing is
    loaded when a line is refused. On a terminal, a bar of the bytes read."""
    try:
        size: int | None = os.fstat(csv_file.fileno()).st_size if csv_file.seekable() else None
    except (OSError, ValueError):  # a stream without a file behind it
        size = None
    with progress_bar(obj.target, "loading", size) as bar:
        try:
            result = obj.tenant().copy_records(import_id, _csv_records(csv_file, bar.update))
        except csv.Error as exc:
            raise InvalidRequest(f"the CSV file cannot be read: {exc}") from exc
    emit(obj.target, result, f"loaded {result.loaded} records into import {import_id} "
                             f"({result.record_count} in all)")


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
        emit(obj.target, rows, rows_text(rows))
        return
    ctx = click.get_current_context()
    paging = [f"--{name}" for name in ("filter", "limit", "offset")
              if ctx.get_parameter_source(name + ("_" if name == "filter" else "")) is not ParameterSource.DEFAULT]
    if paging:
        raise click.UsageError(f"{' and '.join(paging)} page one tenant's flows; --all-tenants lists every "
                               "tenant's incomplete flows, all of them (narrow them with --idle-for)")
    admin_rows = obj.api().admin_list_incomplete(parse_duration(idle_for) if idle_for else None)
    human = "no incomplete flows" if not admin_rows else table(
        ("client", "engagement", "flow", "name", "status", "phase", "progress", "idle"),
        [(r.client_name, r.engagement_name, r.flow_id, r.name, r.status, r.current_phase,
          f"{r.progress_percentage}%", r.idle_for) for r in admin_rows])
    emit(obj.target, admin_rows, human)


@flows.command()
@click.argument("flow_id", type=click.UUID)
@json_option
@click.pass_obj
def show(obj: FlowsTarget, flow_id: uuid.UUID) -> None:
    """Everything about one flow: phases, counts, errors, insights, next steps."""
    details = obj.tenant().details(flow_id)
    phases = table(("phase", "title", "state"), [(p.phase, p.title, p.state) for p in details.phases])
    counts = fields([(name, details.counts.get(name)) for name in FLOW_TABLES])
    parts = [summary_text(details.flow), "", phases, "", counts]
    if details.errors:
        parts += ["", "Errors:"] + [f"  - {json.dumps(e, ensure_ascii=False)}" for e in details.errors]
    if details.agent_insights:
        parts += ["", "Agent insights:"] + [f"  - {json.dumps(i, ensure_ascii=False)}" for i in details.agent_insights]
    yes_no = {True: "yes", False: "no"}
    parts += ["", steps(details.next_steps), "",
              f"can resume: {yes_no[details.can_resume]}   can delete: {yes_no[details.can_delete]}"]
    emit(obj.target, details, "\n".join(parts))


@flows.command()
@click.argument("flow_id", type=click.UUID)
@json_option
@click.pass_obj
def resume(obj: FlowsTarget, flow_id: uuid.UUID) -> None:
    """Resume a paused, failed, waiting or new flow (a running flow is left as it is)."""
    result = obj.tenant().resume(flow_id)
    emit(obj.target, result, f"{result.message}; continue with {result.phase_title or 'no phase'}\n"
                       + steps(result.next_steps))


SETTABLE_STATUSES = ("running", "paused", "waiting_for_user", "failed", "cancelled")


@flows.command(name="status")
@click.argument("flow_id", type=click.UUID)
@click.argument("status", type=click.Choice(SETTABLE_STATUSES))
@click.option("--error", metavar="TEXT", help="With failed: what went wrong, kept with the flow (JSON, or text).")
@json_option
@click.pass_obj
def status_(obj: FlowsTarget, flow_id: uuid.UUID, status: str, error: str | None) -> None:
    """Move a flow to STATUS: pause it, mark it running, waiting for a user, failed, or cancel it.

    A flow completes through `progress`, and is removed through `delete` or `purge`.
    """
    if error is not None and status != "failed":
        raise click.UsageError("--error goes with the status failed")
    recorded: Any = None
    if error is not None:
        try:
            recorded = json.loads(error)
        except ValueError:
            recorded = {"message": error}
    result = obj.tenant().set_status(flow_id, status, recorded)
    human = (f"flow {flow_id}: {result.previous_status} -> {result.status}" if result.changed
             else f"flow {flow_id} is already {result.status}")
    emit(obj.target, result, human)


@flows.command()
@click.argument("flow_id", type=click.UUID)
@json_option
@click.pass_obj
def heartbeat(obj: FlowsTarget, flow_id: uuid.UUID) -> None:
    """A worker's liveness signal for a running flow: while its lease lasts the flow counts as active."""
    result = obj.tenant().heartbeat(flow_id)
    emit(obj.target, result, f"flow {flow_id}: heartbeat at {cell(result.heartbeat_at)}, active until "
                             f"{cell(result.lease_until)}")


@flows.command()
@click.argument("flow_id", type=click.UUID)
@click.argument("phase")
@click.option("--insight", metavar="JSON", help="An agent insight to keep with the phase (JSON).")
@json_option
@click.pass_obj
def progress(obj: FlowsTarget, flow_id: uuid.UUID, phase: str, insight: str | None) -> None:
    """Mark PHASE of a flow complete (the flow completes after its last phase).

    \b
    PHASE, in order: {phases}.
    """
    try:
        parsed = json.loads(insight) if insight is not None else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--insight") from exc
    flow = obj.tenant().record_progress(flow_id, phase, parsed)
    emit(obj.target, flow, summary_text(flow))


progress.help = (progress.help or "").replace("{phases}", ", ".join(PHASES))


@flows.command()
@click.argument("flow_id", type=click.UUID)
@json_option
@click.pass_obj
def impact(obj: FlowsTarget, flow_id: uuid.UUID) -> None:
    """What deleting a flow would remove, and whether it is safe (nothing is deleted)."""
    result = obj.tenant().deletion_impact(flow_id)
    emit(obj.target, result, impact_text(result))


def _read_ids(path: str) -> Iterator[uuid.UUID]:
    """Flow ids from a file (or - for stdin), one a line; blank lines and # comments are skipped."""
    try:
        handle = click.open_file(path, encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path!r}: {exc.strerror}", param_hint="--from-file") from None
    with handle:
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
PREVIEWED = 3  # flows of a batch whose impact is shown before it asks


def _reason(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be empty: say why, it is kept in the audit event")
    return value


reason_option = click.option("--reason", required=True, callback=_reason,
                             help="Why: kept in the audit event (required, not empty).")


@flows.command()
@click.argument("flow_ids", nargs=-1, type=click.UUID)
@reason_option
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


def _delete_one(obj: FlowsTarget, api: TenantFlows, flow_id: uuid.UUID, reason: str, force: bool, dry_run: bool,
                yes: bool) -> None:
    preview = api.deletion_impact(flow_id)
    if not obj.target.json:
        click.echo(impact_text(preview, forced=force))
    confirm(f"Delete flow {flow_id} and {preview.total_rows} rows?", yes, dry_run)
    with working(obj.target, f"{'rehearsing the delete of' if dry_run else 'deleting'} flow {flow_id}"):
        result = api.delete(flow_id, reason, force=force, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    human = (f"{verb} flow {flow_id}: {sum(result.deleted.values())} rows "
             f"({', '.join(f'{k} {v}' for k, v in sorted(result.deleted.items()))}); "
             f"{result.files_enqueued} file(s) queued" + ("" if dry_run else f"; audit event {result.event_id}"))
    emit(obj.target, result, human)


def _delete_batch(obj: FlowsTarget, api: TenantFlows, flow_ids: tuple[uuid.UUID, ...], from_file: str | None,
                  reason: str, force: bool, dry_run: bool, yes: bool, atomic: bool) -> None:
    def ids() -> Iterator[uuid.UUID]:
        return _read_ids(from_file) if from_file else iter(flow_ids)

    total = sum(1 for _ in ids()) if (from_file and from_file != "-") else (len(flow_ids) or None)
    if from_file == "-" and not (yes or dry_run):
        raise Refused("ids from stdin need --yes or --dry-run (stdin cannot also answer a prompt)")
    if not obj.target.json:
        shown = list(itertools.islice(ids(), PREVIEWED))
        which = "its impact" if total == 1 else (
            f"the impact of the first {len(shown)}" if total is None or total > len(shown) else "the impact of each")
        click.echo(f"{total if total is not None else 'the'} flow(s) to delete"
                   f" ({'all or nothing' if atomic else 'each on its own'}); {which}:")
        for flow_id in shown:
            try:
                click.echo(impact_text(api.deletion_impact(flow_id), forced=force))
            except PyflowsError as exc:  # shown, and the batch reports this flow's outcome again below
                click.echo(f"flow {flow_id}: {exc}")
    confirm(f"Delete {total if total is not None else 'these'} flow(s) and everything they created?", yes, dry_run)

    counts = {"ok": 0, "failed": 0}
    failures: list[BatchItem] = []
    conn = obj.connection()
    # Atomic or dry run: one transaction around every chunk; per flow: one transaction per chunk.
    outer = conn.transaction(force_rollback=dry_run) if (atomic or dry_run) else contextlib.nullcontext()
    with outer, progress_bar(obj.target, "rehearsing" if dry_run else "deleting", total) as bar:
        for chunk in _chunks(ids(), BATCH_CHUNK):
            done = api.delete_many(chunk, reason, force=force, atomic=atomic)
            for item in rolled_back(done) if dry_run else done:
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
@reason_option
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
        click.echo(impact_text(preview, forced=force))
    if preview is not None:
        confirm(f"Purge flow {flow_id} and {preview.total_rows} rows?", yes, dry_run=False, action="purge")

    # On a terminal: a bar of rows removed out of the impact's total (percent, ETA). Elsewhere (a log):
    # each batch's line. Neither with --json or --quiet.
    bar_shown = base.shows_progress(obj.target) and preview is not None

    def line(message: str) -> None:
        if not (bar_shown or obj.target.json or obj.target.quiet):
            click.echo(message.removeprefix("pyflows "), err=True)

    with progress_bar(obj.target, "purging", preview.total_rows if preview is not None else None) as bar:
        event = api.purge(flow_id, reason, batch_rows=batch_rows, force=force, on_progress=line,
                          on_rows=bar.update)
    human = (f"purged flow {flow_id}: {sum(event.deleted.values())} rows in "
             f"{(event.details or {}).get('batches', 0)} batch(es); audit event {event.event_id}")
    emit(obj.target, event, human)


@flows.command()
@click.argument("event_id", type=int)
@json_option
@click.pass_obj
def restore(obj: FlowsTarget, event_id: int) -> None:
    """Put back the flow an audit event deleted, with the same ids and values."""
    with working(obj.target, f"restoring audit event {event_id}"):
        result = obj.tenant().restore(event_id)
    lines = [f"restored flow {result.flow_id} ({result.status}) from audit event {result.restored_event_id}: "
             f"{sum(result.restored.values())} rows; restore event {result.event_id}"]
    if result.skipped.get("asset_dependencies"):
        lines.append(f"  {result.skipped['asset_dependencies']} dependency edge(s) of other flows not restored: "
                     "their flow or assets are gone")
    lines += [f"  file already removed, not restored: {uri}" for uri in result.missing_files]
    emit(obj.target, result, "\n".join(lines))
