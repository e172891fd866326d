"""Draining the file outbox: removing the stored objects of deleted imports, after their rows are gone.

The queue logic lives here once; where objects live is a small interface (:class:`Storage`), so an
object-store backend is one more class registered by URI scheme, with no change to the drain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from .api import DEFAULT_LEASE, Flows
from .models import FileCleanup

__all__ = ["Storage", "LocalFiles", "DrainReport", "drain", "DEFAULT_STORAGES"]


class Storage(Protocol):
    """Removes stored objects. An object that is already gone is not an error: return normally."""

    def remove(self, uri: str) -> None: ...


class LocalFiles:
    """``file://`` URIs on this machine's filesystem."""

    def remove(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI names another host ({parts.netloc}): {uri}")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise ValueError(f"file URI without an absolute path: {uri}")
        if path.is_dir():
            raise IsADirectoryError(f"refusing to remove a directory: {path}")
        path.unlink(missing_ok=True)


DEFAULT_STORAGES: Mapping[str, Storage] = {"file": LocalFiles()}


@dataclass
class DrainReport:
    removed: int = 0
    failed: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (id, storage_uri, error)


def drain(flows: Flows, *, limit: int | None = None, batch: int = 100, lease: timedelta = DEFAULT_LEASE,
          storages: Mapping[str, Storage] = DEFAULT_STORAGES,
          on_entry: Callable[[FileCleanup, str | None], None] | None = None) -> DrainReport:
    """Claim queued objects (at most ``limit``; all when None), remove each, and record each outcome.

    Each claim and each outcome is its own transaction. An object is removed before its entry is
    marked done, so a drain killed in between leaves the entry queued; once its lease runs out the
    next drain claims it again, finds the object gone, and marks it done: nothing is lost or leaked.
    A failure is recorded on the entry (it is retried after the lease) and reported, never swallowed.
    """
    report = DrainReport()
    while limit is None or report.removed + report.failed < limit:
        size = batch if limit is None else min(batch, limit - report.removed - report.failed)
        claimed = flows.claim_file_cleanups(size, lease)
        if not claimed:
            break
        for entry in claimed:
            error = _remove(entry.storage_uri, storages)
            flows.finish_file_cleanup(entry.id, error)
            if error is None:
                report.removed += 1
            else:
                report.failed += 1
                report.errors.append((entry.id, entry.storage_uri, error))
            if on_entry is not None:
                on_entry(entry, error)
    return report


def _remove(uri: str, storages: Mapping[str, Storage]) -> str | None:
    """None when the object is gone now; otherwise why it could not be removed."""
    scheme = urlsplit(uri).scheme.lower()
    storage = storages.get(scheme)
    if storage is None:
        return f"no storage backend for {scheme or 'scheme-less'} URIs (have: {', '.join(sorted(storages))})"
    try:
        storage.remove(uri)
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
