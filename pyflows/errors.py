"""pyflows' exceptions, and the one place that maps PostgreSQL errors onto them.

The SQL API raises SQLSTATE class ``PF`` errors whose DETAIL is JSON where there is structure;
:func:`wrap_errors` turns them into the classes below, keeping the original as ``__cause__``.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

import psycopg

__all__ = [
    "PyflowsError",
    "NoContext",
    "Forbidden",
    "FlowNotFound",
    "IncompleteFlowExists",
    "InvalidRequest",
    "FlowBusy",
    "ConnectionFailed",
    "SchemaMissing",
    "MigrationError",
    "from_psycopg",
    "wrap_errors",
    "describe",
    "in_words",
    "reworded",
]


class PyflowsError(Exception):
    """Base of every error pyflows raises on purpose."""

    sqlstate: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        detail: dict[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail: dict[str, Any] = detail or {}
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class NoContext(PyflowsError):
    """PF401: no tenant context in this transaction, or no actor for a destructive call."""

    sqlstate = "PF401"


class Forbidden(PyflowsError):
    """PF403: the caller's role may not do this."""

    sqlstate = "PF403"


class FlowNotFound(PyflowsError):
    """PF404: no such flow, engagement or event in this context."""

    sqlstate = "PF404"


class IncompleteFlowExists(PyflowsError):
    """PF409: the context already has an incomplete flow; ``detail`` describes it.

    The blocking flow's fields are also attributes: ``flow_id``, ``name``, ``status``,
    ``current_phase``, ``progress_percentage``, ``last_activity_at``, ``next_steps`` and ``actions``.
    """

    sqlstate = "PF409"

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None, hint: str | None = None) -> None:
        super().__init__(message, detail=detail, hint=hint)
        raw_id = self.detail.get("flow_id")
        self.flow_id: uuid.UUID | None = uuid.UUID(str(raw_id)) if raw_id else None
        self.name: str | None = self.detail.get("name")
        self.status: str | None = self.detail.get("status")
        self.current_phase: str | None = self.detail.get("current_phase")
        progress = self.detail.get("progress_percentage")
        self.progress_percentage: Decimal | None = None if progress is None else Decimal(str(progress))
        activity = self.detail.get("last_activity_at")
        self.last_activity_at: datetime | None = None if activity is None else datetime.fromisoformat(activity)
        self.next_steps: list[str] = list(self.detail.get("next_steps") or [])
        self.actions: list[str] = list(self.detail.get("actions") or [])


class InvalidRequest(PyflowsError):
    """PF422: an invalid argument or state transition."""

    sqlstate = "PF422"


class FlowBusy(PyflowsError):
    """PF423: the flow is active or locked by another transaction."""

    sqlstate = "PF423"


class ConnectionFailed(PyflowsError):
    """The server could not be reached, refused the login, or has no such database."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # "unreachable", "authentication", "database" or "dsn"


class SchemaMissing(PyflowsError):
    """The database has no pyflows schema, or an older one than this package needs."""


class MigrationError(PyflowsError):
    """A migration or a sql/ definition failed to apply; nothing of that step was committed."""


_BY_SQLSTATE: dict[str, type[PyflowsError]] = {
    cls.sqlstate: cls
    for cls in (NoContext, Forbidden, FlowNotFound, IncompleteFlowExists, InvalidRequest, FlowBusy)
    if cls.sqlstate
}

# What PostgreSQL says of a value it cannot take as its type (not a UUID, a date, a number in range...):
# bad input, as PF422 is.
BAD_VALUE_SQLSTATES = frozenset({"22P02", "22007", "22008", "22003", "22001", "22021", "22P05", "22023"})

# What PostgreSQL says when an object pyflows installs is not there: the schema was never migrated.
SCHEMA_MISSING_SQLSTATES = frozenset({"3F000", "42P01", "42883"})


def describe(exc: BaseException) -> str:
    """One line for any error: a database error's message, detail and hint, without the query echo."""
    primary = exc.diag.message_primary if isinstance(exc, psycopg.Error) else None
    if isinstance(exc, psycopg.Error) and primary:
        diag = exc.diag
        parts: list[str] = [primary]
        if diag.message_detail:
            parts.append(f"DETAIL: {diag.message_detail}")
        if diag.message_hint:
            parts.append(f"HINT: {diag.message_hint}")
        if exc.sqlstate:
            parts[0] = f"[{exc.sqlstate}] {parts[0]}"
        text = " ".join(parts)
    else:
        text = str(exc)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _parse_detail(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text, parse_float=Decimal)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}


