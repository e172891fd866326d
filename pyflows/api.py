"""The Python face of the SQL API: ``Flows`` (sync) and ``AsyncFlows`` (async).

Both take a psycopg connection or pool. ``flows.tenant(client_id, engagement_id, actor=...)`` gives
a scope whose every call runs in its own transaction that first calls ``pyflows.set_context``, so
nothing depends on state left on a pooled connection. Each operation is described once, as a
``_Call`` (a named query, its parameters, and how to build the result); the sync and async classes
only run those calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.sql import SQL, Composed, Identifier
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from .errors import FlowBusy, InvalidRequest, wrap_errors
from .models import (
    AdminAuditEvent,
    AdminFlowRow,
    AuditEvent,
    BatchItem,
    CleanupOutcome,
    DeleteResult,
    FileCleanup,
    FlowDetails,
    FlowRow,
    FlowSummary,
    Gate,
    Heartbeat,
    Impact,
    LoadResult,
    Metrics,
    NewClient,
    NewEngagement,
    PruneResult,
    RestoreResult,
    ResumeResult,
    Safety,
    StartedImport,
    StatusChange,
    Tenant,
    TenantListing,
    from_json,
)
from .queries import query

__all__ = ["Flows", "AsyncFlows", "TenantFlows", "AsyncTenantFlows", "Tenant"]

T = TypeVar("T")
DEFAULT_LEASE = timedelta(minutes=5)
Rows = list[dict[str, Any]]
SyncSource = psycopg.Connection[Any] | ConnectionPool[Any]
_SYNC: tuple[type, ...] = (psycopg.Connection, ConnectionPool)
AsyncSource = psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]
_ASYNC: tuple[type, ...] = (psycopg.AsyncConnection, AsyncConnectionPool)


# How many rows a bulk load sends in one add_* call (one JSON array).
BATCH_ROWS = 10_000
# Rows a COPY statement (and a begin_copy_* call) takes: fewer round trips and statement triggers than
# BATCH_ROWS, at the cost of holding that many rows of the caller's iterable at once.
COPY_ROWS = 100_000


def _json_value(value: Any) -> str:
    """What JSON has no type for, among the values the loaded columns take: exact numbers (confidence)
    and addresses (ip_address) as their text, which PostgreSQL reads back into the column's type."""
    if isinstance(value, Decimal | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not a JSON value")


# One encoder for every value: json.dumps given any argument of its own builds a new JSONEncoder each
# call, about 0.9 µs a row of a bulk load (100,000 assets by copy_assets: 1.23x the keys-only COPY beside
# it with it, 1.05x without; docs/benchmarks.md).
_dumps = json.JSONEncoder(default=_json_value, ensure_ascii=False).encode


def _json_rows(batch: list[Any]) -> dict[str, Any]:
    """A batch as one JSON array (the ``rows`` parameter of add_records, add_mappings and add_assets)."""
    return {"rows": Jsonb(batch, dumps=_dumps)}


@dataclass(frozen=True)
class _Batches:
    """Rows for the bulk path: sent in batches of at most BATCH_ROWS rows, one add_* call each (each batch's
    parameters made by ``encode``: one JSON array unless the call takes arrays of columns), with
    psycopg's executemany, which pipelines them: the client encodes a batch while the server inserts
    the one before, all in the call's one transaction (PostgreSQL refuses COPY into a table with
    row-level security; sql/080_bulk.sql). Always at least one call, so that an empty load is checked
    like any other. The call's ``build`` gets one row per batch, ``{"rows": <that call's rows>}``."""

    rows: Iterable[Any]
    encode: Callable[[list[Any]], dict[str, Any]] = _json_rows

    def chunks(self, size: int | None = None) -> Iterator[list[Any]]:
        """The rows, ``size`` (BATCH_ROWS) at a time; at least one list (maybe empty)."""
        size = size or BATCH_ROWS
        rows = iter(self.rows)
        while True:
            batch = list(itertools.islice(rows, size))
            yield batch
            if len(batch) < size:
                return

    def params(self, fixed: Mapping[str, Any], chunks: Iterable[list[Any]]) -> Iterator[dict[str, Any]]:
        for batch in chunks:
            yield {**fixed, **self.encode(batch)}


@dataclass(frozen=True)
class _Copy:
    """The batches' rows sent by COPY instead, straight into the partition that takes it (migrations 0021
    and 0022), a batch at a time: the ``begin`` query (with the call's params and the batch's
    ``count``) locks the flow and answers where to COPY (``copy_table``; NULL where the login may not,
    on Citus: that batch and the rest go as add_* calls) and what the rows need; ``rows`` makes the
    batch's rows of ``columns`` from that answer and the batch's values; ``result`` makes the rows the
    batch's add_* call would have answered, from that answer and the number of rows sent."""

    begin: str
    columns: tuple[str, ...]
    rows: Callable[[Mapping[str, Any], list[Any]], Iterator[tuple[Any, ...]]]
    result: Callable[[Mapping[str, Any], int], list[dict[str, Any]]]

    def statement(self, opened: Mapping[str, Any]) -> Composed:
        schema, table = str(opened["copy_table"]).split(".")
        return SQL("copy {} ({}) from stdin").format(Identifier(schema, table),
                                                     SQL(", ").join(map(Identifier, self.columns)))


@dataclass(frozen=True)
class _Call(Generic[T]):
    query: str
    params: Mapping[str, Any]
    build: Callable[[Rows], T]
    rollback: bool = False  # run for real, then roll the transaction back (a dry run)
    batches: _Batches | None = None
    copy: _Copy | None = None  # COPY the batches' rows instead, where the server allows it


def _one(cls: type[T], **extra: Any) -> Callable[[Rows], T]:
    """The single jsonb value a scalar function returned, as ``cls`` (with ``extra`` fields set)."""
    return lambda rows: from_json(cls, {**next(iter(rows[0].values())), **extra})


def _each(cls: type[T]) -> Callable[[Rows], list[T]]:
    return lambda rows: [from_json(cls, row) for row in rows]


def _loads(text: str | bytes) -> Any:
    # jsonb numbers as Decimal: progress 71.40 stays 71.40, not the float 71.4.
    return json.loads(text, parse_float=Decimal)


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


# One function per SQL API call: the only place that knows its query, parameters and result type.
def _gate() -> _Call[Gate]:
    return _Call("flow_gate", {}, _one(Gate))


def _start(name: str, created_by: str | None) -> _Call[FlowSummary]:
    return _Call("start_flow", {"name": name, "created_by": created_by}, _one(FlowSummary))


def _start_import(filename: str, storage_uri: str, byte_size: int, flow_name: str | None) -> _Call[StartedImport]:
    params = {"filename": filename, "storage_uri": storage_uri, "byte_size": byte_size, "flow_name": flow_name}
    return _Call("start_import", params, _one(StartedImport))


def _add_import(flow_id: uuid.UUID, filename: str, storage_uri: str, byte_size: int) -> _Call[StartedImport]:
    params = {"flow_id": flow_id, "filename": filename, "storage_uri": storage_uri, "byte_size": byte_size}
    return _Call("add_import", params, _one(StartedImport))


def _list(filter: str, limit: int, offset: int) -> _Call[list[FlowRow]]:
    return _Call("list_flows", {"filter": filter, "limit": limit, "offset": offset}, _each(FlowRow))


def _list_incomplete(limit: int, offset: int) -> _Call[list[FlowRow]]:
    return _Call("list_incomplete_flows", {"limit": limit, "offset": offset}, _each(FlowRow))


def _details(flow_id: uuid.UUID) -> _Call[FlowDetails]:
    return _Call("flow_details", {"flow_id": flow_id}, _one(FlowDetails))


def _record_progress(flow_id: uuid.UUID, phase: str, insight: Any) -> _Call[FlowSummary]:
    params = {"flow_id": flow_id, "phase": phase, "insight": _jsonb(insight)}
    return _Call("record_progress", params, _one(FlowSummary))


def _heartbeat(flow_id: uuid.UUID) -> _Call[Heartbeat]:
    return _Call("heartbeat", {"flow_id": flow_id}, _one(Heartbeat))


def _set_status(flow_id: uuid.UUID, status: str, error: Any) -> _Call[StatusChange]:
    params = {"flow_id": flow_id, "status": status, "error": _jsonb(error)}
    return _Call("set_flow_status", params, _one(StatusChange))


def _resume(flow_id: uuid.UUID) -> _Call[ResumeResult]:
    return _Call("resume_flow", {"flow_id": flow_id}, _one(ResumeResult))


def _admin_list_incomplete(idle_for: timedelta | None) -> _Call[list[AdminFlowRow]]:
    return _Call("admin_list_incomplete_flows", {"idle_for": idle_for}, _each(AdminFlowRow))


def _admin_metrics() -> _Call[Metrics]:
    return _Call("admin_metrics", {}, _one(Metrics))


def _impact(flow_id: uuid.UUID) -> _Call[Impact]:
    return _Call("deletion_impact", {"flow_id": flow_id}, _one(Impact))


def _safety(flow_id: uuid.UUID, force: bool) -> _Call[Safety]:
    return _Call("deletion_safety", {"flow_id": flow_id, "force": force}, _one(Safety))


def _delete(flow_id: uuid.UUID, reason: str, force: bool, dry_run: bool) -> _Call[DeleteResult]:
    params = {"flow_id": flow_id, "reason": reason, "force": force}
    # A dry run's event was rolled back: no id of it is handed out.
    extra: dict[str, Any] = {"dry_run": True, "event_id": None} if dry_run else {}
    return _Call("delete_flow", params, _one(DeleteResult, **extra), rollback=dry_run)


def _delete_many(flow_ids: Iterable[uuid.UUID], reason: str, force: bool, atomic: bool,
                 dry_run: bool) -> _Call[list[BatchItem]]:
    params = {"flow_ids": None if flow_ids is None else list(flow_ids), "reason": reason, "force": force,
              "atomic": atomic}
    items = _each(BatchItem)
    build = (lambda rows: rolled_back(items(rows))) if dry_run else items
    return _Call("delete_flows", params, build, rollback=dry_run)


def rolled_back(items: list[BatchItem]) -> list[BatchItem]:
    """A dry run's batch outcomes, without the ids of the events it rolled back."""
    return [dataclasses.replace(item, event_id=None) for item in items]


def _audit_events(flow_id: uuid.UUID | None, since: datetime | None, limit: int) -> _Call[list[AuditEvent]]:
    return _Call("list_audit_events", {"flow_id": flow_id, "since": since, "limit": limit}, _each(AuditEvent))


def _audit_event(event_id: int) -> _Call[AuditEvent]:
    return _Call("audit_event", {"event_id": event_id}, _one(AuditEvent))


def _claim_file_cleanups(limit: int, lease: timedelta) -> _Call[list[FileCleanup]]:
    return _Call("claim_file_cleanups", {"limit": limit, "lease": lease}, _each(FileCleanup))


def _finish_file_cleanup(cleanup_id: int, error: str | None) -> _Call[CleanupOutcome]:
    return _Call("finish_file_cleanup", {"id": cleanup_id, "error": error}, _one(CleanupOutcome))


def _restore(event_id: int) -> _Call[RestoreResult]:
    return _Call("restore_flow", {"event_id": event_id}, _one(RestoreResult))


def _add_client(name: str, client_id: uuid.UUID | None) -> _Call[NewClient]:
    return _Call("add_client", {"name": name, "client_id": client_id}, _one(NewClient))


def _add_engagement(client_id: uuid.UUID, name: str, engagement_id: uuid.UUID | None) -> _Call[NewEngagement]:
    return _Call("add_engagement", {"client_id": client_id, "name": name, "engagement_id": engagement_id},
                 _one(NewEngagement))


def _list_tenants() -> _Call[list[TenantListing]]:
    return _Call("list_tenants", {}, _each(TenantListing))


def _admin_audit_events(since: datetime | None, action: str | None, limit: int) -> _Call[list[AdminAuditEvent]]:
    return _Call("admin_list_audit_events", {"since": since, "action": action, "limit": limit}, _each(AdminAuditEvent))


def _prune(older_than: timedelta, dry_run: bool, actor: str | None) -> _Call[PruneResult]:
    return _Call("prune_audit", {"older_than": older_than, "actor": actor},
                 lambda rows: PruneResult(int(rows[0]["events"]), dry_run), rollback=dry_run)


# The bulk path (see _Batches): each loader sends its rows in add_* calls, which check the keys of each
# row's object themselves (sql/080_bulk.sql); edges may also come as (source, target, type).
EDGE_KEYS = ("source_asset_id", "target_asset_id", "dependency_type")


def _loaded(batches: Rows) -> LoadResult:
    """The results of a load's add_* calls (one jsonb each) as one: the rows of every call, the rest
    (record_count after the load) from the last."""
    results = [from_json(LoadResult, next(iter(b["rows"][0].values()))) for b in batches]
    return dataclasses.replace(results[-1], loaded=sum(r.loaded for r in results))


def _in_order(batches: Rows) -> list[int]:
    """The ids of add_assets' calls, call after call, each call's as one array in the order given."""
    ids: list[int] = []
    for batch in batches:
        ids += batch["rows"][0]["ids"]
    return ids


def _edge(edge: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...]:
    """An edge as (source_asset_id, target_asset_id, dependency_type), from that sequence or a mapping with
    those keys: two asset ids (int) and a type (str), checked here because they are sent as arrays,
    where a float would be rounded to an id. A value missing (None, or a key left out) is NULL, which
    the load refuses; anything else is InvalidRequest."""
    if isinstance(edge, Mapping):
        unknown = sorted(str(k) for k in edge if k not in EDGE_KEYS)
        if unknown:
            raise InvalidRequest(f"an edge has unknown keys: {', '.join(unknown)} (it takes {', '.join(EDGE_KEYS)})")
        values = tuple(edge.get(k) for k in EDGE_KEYS)
    else:
        values = tuple(edge)
    if len(values) != len(EDGE_KEYS) or not (_asset_id(values[0]) and _asset_id(values[1])
                                             and (values[2] is None or isinstance(values[2], str))):
        raise InvalidRequest("an edge is (source_asset_id, target_asset_id, dependency_type): two asset ids "
                             f"(integers) and a type (text), got {values!r}")
    return values


def _asset_id(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _edge_columns(batch: list[tuple[Any, ...]]) -> dict[str, Any]:
    """A batch of edges as the three arrays add_dependencies takes (sent in binary: no JSON to parse)."""
    return {"sources": [e[0] for e in batch], "targets": [e[1] for e in batch], "types": [e[2] for e in batch]}


def _record_rows(opened: Mapping[str, Any], batch: list[Any]) -> Iterator[tuple[Any, ...]]:
    """A COPY batch's raw records, numbered from the next_row_number begin_copy_records answered."""
    client, engagement, import_id = opened["client_id"], opened["engagement_id"], opened["import_id"]
    for row_number, data in enumerate(batch, opened["next_row_number"]):
        yield client, engagement, import_id, row_number, Jsonb(data, dumps=_dumps)


_COPY_RECORDS = _Copy(
    "begin_copy_records", ("client_id", "engagement_id", "import_id", "row_number", "data"), _record_rows,
    lambda opened, sent: [{"add_records": {"import_id": opened["import_id"], "flow_id": opened["flow_id"],
                                           "loaded": sent, "record_count": opened["record_count"] + sent}}])
ASSET_KEYS = ("name", "asset_type", "hostname", "ip_address", "operating_system", "attributes")
_ASSET_KEY_SET = frozenset(ASSET_KEYS)


def _drawn_ids(opened: Mapping[str, Any]) -> list[int]:
    """The ids begin_copy_assets drew, in order, from its [first, last] pairs."""
    return [i for first, last in opened["id_ranges"] for i in range(first, last + 1)]


def _asset_rows(opened: Mapping[str, Any], batch: list[Any]) -> Iterator[tuple[Any, ...]]:
    """A COPY batch's assets, each with its id as begin_copy_assets drew them, in order; checked as
    add_assets checks its batch (a mapping whose keys are among ASSET_KEYS; no attributes is {})."""
    client, engagement, flow_id = opened["client_id"], opened["engagement_id"], opened["flow_id"]
    for asset_id, asset in zip(_drawn_ids(opened), batch, strict=True):
        try:
            keys = asset.keys()
        except AttributeError:
            raise InvalidRequest(f"each asset must be a mapping (got {type(asset).__name__})") from None
        if not keys <= _ASSET_KEY_SET:
            raise InvalidRequest(f"a row has unknown keys: {', '.join(sorted(map(str, keys - _ASSET_KEY_SET)))}")
        get = asset.get
        attributes = get("attributes")
        yield (client, engagement, asset_id, flow_id, get("name"), get("asset_type"), get("hostname"),
               get("ip_address"), get("operating_system"),
               Jsonb({} if attributes is None else attributes, dumps=_dumps))


_COPY_ASSETS = _Copy(
    "begin_copy_assets", ("client_id", "engagement_id", "id", "flow_id", *ASSET_KEYS), _asset_rows,
    lambda opened, sent: [{"ids": _drawn_ids(opened)}])


def _load_records(import_id: uuid.UUID, rows: Iterable[Any]) -> _Call[LoadResult]:
    return _Call("add_records", {"import_id": import_id}, _loaded, batches=_Batches(rows), copy=_COPY_RECORDS)


def _load_mappings(import_id: uuid.UUID, mappings: Iterable[Mapping[str, Any]]) -> _Call[LoadResult]:
    return _Call("add_mappings", {"import_id": import_id}, _loaded, batches=_Batches(mappings))


def _load_assets(flow_id: uuid.UUID, assets: Iterable[Mapping[str, Any]]) -> _Call[list[int]]:
    return _Call("add_assets", {"flow_id": flow_id}, _in_order, batches=_Batches(assets), copy=_COPY_ASSETS)


def _load_dependencies(flow_id: uuid.UUID, edges: Iterable[Sequence[Any] | Mapping[str, Any]]) -> _Call[LoadResult]:
    return _Call("add_dependencies", {"flow_id": flow_id}, _loaded,
                 batches=_Batches(map(_edge, edges), _edge_columns))


@contextlib.contextmanager
def _batch_errors() -> Iterator[None]:
    """A batch that cannot be sent (a value JSON has no type for) or that PostgreSQL refuses as a value
    (a NUL in a JSON string) or a row (a COPY's key) is bad input like any other: InvalidRequest, and the
    transaction rolls back; a COPY's bounded lock wait that ran out is FlowBusy."""
    try:
        yield
    except TypeError as exc:
        raise InvalidRequest(f"a row could not be sent as JSON: {exc}") from exc
    except psycopg.errors.DataError as exc:
        raise InvalidRequest(f"a row could not be read: {exc.diag.message_primary}") from exc
    except psycopg.errors.IntegrityError as exc:  # a COPY's row (the add_* calls raise PF422 themselves)
        raise InvalidRequest(f"a row was refused: {exc.diag.message_primary}") from exc
    except psycopg.errors.LockNotAvailable as exc:  # a COPY's wait, bounded by begin_copy_* (PF423 for add_*)
        raise FlowBusy(f"the load waited too long for rows another transaction holds: {exc.diag.message_primary}",
                       hint="Try again once it has finished.") from exc


def _rebatched(chunk: list[Any], rest: Iterator[list[Any]]) -> Iterator[list[Any]]:
    """A COPY batch not sent and the ones after it, as batches of BATCH_ROWS for the add_* calls."""
    return _Batches(itertools.chain(chunk, itertools.chain.from_iterable(rest))).chunks()


def _opened(row: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A begin_copy_* answer (one jsonb), or None when it names no table to COPY into."""
    opened: Mapping[str, Any] = next(iter(row.values())) if row else {}
    return opened if opened.get("copy_table") else None


def _batch_results(cur: psycopg.Cursor[Any]) -> Rows:
    """Each result set executemany(returning=True) left on cur, as one row {"rows": ...} per call."""
    batches = [{"rows": cur.fetchall()}]
    while cur.nextset():
        batches.append({"rows": cur.fetchall()})
    return batches


def _purge_params(flow_id: uuid.UUID, reason: str, batch_rows: int, force: bool) -> dict[str, Any]:
    return {"flow_id": flow_id, "reason": reason, "batch_rows": batch_rows, "force": force}


def _require_autocommit(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        raise InvalidRequest("purge commits as it goes: it needs an autocommit connection outside a transaction")


def _notice_handler(on_progress: Callable[[str], None] | None,
                    on_rows: Callable[[int], None] | None = None) -> Callable[[psycopg.errors.Diagnostic], None]:
    """A purge's notices: each message to on_progress, and each batch's rows (its DETAIL) to on_rows."""
    def handle(diag: psycopg.errors.Diagnostic) -> None:
        if on_progress is not None and diag.message_primary:
            on_progress(diag.message_primary)
        if on_rows is not None and diag.message_detail:
            rows = json.loads(diag.message_detail).get("rows")
            if rows is not None:
                on_rows(int(rows))
    return handle


def _check_source(source: object, accepted: tuple[type, ...], name: str, twin: tuple[type, ...],
                  twin_name: str) -> None:
    """A clear TypeError for a source of the wrong kind (an async pool given to Flows, say)."""
    if not isinstance(source, accepted):
        hint = f"; for a {type(source).__name__} use {twin_name}" if isinstance(source, twin) else ""
        raise TypeError(f"{name} needs a {' or '.join(t.__name__ for t in accepted)}, "
                        f"not {type(source).__name__}{hint}")


def _uuid(value: uuid.UUID | str, what: str) -> uuid.UUID:
    """value as a UUID; InvalidRequest (PF422, as the SQL API would say) for anything else."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidRequest(f"{what} must be a UUID (got {str(value)[:100]!r})") from None


def _tenant(client_id: uuid.UUID | str, engagement_id: uuid.UUID | str, actor: str | None) -> Tenant:
    return Tenant(_uuid(client_id, "client_id"), _uuid(engagement_id, "engagement_id"), actor)


def _context_params(tenant: Tenant) -> dict[str, Any]:
    return {"client_id": tenant.client_id, "engagement_id": tenant.engagement_id, "actor": tenant.actor}


class Flows:
    """The SQL API over a psycopg connection or connection pool."""

    def __init__(self, source: SyncSource) -> None:
        _check_source(source, _SYNC, "Flows", _ASYNC, "AsyncFlows")
        self._source = source

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if isinstance(self._source, ConnectionPool):
            with self._source.connection() as conn:
                yield conn
        else:
            yield self._source

    def _run(self, call: _Call[T], tenant: Tenant | None) -> T:
        with self._connection() as conn, wrap_errors(), conn.transaction(force_rollback=call.rollback), \
                conn.cursor(row_factory=dict_row) as cur:
            set_json_loads(_loads, cur)
            if tenant is not None:
                cur.execute(query("set_context"), _context_params(tenant))
            if call.batches is not None:
                rows, spec = [], call.copy
                rest = call.batches.chunks(COPY_ROWS if spec is not None else None)
                if spec is not None:
                    for chunk in rest:
                        cur.execute(query(spec.begin), {**call.params, "count": len(chunk)})
                        opened = _opened(cur.fetchone())
                        if opened is None:  # no COPY here: this batch and the rest as add_* calls
                            rest, spec = _rebatched(chunk, rest), None
                            break
                        with _batch_errors(), cur.copy(spec.statement(opened)) as copy:
                            for row in spec.rows(opened, chunk):
                                copy.write_row(row)
                        rows.append({"rows": spec.result(opened, len(chunk))})
                if spec is None:
                    with _batch_errors():
                        cur.executemany(query(call.query), call.batches.params(call.params, rest), returning=True)
                    rows += _batch_results(cur)
            else:
                cur.execute(query(call.query), call.params)
                rows = cur.fetchall()
        return call.build(rows)

    def tenant(self, client_id: uuid.UUID | str, engagement_id: uuid.UUID | str,
               actor: str | None = None) -> TenantFlows:
        """The calls of one tenant (client and engagement), each in a transaction bound to it; ``actor`` is
        who acts, as the audit records it. Ids are UUIDs or their text (InvalidRequest otherwise)."""
        return TenantFlows(self, _tenant(client_id, engagement_id, actor))

    def admin_list_incomplete(self, idle_for: timedelta | None = None) -> list[AdminFlowRow]:
        """Incomplete flows of every tenant (members of pyflows_admin only, Forbidden otherwise)."""
        return self._run(_admin_list_incomplete(idle_for), None)

    def admin_metrics(self) -> Metrics:
        """What a monitoring system watches, across tenants (members of pyflows_admin only)."""
        return self._run(_admin_metrics(), None)

    def _purge(self, tenant: Tenant, params: dict[str, Any],
               handler: Callable[[psycopg.errors.Diagnostic], None]) -> AuditEvent:
        with self._connection() as conn, wrap_errors():
            _require_autocommit(conn)
            conn.add_notice_handler(handler)
            try:
                conn.execute(query("set_session_context"), _context_params(tenant))
                try:
                    conn.execute(query("purge_flow"), params)
                finally:
                    conn.execute(query("clear_context"))
            finally:
                conn.remove_notice_handler(handler)
        event_id = self._run(_Call("last_purge_event", params, lambda rows: int(rows[0]["id"])), tenant)
        return self._run(_audit_event(event_id), tenant)

    def prune_audit(self, older_than: timedelta, dry_run: bool = False, actor: str | None = None) -> PruneResult:
        """Remove audit events older than ``older_than`` with their archived rows (pyflows_admin); the
        audit.prune event records ``actor`` (default: the login role)."""
        return self._run(_prune(older_than, dry_run, actor), None)

    def admin_audit_events(self, since: datetime | None = None, action: str | None = None,
                           limit: int = 100) -> list[AdminAuditEvent]:
        """Audit events of every tenant, and of none (audit.prune), newest first (pyflows_admin)."""
        return self._run(_admin_audit_events(since, action, limit), None)

    def add_client(self, name: str, client_id: uuid.UUID | None = None) -> NewClient:
        """A new client (pyflows_admin or the schema owner); InvalidRequest for an id that exists."""
        return self._run(_add_client(name, client_id), None)

    def add_engagement(self, client_id: uuid.UUID, name: str, engagement_id: uuid.UUID | None = None) -> NewEngagement:
        """A new engagement of a client (pyflows_admin or the schema owner)."""
        return self._run(_add_engagement(client_id, name, engagement_id), None)

    def list_tenants(self) -> list[TenantListing]:
        """Every client and engagement with its flow counts (pyflows_admin or the schema owner)."""
        return self._run(_list_tenants(), None)

    def claim_file_cleanups(self, limit: int = 100, lease: timedelta = DEFAULT_LEASE) -> list[FileCleanup]:
        """Lease up to ``limit`` queued storage objects for removal (pyflows_admin)."""
        return self._run(_claim_file_cleanups(limit, lease), None)

    def finish_file_cleanup(self, cleanup_id: int, error: str | None = None) -> CleanupOutcome:
        """Record that a claimed object was removed, or why it was not (pyflows_admin)."""
        return self._run(_finish_file_cleanup(cleanup_id, error), None)


class TenantFlows:
    """The SQL API for one tenant context; each call is one transaction."""

    def __init__(self, flows: Flows, tenant: Tenant) -> None:
        self._flows = flows
        self.context = tenant

    def _run(self, call: _Call[T]) -> T:
        return self._flows._run(call, self.context)

    def gate(self) -> Gate:
        """Can a new flow start here? If not, which flow blocks it and the next steps (flow_gate)."""
        return self._run(_gate())

    def start(self, name: str, created_by: str | None = None) -> FlowSummary:
        """Start a flow called ``name``; IncompleteFlowExists while another flow is incomplete (start_flow)."""
        return self._run(_start(name, created_by))

    def start_import(self, filename: str, storage_uri: str, byte_size: int,
                     flow_name: str | None = None) -> StartedImport:
        """Record an uploaded file as a new flow with its first import (start_import)."""
        return self._run(_start_import(filename, storage_uri, byte_size, flow_name))

    def add_import(self, flow_id: uuid.UUID, filename: str, storage_uri: str, byte_size: int) -> StartedImport:
        """Record another uploaded file in an incomplete flow (add_import)."""
        return self._run(_add_import(flow_id, filename, storage_uri, byte_size))

    def list_flows(self, filter: str = "all", limit: int = 50, offset: int = 0) -> list[FlowRow]:
        """The context's flows, most recently active first: ``filter`` incomplete, terminal or all (list_flows)."""
        return self._run(_list(filter, limit, offset))

    def list_incomplete(self, limit: int = 50, offset: int = 0) -> list[FlowRow]:
        """The context's incomplete flows, most recently active first (list_incomplete_flows)."""
        return self._run(_list_incomplete(limit, offset))

    def details(self, flow_id: uuid.UUID) -> FlowDetails:
        """Everything about one flow: phases, counts, errors, insights, next steps (flow_details)."""
        return self._run(_details(flow_id))

    def record_progress(self, flow_id: uuid.UUID, phase: str, insight: Any = None) -> FlowSummary:
        """Mark ``phase`` complete, with an optional agent insight; the flow completes after its last phase."""
        return self._run(_record_progress(flow_id, phase, insight))

    def heartbeat(self, flow_id: uuid.UUID) -> Heartbeat:
        """A worker's liveness signal for a running flow; it counts as active until ``lease_until``."""
        return self._run(_heartbeat(flow_id))

    def set_status(self, flow_id: uuid.UUID, status: str, error: Any = None) -> StatusChange:
        """Move a flow to ``status`` (running, paused, waiting_for_user, failed with ``error``, cancelled)."""
        return self._run(_set_status(flow_id, status, error))

    def resume(self, flow_id: uuid.UUID) -> ResumeResult:
        """Resume a paused, failed, waiting or new flow; a running flow is left as it is (resume_flow)."""
        return self._run(_resume(flow_id))

    def deletion_impact(self, flow_id: uuid.UUID) -> Impact:
        """What deleting the flow would remove, the files it would queue, and the safety verdict."""
        return self._run(_impact(flow_id))

    def deletion_safety(self, flow_id: uuid.UUID, force: bool = False) -> Safety:
        """Whether the flow may be deleted: blockers and warnings; ``force`` overrides what may be overridden."""
        return self._run(_safety(flow_id, force))

    def delete(self, flow_id: uuid.UUID, reason: str, force: bool = False, dry_run: bool = False) -> DeleteResult:
        """The audited delete; with ``dry_run`` it runs for real and is rolled back."""
        return self._run(_delete(flow_id, reason, force, dry_run))

    def delete_many(self, flow_ids: Iterable[uuid.UUID], reason: str, force: bool = False, atomic: bool = True,
                    dry_run: bool = False) -> list[BatchItem]:
        """Delete several flows, all or nothing (``atomic``) or each on its own; one outcome per flow."""
        return self._run(_delete_many(flow_ids, reason, force, atomic, dry_run))

    def audit_events(self, flow_id: uuid.UUID | None = None, since: datetime | None = None,
                     limit: int = 100) -> list[AuditEvent]:
        """The context's audit events, newest first (list_audit_events)."""
        return self._run(_audit_events(flow_id, since, limit))

    def audit_event(self, event_id: int) -> AuditEvent:
        """One audit event in full, with the event that restored its flow, if any (audit_event)."""
        return self._run(_audit_event(event_id))

    def restore(self, event_id: int) -> RestoreResult:
        """Put back the flow that audit event ``event_id`` deleted, with the same ids and values."""
        return self._run(_restore(event_id))

    def copy_records(self, import_id: uuid.UUID, rows: Iterable[Any]) -> LoadResult:
        """Bulk-load an import's raw records (each row its ``data``, any JSON value), numbered after the
        import's last one, by COPY (begin_copy_records; on Citus in pipelined add_records batches);
        keeps ``record_count``. One transaction; nothing on error."""
        return self._run(_load_records(import_id, rows))

    def copy_mappings(self, import_id: uuid.UUID, mappings: Iterable[Mapping[str, Any]]) -> LoadResult:
        """Bulk-load field mappings: dicts with source_field, target_attribute, confidence, status."""
        return self._run(_load_mappings(import_id, mappings))

    def copy_assets(self, flow_id: uuid.UUID, assets: Iterable[Mapping[str, Any]]) -> list[int]:
        """Bulk-load assets (dicts with name, asset_type and optionally hostname, ip_address,
        operating_system, attributes) by COPY (begin_copy_assets; on Citus in add_assets batches);
        returns their ids in the order given, for building edges."""
        return self._run(_load_assets(flow_id, assets))

    def copy_dependencies(self, flow_id: uuid.UUID,
                          edges: Iterable[Sequence[Any] | Mapping[str, Any]]) -> LoadResult:
        """Bulk-load dependency edges: (source_asset_id, target_asset_id, dependency_type) or dicts."""
        return self._run(_load_dependencies(flow_id, edges))

    def purge(self, flow_id: uuid.UUID, reason: str, batch_rows: int = 10000, force: bool = False,
              on_progress: Callable[[str], None] | None = None,
              on_rows: Callable[[int], None] | None = None) -> AuditEvent:
        """Delete a very large flow in committed batches (CALL pyflows.purge_flow); returns its event.

        Needs an autocommit connection outside a transaction; ``on_progress`` receives each batch's notice,
        ``on_rows`` the rows each batch removed (for a progress bar over the impact's total).
        """
        return self._flows._purge(self.context, _purge_params(flow_id, reason, batch_rows, force),
                                  _notice_handler(on_progress, on_rows))


class AsyncFlows:
    """The async twin of :class:`Flows`, over an async connection or pool."""

    def __init__(self, source: AsyncSource) -> None:
        _check_source(source, _ASYNC, "AsyncFlows", _SYNC, "Flows")
        self._source = source

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if isinstance(self._source, AsyncConnectionPool):
            async with self._source.connection() as conn:
                yield conn
        else:
            yield self._source

    async def _run(self, call: _Call[T], tenant: Tenant | None) -> T:
        async with self._connection() as conn:
            with wrap_errors():
                async with conn.transaction(force_rollback=call.rollback), conn.cursor(row_factory=dict_row) as cur:
                    set_json_loads(_loads, cur)
                    if tenant is not None:
                        await cur.execute(query("set_context"), _context_params(tenant))
                    if call.batches is not None:
                        rows, spec = [], call.copy
                        rest = call.batches.chunks(COPY_ROWS if spec is not None else None)
                        if spec is not None:
                            for chunk in rest:
                                await cur.execute(query(spec.begin), {**call.params, "count": len(chunk)})
                                opened = _opened(await cur.fetchone())
                                if opened is None:  # no COPY here: this batch and the rest as add_* calls
                                    rest, spec = _rebatched(chunk, rest), None
                                    break
                                with _batch_errors():
                                    async with cur.copy(spec.statement(opened)) as copy:
                                        for row in spec.rows(opened, chunk):
                                            await copy.write_row(row)
                                rows.append({"rows": spec.result(opened, len(chunk))})
                        if spec is None:
                            with _batch_errors():
                                await cur.executemany(query(call.query), call.batches.params(call.params, rest),
                                                      returning=True)
                            rows.append({"rows": await cur.fetchall()})
                            while cur.nextset():
                                rows.append({"rows": await cur.fetchall()})
                    else:
                        await cur.execute(query(call.query), call.params)
                        rows = await cur.fetchall()
        return call.build(rows)

    def tenant(self, client_id: uuid.UUID | str, engagement_id: uuid.UUID | str,
               actor: str | None = None) -> AsyncTenantFlows:
        """The calls of one tenant, as :meth:`Flows.tenant`."""
        return AsyncTenantFlows(self, _tenant(client_id, engagement_id, actor))

    async def admin_list_incomplete(self, idle_for: timedelta | None = None) -> list[AdminFlowRow]:
        return await self._run(_admin_list_incomplete(idle_for), None)

    async def admin_metrics(self) -> Metrics:
        return await self._run(_admin_metrics(), None)

    async def _purge(self, tenant: Tenant, params: dict[str, Any],
                     handler: Callable[[psycopg.errors.Diagnostic], None]) -> AuditEvent:
        async with self._connection() as conn:
            with wrap_errors():
                _require_autocommit(conn)
                conn.add_notice_handler(handler)
                try:
                    await conn.execute(query("set_session_context"), _context_params(tenant))
                    try:
                        await conn.execute(query("purge_flow"), params)
                    finally:
                        await conn.execute(query("clear_context"))
                finally:
                    conn.remove_notice_handler(handler)
        event_id = await self._run(_Call("last_purge_event", params, lambda rows: int(rows[0]["id"])), tenant)
        return await self._run(_audit_event(event_id), tenant)

    async def prune_audit(self, older_than: timedelta, dry_run: bool = False,
                          actor: str | None = None) -> PruneResult:
        """Remove audit events older than ``older_than`` with their archived rows (pyflows_admin)."""
        return await self._run(_prune(older_than, dry_run, actor), None)

    async def admin_audit_events(self, since: datetime | None = None, action: str | None = None,
                                 limit: int = 100) -> list[AdminAuditEvent]:
        """Audit events of every tenant, and of none (audit.prune), newest first (pyflows_admin)."""
        return await self._run(_admin_audit_events(since, action, limit), None)

    async def add_client(self, name: str, client_id: uuid.UUID | None = None) -> NewClient:
        """A new client (pyflows_admin or the schema owner)."""
        return await self._run(_add_client(name, client_id), None)

    async def add_engagement(self, client_id: uuid.UUID, name: str,
                             engagement_id: uuid.UUID | None = None) -> NewEngagement:
        """A new engagement of a client (pyflows_admin or the schema owner)."""
        return await self._run(_add_engagement(client_id, name, engagement_id), None)

    async def list_tenants(self) -> list[TenantListing]:
        """Every client and engagement with its flow counts (pyflows_admin or the schema owner)."""
        return await self._run(_list_tenants(), None)

    async def claim_file_cleanups(self, limit: int = 100, lease: timedelta = DEFAULT_LEASE) -> list[FileCleanup]:
        return await self._run(_claim_file_cleanups(limit, lease), None)

    async def finish_file_cleanup(self, cleanup_id: int, error: str | None = None) -> CleanupOutcome:
        return await self._run(_finish_file_cleanup(cleanup_id, error), None)


class AsyncTenantFlows:
    """The async twin of :class:`TenantFlows`."""

    def __init__(self, flows: AsyncFlows, tenant: Tenant) -> None:
        self._flows = flows
        self.context = tenant

    async def _run(self, call: _Call[T]) -> T:
        return await self._flows._run(call, self.context)

    async def gate(self) -> Gate:
        return await self._run(_gate())

    async def start(self, name: str, created_by: str | None = None) -> FlowSummary:
        return await self._run(_start(name, created_by))

    async def start_import(self, filename: str, storage_uri: str, byte_size: int,
                           flow_name: str | None = None) -> StartedImport:
        return await self._run(_start_import(filename, storage_uri, byte_size, flow_name))

    async def add_import(self, flow_id: uuid.UUID, filename: str, storage_uri: str, byte_size: int
                         ) -> StartedImport:
        return await self._run(_add_import(flow_id, filename, storage_uri, byte_size))

    async def list_flows(self, filter: str = "all", limit: int = 50, offset: int = 0) -> list[FlowRow]:
        return await self._run(_list(filter, limit, offset))

    async def list_incomplete(self, limit: int = 50, offset: int = 0) -> list[FlowRow]:
        return await self._run(_list_incomplete(limit, offset))

    async def details(self, flow_id: uuid.UUID) -> FlowDetails:
        return await self._run(_details(flow_id))

    async def record_progress(self, flow_id: uuid.UUID, phase: str, insight: Any = None) -> FlowSummary:
        return await self._run(_record_progress(flow_id, phase, insight))

    async def heartbeat(self, flow_id: uuid.UUID) -> Heartbeat:
        return await self._run(_heartbeat(flow_id))

    async def set_status(self, flow_id: uuid.UUID, status: str, error: Any = None) -> StatusChange:
        return await self._run(_set_status(flow_id, status, error))

    async def resume(self, flow_id: uuid.UUID) -> ResumeResult:
        return await self._run(_resume(flow_id))

    async def deletion_impact(self, flow_id: uuid.UUID) -> Impact:
        return await self._run(_impact(flow_id))

    async def deletion_safety(self, flow_id: uuid.UUID, force: bool = False) -> Safety:
        return await self._run(_safety(flow_id, force))

    async def delete(self, flow_id: uuid.UUID, reason: str, force: bool = False,
                     dry_run: bool = False) -> DeleteResult:
        return await self._run(_delete(flow_id, reason, force, dry_run))

    async def delete_many(self, flow_ids: Iterable[uuid.UUID], reason: str, force: bool = False,
                          atomic: bool = True, dry_run: bool = False) -> list[BatchItem]:
        return await self._run(_delete_many(flow_ids, reason, force, atomic, dry_run))

    async def audit_events(self, flow_id: uuid.UUID | None = None, since: datetime | None = None,
                           limit: int = 100) -> list[AuditEvent]:
        return await self._run(_audit_events(flow_id, since, limit))

    async def audit_event(self, event_id: int) -> AuditEvent:
        return await self._run(_audit_event(event_id))

    async def restore(self, event_id: int) -> RestoreResult:
        return await self._run(_restore(event_id))

    async def copy_records(self, import_id: uuid.UUID, rows: Iterable[Any]) -> LoadResult:
        return await self._run(_load_records(import_id, rows))

    async def copy_mappings(self, import_id: uuid.UUID, mappings: Iterable[Mapping[str, Any]]) -> LoadResult:
        return await self._run(_load_mappings(import_id, mappings))

    async def copy_assets(self, flow_id: uuid.UUID, assets: Iterable[Mapping[str, Any]]) -> list[int]:
        return await self._run(_load_assets(flow_id, assets))

    async def copy_dependencies(self, flow_id: uuid.UUID,
                                edges: Iterable[Sequence[Any] | Mapping[str, Any]]) -> LoadResult:
        return await self._run(_load_dependencies(flow_id, edges))

    async def purge(self, flow_id: uuid.UUID, reason: str, batch_rows: int = 10000, force: bool = False,
                    on_progress: Callable[[str], None] | None = None,
                    on_rows: Callable[[int], None] | None = None) -> AuditEvent:
        """Delete a very large flow in committed batches (CALL pyflows.purge_flow); see TenantFlows.purge."""
        return await self._flows._purge(self.context, _purge_params(flow_id, reason, batch_rows, force),
                                        _notice_handler(on_progress, on_rows))


def _share_docstrings(sync: type, twin: type) -> None:
    """The async twins say what their sync twins say: each public method without a docstring of its own gets its
    twin's."""
    for name, method in vars(twin).items():
        if not name.startswith("_") and callable(method) and not method.__doc__ and getattr(sync, name, None):
            method.__doc__ = getattr(sync, name).__doc__


_share_docstrings(Flows, AsyncFlows)
_share_docstrings(TenantFlows, AsyncTenantFlows)
