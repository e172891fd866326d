"""Named SQL blocks from ``queries.sql``: Python refers to a query by name, never by inline text."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

__all__ = ["query", "names"]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"queries.sql names {name!r} twice")
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        blocks[name] = "\n".join(lines).strip()
    return blocks


def names() -> list[str]:
    return sorted(_load())


def query(name: str) -> sql.SQL:
    """The named query, ready for ``cursor.execute``; KeyError for an unknown name."""
    return sql.SQL(_load()[name])
