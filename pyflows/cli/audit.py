"""``pyflows audit``: the audit trail of one client and engagement, and pruning it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from ..render import fields, table
from .base import FlowsTarget, Group, confirm, json_option, parse_duration, tenant_options
from .output import emit


@click.group(cls=Group)
@tenant_options
def audit() -> None:
    """The audit trail of one client and engagement."""


ACTIONS = ("flow.start", "flow.resume", "flow.delete", "flow.purge", "flow.restore", "sql.delete", "audit.prune")


@audit.command(name="list")
@click.option("--flow", "flow_id", type=click.UUID, help="Only this flow's events.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
              help="Only events at or after this time (UTC).")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--all-tenants", is_flag=True,
              help="Events of every tenant and of none, such as audit.prune (pyflows_admin only).")
@click.option("--action", type=click.Choice(ACTIONS), help="With --all-tenants: only this action.")
@json_option
@click.pass_obj
def audit_list(obj: FlowsTarget, flow_id: uuid.UUID | None, since: datetime | None, limit: int,
               all_tenants: bool, action: str | None) -> None:
    """Events, newest first: who deleted what, when, why, and how much."""
    when = since.replace(tzinfo=UTC) if since is not None else None
    if all_tenants:
        if flow_id is not None:
            raise click.UsageError("--flow names one tenant's flow; --all-tenants lists every tenant's events")
        rows = obj.api().admin_audit_events(when, action, limit)
        human = "no events" if not rows else table(
            ("event", "when", "action", "actor", "client", "engagement", "flow", "rows", "reason"),
            [(e.event_id, e.occurred_at, e.action, e.actor, e.client_id, e.engagement_id, e.flow_id,
              _rows(e.action, e.deleted, e.details), e.reason) for e in rows])
        emit(obj.target, rows, human)
        return
    if action is not None:
        raise click.UsageError("--action goes with --all-tenants")
    events = obj.tenant().audit_events(flow_id, when, limit)
    human = "no events" if not events else table(
        ("event", "when", "action", "actor", "flow", "rows", "reason"),
        [(e.event_id, e.occurred_at, e.action, e.actor, e.flow_id, _rows(e.action, e.deleted, e.details), e.reason)
         for e in events])
    emit(obj.target, events, human)


def _rows(action: str, deleted: dict[str, int], details: dict[str, Any] | None) -> int:
    """The rows an event counts: deleted; for flow.restore the rows put back; for audit.prune the archived rows
    it removed."""
    counted = {"flow.restore": "restored", "audit.prune": "archive"}.get(action)
    if counted is not None:
        return sum((details or {}).get(counted, {}).values())
    return sum(deleted.values())


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
                     ("forced", "yes" if event.forced else "no"), ("reason", event.reason),
                     ("restored by", f"audit event {event.restored_by_event_id}" if event.restored_by_event_id
                      else None)])]
    shown = (event.impact or {}).get("counts", {})
    parts += ["", table(("table", "impact shown", "deleted"),
                        [(name, shown.get(name), event.deleted.get(name))
                         for name in sorted(set(shown) | set(event.deleted))])]
    if event.statement:
        parts += ["", f"statement: {event.statement}"]
    emit(obj.target, event, "\n".join(parts))


RECENT = timedelta(days=1)


@audit.command(name="prune")
@click.option("--older-than", required=True, metavar="DURATION", help="e.g. 90d: events older than this go.")
@click.option("--dry-run", is_flag=True, help="Count what would be removed, and remove nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (under a day, see --allow-recent).")
@click.option("--allow-recent", is_flag=True, help="With --yes and no terminal: let a cutoff under a day through.")
@json_option
@click.pass_obj
def audit_prune(obj: FlowsTarget, older_than: str, dry_run: bool, yes: bool, allow_recent: bool) -> None:
    """Remove audit events older than DURATION with their archived rows (pyflows_admin); leaves an audit.prune
    event that records --actor and what was removed (`audit list --all-tenants --action audit.prune`).

    A cutoff under a day would remove events of today's work: it is asked for even with --yes (on a
    terminal), and without a terminal needs --allow-recent as well.
    """
    age = parse_duration(older_than, "--older-than")
    api = obj.api()
    if not dry_run:
        would = api.prune_audit(age, dry_run=True, actor=obj.actor).events
        question = f"Remove {would} audit event(s) older than {older_than} and their archived rows?"
        if age < RECENT and would:
            confirm(f"{older_than} is under a day: events of today's work go too. {question}", yes and allow_recent,
                    action=f"remove audit events younger than a day ({older_than})", needs="--yes --allow-recent",
                    ask_anyway=True)
        else:
            confirm(question, yes, action="prune the audit")
    result = api.prune_audit(age, dry_run=dry_run, actor=obj.actor)
    emit(obj.target, result, f"{'would remove' if dry_run else 'removed'} {result.events} audit event(s) "
                             f"older than {older_than}")
