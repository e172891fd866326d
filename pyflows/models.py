"""Typed results of the SQL API, built from its jsonb objects and result rows."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

__all__ = [
    "FLOW_TABLES", "Tenant", "FlowSummary", "Gate", "StartedImport", "FlowRow", "PhaseState", "FlowDetails",
    "StatusChange", "Heartbeat", "ResumeResult", "AdminFlowRow", "SafetyItem", "Safety", "FileSample", "Impact",
    "DeleteResult", "BatchItem", "AuditEvent", "FileCleanup", "CleanupOutcome", "RestoreResult", "PruneResult",
    "LoadResult", "Metrics",
    "from_json",
]

T = TypeVar("T")

# The tables a flow owns, parents first: the keys of every "counts" object, in display order.
# The phases of a flow, in order: the rows migration 0002 puts in pyflows.phases (a test keeps them equal).
PHASES = ("data_import", "data_validation", "field_mapping", "data_cleansing", "asset_inventory",
          "dependency_analysis", "tech_debt_analysis")
FLOW_TABLES = ("data_imports", "raw_import_records", "import_field_mappings", "assets", "asset_dependencies")


@dataclass(frozen=True)
class Tenant:
    """A tenant context: what ``pyflows.set_context`` binds a transaction to."""

    client_id: uuid.UUID
    engagement_id: uuid.UUID
    actor: str | None = None


@dataclass(frozen=True)
class FlowSummary:
    flow_id: uuid.UUID
    name: str
    status: str
    current_phase: str | None
    phase_title: str | None
    phases_completed: list[str]
    progress_percentage: Decimal
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    heartbeat_at: datetime | None
    completed_at: datetime | None
    next_steps: list[str]


@dataclass(frozen=True)
class Gate:
    can_start: bool
    blocking_flow: FlowSummary | None
    next_steps: list[str]


@dataclass(frozen=True)
class StartedImport:
    flow_id: uuid.UUID
    import_id: uuid.UUID
    flow: FlowSummary | None = None  # start_import returns the new flow; add_import only the ids


@dataclass(frozen=True)
class LoadResult:
    """What a bulk load (copy_records, copy_mappings, copy_dependencies) wrote."""

    loaded: int
    flow_id: uuid.UUID
    import_id: uuid.UUID | None = None
    record_count: int | None = None  # copy_records: the import's records in all, after the load


@dataclass(frozen=True)
class FlowRow:
    """One row of list_flows / list_incomplete_flows."""

    flow_id: uuid.UUID
    name: str
    status: str
    current_phase: str | None
    phase_title: str | None
    progress_percentage: Decimal
    created_by: str | None
    created_at: datetime
    last_activity_at: datetime
    counts: dict[str, int]
    next_steps: list[str]


@dataclass(frozen=True)
class PhaseState:
    phase: str
    position: int
    title: str
    state: str  # completed, current or pending


@dataclass(frozen=True)
class FlowDetails:
    flow: FlowSummary
    phases: list[PhaseState]
    counts: dict[str, int]
    errors: list[Any]
    agent_insights: list[Any]
    next_steps: list[str]
    can_resume: bool
    can_delete: bool


@dataclass(frozen=True)
class StatusChange:
    flow_id: uuid.UUID
    status: str
    changed: bool
    previous_status: str


@dataclass(frozen=True)
class Heartbeat:
    flow_id: uuid.UUID
    heartbeat_at: datetime
    lease_until: datetime


@dataclass(frozen=True)
class ResumeResult:
    flow_id: uuid.UUID
    resumed: bool
    previous_status: str
    status: str
    message: str
    current_phase: str | None
    phase_title: str | None
    next_steps: list[str]
    flow: FlowSummary


@dataclass(frozen=True)
class AdminFlowRow:
    """One row of admin_list_incomplete_flows."""

    client_id: uuid.UUID
    client_name: str
    engagement_id: uuid.UUID
    engagement_name: str
    flow_id: uuid.UUID
    name: str
    status: str
    current_phase: str | None
    progress_percentage: Decimal
    created_by: str | None
    created_at: datetime
    last_activity_at: datetime
    heartbeat_at: datetime | None
    idle_for: timedelta


@dataclass(frozen=True)
class SafetyItem:
    """A blocker or a warning of deletion_safety: ``code`` is stable, ``message`` is for people."""

    code: str
    message: str
    overridable: bool


@dataclass(frozen=True)
class Safety:
    safe: bool
    forced: bool
    blockers: list[SafetyItem]
    warnings: list[SafetyItem]


@dataclass(frozen=True)
class FileSample:
    count: int
    sample: list[str]


@dataclass(frozen=True)
class Impact:
    """What deleting a flow removes (counts per table), the edges of other flows it takes along, the
    stored files it enqueues, and the safety verdict."""

    flow_id: uuid.UUID
    flow: FlowSummary
    counts: dict[str, int]
    total_rows: int
    external_dependencies: int
    files: FileSample
    safety: Safety


@dataclass(frozen=True)
class DeleteResult:
    event_id: int | None  # None for a dry run: its event was rolled back with everything else
    flow_id: uuid.UUID
    deleted: dict[str, int]
    files_enqueued: int
    forced: bool
    warnings: list[SafetyItem]
    dry_run: bool = False  # True: the delete ran and was rolled back


@dataclass(frozen=True)
class BatchItem:
    """One flow's outcome in delete_flows."""

    flow_id: uuid.UUID
    ok: bool
    event_id: int | None  # None for a failed flow, and in a dry run (rolled back)
    error_code: str | None
    message: str | None


