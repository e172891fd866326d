"""Draining the file outbox: removing the stored objects of deleted imports, after their rows are gone.

The queue logic lives here once; where objects live is a small interface (:class:`Storage`), one
backend per URI scheme. ``file://`` is built in and removes files only under the storage roots it is
given; other schemes come from installed packages through the entry-point group ``pyflows.storage``
(``s3 = my_package.storage:S3Storage``: a callable taking no arguments that returns a Storage).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from .api import DEFAULT_LEASE, Flows
from .errors import FlowNotFound
from .models import FileCleanup

__all__ = ["Storage", "LocalFiles", "OutsideStorageRoots", "Storages", "DrainReport", "drain", "ENTRY_POINT_GROUP",
           "ROOTS_ENV"]

ENTRY_POINT_GROUP = "pyflows.storage"
ROOTS_ENV = "PYFLOWS_FILES_ROOT"


class Storage(Protocol):
    """Removes stored objects. An object that is already gone is not an error: return normally."""

    def remove(self, uri: str) -> None: ...


class OutsideStorageRoots(PermissionError):
    """A file:// URI that names a file outside every configured storage root, or no root is configured."""


TENANT_FIELDS = ("{client_id}", "{engagement_id}")


class LocalFiles:
    """``file://`` URIs on this machine's filesystem, removed only under the given storage roots.

    The path is resolved first (``..`` and every symbolic link along it, the file's own included), and
    what is removed is that resolved file, only when it lies under one of the (resolved) roots. With no
    root at all, every removal is refused: pyflows never deletes a file on a tenant's say-so alone.
    A root may name the entry's tenant, ``/srv/uploads/{client_id}/{engagement_id}``: a tenant's
    entries then reach only its own folder, whatever paths its imports named.
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.roots = tuple(os.fspath(root) for root in roots)

    def _roots_for(self, client_id: uuid.UUID | None, engagement_id: uuid.UUID | None) -> list[Path]:
        found = []
        for root in self.roots:
            if any(f in root for f in TENANT_FIELDS):
                if client_id is None or engagement_id is None:
                    continue  # a tenant's folder, and no tenant to fill it in
                root = root.replace("{client_id}", str(client_id)).replace("{engagement_id}", str(engagement_id))
            found.append(Path(os.path.realpath(root)))
        return found

    def remove(self, uri: str, *, client_id: uuid.UUID | None = None, engagement_id: uuid.UUID | None = None) -> None:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URI names another host ({parts.netloc}): {uri}")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise ValueError(f"file URI without an absolute path: {uri}")
        roots = self._roots_for(client_id, engagement_id)
        if not roots:
            raise OutsideStorageRoots(
                f"no storage root is configured, so {path} is not removed: name the folders pyflows may remove "
                f"files from with --root DIR or {ROOTS_ENV}")
        resolved = Path(os.path.realpath(path))
        if not any(resolved.is_relative_to(root) for root in roots):
            raise OutsideStorageRoots(
                f"{path} resolves to {resolved}, outside every storage root ({', '.join(map(str, roots))}); "
                "it is not removed")
        if resolved.is_dir():
            raise IsADirectoryError(f"refusing to remove a directory: {resolved}")
        resolved.unlink(missing_ok=True)


class Storages(Mapping[str, Storage]):
    """Backends by URI scheme: ``file`` (a :class:`LocalFiles` for the roots) and the entry points of
    the ``pyflows.storage`` group, each loaded when an entry of its scheme first needs it. A backend
    that fails to load is reported on every entry of its scheme; the other schemes drain as usual."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]] = (), *,
                 extra: Mapping[str, Storage] | None = None) -> None:
        self._loaded: dict[str, Storage] = {"file": LocalFiles(roots), **(extra or {})}
        self._entry_points = {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def __getitem__(self, scheme: str) -> Storage:
        scheme = scheme.lower()
        if scheme not in self._loaded:
            if scheme not in self._entry_points:
                raise KeyError(scheme)
            point = self._entry_points[scheme]
            try:
                backend = point.load()()
            except Exception as exc:  # reported on each entry of this scheme, by _remove
                raise BackendUnavailable(f"the {scheme} storage backend {point.value} failed to load: "
                                         f"{type(exc).__name__}: {exc}") from exc
            self._loaded[scheme] = backend
        return self._loaded[scheme]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(set(self._loaded) | set(self._entry_points)))

    def __len__(self) -> int:
        return len(set(self._loaded) | set(self._entry_points))


class BackendUnavailable(RuntimeError):
    """A storage backend named by an entry point could not be loaded."""


@dataclass
class DrainReport:
    removed: int = 0
    failed: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (id, storage_uri, error)


def drain(flows: Flows, *, limit: int | None = None, batch: int = 100, lease: timedelta = DEFAULT_LEASE,
          roots: Iterable[str | os.PathLike[str]] = (), storages: Mapping[str, Storage] | None = None,
          on_entry: Callable[[FileCleanup, str | None], None] | None = None) -> DrainReport:
    """Claim queued objects (at most ``limit``; all when None), remove each, and record each outcome.

    ``storages`` maps URI schemes to backends; by default :class:`Storages` for ``roots`` (file://
    removal only under them) and the installed ``pyflows.storage`` entry points.
    Each claim and each outcome is its own transaction. An object is removed before its entry is
    marked done, so a drain killed in between leaves the entry queued; once its lease runs out the
    next drain claims it again, finds the object gone, and marks it done: nothing is lost or leaked.
    A failure is recorded on the entry (it is retried after the lease) and reported, never swallowed;
    one entry's failure (no backend for its scheme, a path outside the roots, a backend error) never
    stops the others. An entry that vanished before its outcome was recorded is reported as failed.
    """
    backends = Storages(roots) if storages is None else storages
    report = DrainReport()
    while limit is None or report.removed + report.failed < limit:
        size = batch if limit is None else min(batch, limit - report.removed - report.failed)
        claimed = flows.claim_file_cleanups(size, lease)
        if not claimed:
            break
        for entry in claimed:
            error = _remove(entry, backends)
            try:
                flows.finish_file_cleanup(entry.id, error)
            except FlowNotFound as exc:
                error = f"the queue entry vanished before its outcome was recorded ({exc})"
            if error is None:
                report.removed += 1
            else:
                report.failed += 1
                report.errors.append((entry.id, entry.storage_uri, error))
            if on_entry is not None:
                on_entry(entry, error)
    return report


def _remove(entry: FileCleanup, storages: Mapping[str, Storage]) -> str | None:
    """None when the object is gone now; otherwise why it could not be removed."""
    uri = entry.storage_uri
    scheme = urlsplit(uri).scheme.lower()
    try:
        storage = storages.get(scheme)
    except BackendUnavailable as exc:
        return str(exc)
    if storage is None:
        return f"no storage backend for {scheme or 'scheme-less'} URIs (have: {', '.join(sorted(storages))})"
    try:
        if isinstance(storage, LocalFiles):
            storage.remove(uri, client_id=entry.client_id, engagement_id=entry.engagement_id)
        else:
            storage.remove(uri)
    except Exception as exc:  # any backend's failure is this entry's outcome: recorded and reported
        return f"{type(exc).__name__}: {exc}"
    return None
