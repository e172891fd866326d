"""What commands print: --json or text, and the text of flows, gates, impacts and verdicts."""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from ..errors import in_words
from ..models import FLOW_TABLES, FlowRow, FlowSummary, Gate, Impact, Safety
from ..render import fields, table, to_json

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar  # the type click.progressbar returns

from . import base
from .base import Target


def emit(target: Target, value: Any, human: str) -> None:
    click.echo(to_json(value) if target.json else human)


def progress_bar(target: Target, label: str, length: int | None = None) -> ProgressBar[Any]:
    """click's progress bar on stderr (shown on a terminal only, never with --json or --quiet): with a length,
    done of total, percent and ETA; without, a count. Advance it with update(n)."""
    return click.progressbar(iterable=None if length is not None else itertools.repeat(None), length=length,
                             label=label, file=sys.stderr, hidden=not base.shows_progress(target),
                             show_pos=True)


@contextlib.contextmanager
def working(target: Target, label: str) -> Iterator[None]:
    """One call that may take a while: click's bar for its one step, at 0 while it runs, full when done."""
    with progress_bar(target, label, 1) as bar:
        yield
        bar.update(1)


def summary_text(flow: FlowSummary) -> str:
    phase = f"{flow.current_phase} ({flow.phase_title})" if flow.current_phase else None
    return fields([("flow", flow.flow_id), ("name", flow.name), ("status", flow.status), ("phase", phase),
                   ("progress", f"{flow.progress_percentage}%"), ("created by", flow.created_by),
                   ("created", flow.created_at), ("last activity", flow.last_activity_at),
                   ("heartbeat", flow.heartbeat_at), ("completed", flow.completed_at)])


def steps(items: list[str]) -> str:
    return "\n".join(["Next steps:"] + [f"  - {step}" for step in items])


def gate_text(gate: Gate) -> str:
    if gate.can_start or gate.blocking_flow is None:
        return "A new flow can start.\n" + steps(gate.next_steps)
    flow = gate.blocking_flow
    return "\n".join([
        f'A new flow cannot start: "{flow.name}" is {flow.status.replace("_", " ")} '
        f"in {flow.phase_title or 'no phase'} at {flow.progress_percentage}%.",
        "", summary_text(flow), "", steps(gate.next_steps), "",
        f"  {base.invocation()} flows resume {flow.flow_id}",
    ])


def rows_text(rows: list[FlowRow]) -> str:
    if not rows:
        return "no flows"
    return table(("flow", "name", "status", "phase", "progress", "imports", "records", "assets", "dependencies",
                  "last activity"),
                 [(r.flow_id, r.name, r.status, r.current_phase, f"{r.progress_percentage}%",
                   r.counts.get("data_imports"), r.counts.get("raw_import_records"), r.counts.get("assets"),
                   r.counts.get("asset_dependencies"), r.last_activity_at) for r in rows])


def impact_text(impact: Impact, forced: bool = False) -> str:
    flow = impact.flow
    lines = [f'Deleting "{flow.name}" ({flow.flow_id}, {flow.status}, {flow.progress_percentage}%) removes:',
             fields([("discovery_flows", impact.counts.get("discovery_flows"))]
                    + [(name, impact.counts.get(name)) for name in FLOW_TABLES]),
             f"{impact.total_rows} rows in all; {impact.files.count} stored file(s) will be queued for removal"]
    lines += [f"  {uri}" for uri in impact.files.sample]
    if impact.files.count > len(impact.files.sample):
        lines.append(f"  ... and {impact.files.count - len(impact.files.sample)} more")
    lines.append(verdict_text(impact.safety, forced))
    return "\n".join(lines)


def verdict_text(safety: Safety, forced: bool = False) -> str:
    """The verdict; with forced (--force), blockers that may be overridden are shown as overridden."""
    overridable = all(b.overridable for b in safety.blockers)
    lines = ["safe to delete" if safety.safe else
             "BLOCKED, overridden by --force (recorded in the audit)" if forced and overridable else "BLOCKED"]
    lines += [f"  blocker {b.code}: {b.message}" + ("" if b.overridable else " (cannot be forced)")
              for b in safety.blockers]
    lines += [f"  warning {w.code}: {in_words(w.message, 'cli')}" for w in safety.warnings]
    return "\n".join(lines)