# The SQL API's messages name SQL parameters and functions; Python and CLI users get their own words.
# (the SQL text, the Python API's words, the command line's words)
WORDS: tuple[tuple[str, str, str], ...] = (
    ("Pass p_force => true to override", "Pass force=True to override", "Add --force to override"),
    ("run pyflows.purge_flow again", "run TenantFlows.purge() again", "run `pyflows flows purge` again"),
    ("pyflows.purge_flow deletes them", "TenantFlows.purge() deletes them", "`pyflows flows purge` deletes them"),
    ("Pass p_actor to pyflows.set_context.", "Pass actor= to Flows.tenant().", "Give --actor."),
    ("A flow completes through record_progress and is deleted through delete_flow.",
     "A flow completes through TenantFlows.record_progress() and is deleted through TenantFlows.delete().",
     "A flow completes through `pyflows flows progress` and is deleted through `pyflows flows delete`."),
    ("Call pyflows.set_context(client_id, engagement_id, actor) in this transaction first.",
     "Use Flows.tenant(client_id, engagement_id, actor).", "Give --client and --engagement."),
)
Audience = Literal["python", "cli"]


def in_words(text: str, audience: Audience) -> str:
    """text with the SQL API's words (and, for the CLI, the Python API's) replaced by the audience's."""
    for sql_words, python_words, cli_words in WORDS:
        if audience == "python":
            text = text.replace(sql_words, python_words)
        else:
            text = text.replace(sql_words, cli_words).replace(python_words, cli_words)
    return text


def reworded(error: PyflowsError, audience: Audience) -> PyflowsError:
    """error with its message and hint in the audience's words (the same object, changed)."""
    error.message = in_words(error.message, audience)
    error.hint = None if error.hint is None else in_words(error.hint, audience)
    error.args = (error.message,)
    return error


def from_psycopg(exc: psycopg.Error) -> PyflowsError | None:
    """The pyflows exception for a database error (in the Python API's words), or None when it is not one of
    ours."""
    sqlstate = exc.sqlstate or ""
    diag = exc.diag
    cls = _BY_SQLSTATE.get(sqlstate)
    if cls is not None:
        return reworded(cls(diag.message_primary or str(exc), detail=_parse_detail(diag.message_detail),
                            hint=diag.message_hint), "python")
    if sqlstate in BAD_VALUE_SQLSTATES:
        return InvalidRequest(f"invalid value: {diag.message_primary or exc}")
    if sqlstate in SCHEMA_MISSING_SQLSTATES:
        return SchemaMissing(
            f"the pyflows schema is missing or out of date ({diag.message_primary}): run `pyflows migrate`"
        )
    return None


@contextlib.contextmanager
def wrap_errors() -> Iterator[None]:
    """Re-raise PF-coded database errors as pyflows exceptions; let every other error through."""
    try:
        yield
    except psycopg.Error as exc:
        mapped = from_psycopg(exc)
        if mapped is None:
            raise
        raise mapped from exc


_AUTH_PATTERNS = re.compile(
    r"password authentication failed|role \".*\" does not exist|no pg_hba\.conf entry|"
    r"authentication failed|peer authentication|password is required|permission denied for database",
)


def connection_failed(exc: psycopg.Error) -> ConnectionFailed:
    """One readable line for a failed connection attempt, classified by what went wrong."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = re.sub(r"^connection (failed|is bad): ", "", text)
    text = text.replace("FATAL:  ", "")
    if _AUTH_PATTERNS.search(text):
        return ConnectionFailed(f"authentication failed: {text}", reason="authentication")
    if re.search(r"database \".*\" does not exist", text):
        return ConnectionFailed(f"no such database: {text}", reason="database")
    return ConnectionFailed(f"cannot reach PostgreSQL: {text}", reason="unreachable")
