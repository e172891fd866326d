"""Locating the SQL that ships with pyflows: ``migrations/`` and ``sql/``.

In a wheel they sit inside the package (hatchling force-include); in a checkout or an editable
install they are the top-level folders beside the package.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["migrations_dir", "sql_dir", "sql_files"]

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"pyflows ships a {name}/ folder, but it is in neither {_PACKAGE} nor {_PACKAGE.parent}")


def migrations_dir() -> Path:
    return _find("migrations")


def sql_dir() -> Path:
    return _find("sql")


def sql_files() -> list[Path]:
    """The repeatable definitions, in the order they are applied (file name order)."""
    return sorted(sql_dir().glob("*.sql"))