@dataclass(frozen=True)
class AuditEvent:
    event_id: int
    occurred_at: datetime
    action: str
    actor: str | None
    db_user: str
    application_name: str | None
    client_addr: str | None
    flow_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    reason: str | None
    forced: bool
    impact: dict[str, Any] | None
    deleted: dict[str, int]
    statement: str | None
    # Only in audit_event (one event in full), but details:
    txid: int | None = None
    client_id: uuid.UUID | None = None
    engagement_id: uuid.UUID | None = None
    flow_snapshot: dict[str, Any] | None = None
    details: dict[str, Any] | None = None  # also in the listing
    restored_by_event_id: int | None = None  # the flow.restore event that put this event's flow back


@dataclass(frozen=True)
class NewClient:
    client_id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class NewEngagement:
    client_id: uuid.UUID
    engagement_id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class TenantListing:
    """One row of list_tenants: a client's engagement (None for a client without one) and its flows."""

    client_id: uuid.UUID
    client_name: str
    engagement_id: uuid.UUID | None
    engagement_name: str | None
    flows: int
    incomplete_flows: int


@dataclass(frozen=True)
class AdminAuditEvent:
    """One row of admin_list_audit_events: an event of any tenant, or of none (audit.prune)."""

    event_id: int
    occurred_at: datetime
    action: str
    actor: str | None
    db_user: str
    application_name: str | None
    client_id: uuid.UUID | None
    engagement_id: uuid.UUID | None
    flow_id: uuid.UUID | None
    reason: str | None
    forced: bool
    deleted: dict[str, int]
    details: dict[str, Any]


@dataclass(frozen=True)
class FileCleanup:
    """A claimed entry of the file outbox."""

    id: int
    client_id: uuid.UUID
    engagement_id: uuid.UUID
    storage_uri: str
    attempts: int
    flow_id: uuid.UUID | None
    import_id: uuid.UUID | None
    event_id: int | None
    last_error: str | None


@dataclass(frozen=True)
class CleanupOutcome:
    id: int
    done: bool
    attempts: int
    last_error: str | None
    storage_uri: str


@dataclass(frozen=True)
class RestoreResult:
    event_id: int  # the flow.restore event
    restored_event_id: int
    flow_id: uuid.UUID
    status: str
    restored: dict[str, int]
    skipped: dict[str, int]  # edges of other flows whose flow or assets are gone
    missing_files: list[str]  # stored files already removed by a drain: the rows are back, the files are not
    files_kept: int  # pending removals cancelled


@dataclass(frozen=True)
class PruneResult:
    events: int
    dry_run: bool = False


@dataclass(frozen=True)
class Metrics:
    """admin_metrics(): what a monitoring system watches, across tenants. Ages in seconds, 0 when none."""

    incomplete_flows: dict[str, int]  # by status
    idle_flows: int  # incomplete, no activity for longer than the active lease
    oldest_idle_seconds: Decimal
    active_lease_seconds: Decimal
    file_cleanup_pending: int
    file_cleanup_failed: int  # pending, with an error from an earlier attempt
    file_cleanup_oldest_seconds: Decimal
    purges_running: int  # flows marked 'deleting'
    oldest_purge_seconds: Decimal
    audit_events_last_day: dict[str, int]  # by action


def _convert(value: Any, hint: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, options[0])
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_json(hint, value)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_convert(v, item) for v in value]
    if hint is uuid.UUID:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    if hint is datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if hint is Decimal:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    if hint is str and not isinstance(value, str):
        return str(value)  # e.g. an inet read as ipaddress.IPv4Address
    return value


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A dataclass's resolved field types and names, once per class (resolving the annotations, strings
    here, evaluates each of them: a measurable share of a small call when done every time)."""
    return typing.get_type_hints(cls), frozenset(f.name for f in dataclasses.fields(cls))


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a jsonb object, converting ids, timestamps and numbers by field type."""
    hints, fields = _fields(cls)  # type: ignore[arg-type]  # a class is hashable
    return cls(**{k: _convert(v, hints[k]) for k, v in data.items() if k in fields})
