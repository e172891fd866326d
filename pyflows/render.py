"""Turning results into what the CLI prints: stable JSON, or tables and key/value blocks for people."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

__all__ = ["to_json", "plain", "table", "fields", "cell"]


def plain(value: Any) -> Any:
    """A JSON-ready copy: dataclasses become objects, ids strings, times ISO 8601, decimals numbers,
    intervals seconds."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def to_json(value: Any) -> str:
    return json.dumps(plain(value), indent=2, sort_keys=True, ensure_ascii=False)


def cell(value: Any) -> str:
    """One value as tables show it: times to the minute with their zone, intervals in d/h/m, ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        # With its time zone: the session's (TimeZone), so that nobody reads a UTC time as local.
        zone = value.strftime("%Z") or value.strftime("%z")
        return value.strftime("%Y-%m-%d %H:%M") + (f" {zone}" if zone else "")
    if isinstance(value, timedelta):
        days, seconds = value.days, value.seconds
        return f"{days}d {seconds // 3600}h" if days else f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; ``-`` for a missing value."""
    cells = [list(headers)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """``key  value`` lines, keys padded to the widest."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in pairs)
