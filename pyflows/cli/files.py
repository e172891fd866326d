"""``pyflows files``: the outbox of stored files whose rows were deleted."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..files import ROOTS_ENV
from ..files import drain as drain_files
from .base import Exit, Group, Target, json_option, parse_duration
from .output import emit, progress_bar


@click.group(cls=Group)
def files() -> None:
    """The outbox of stored files whose rows were deleted."""


class StorageRoot(click.ParamType):  # type: ignore[type-arg]
    """A folder that exists, or a template of one naming {client_id} and/or {engagement_id}."""

    name = "dir"
    envvar_list_splitter = os.pathsep

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(os.fspath(value))
        if not os.path.isabs(text):
            self.fail(f"{text!r} is not an absolute path", param, ctx)
        if "{client_id}" not in text and "{engagement_id}" not in text and not os.path.isdir(text):
            self.fail(f"{text!r} is not a folder", param, ctx)
        return text


@files.command(name="drain")
@click.option("--limit", type=int, help="Handle at most N entries (default: until the queue is empty).")
@click.option("--lease", default="5m", show_default=True, help="How long a claimed entry is reserved.")
@click.option("--root", "roots", multiple=True, envvar=ROOTS_ENV, type=StorageRoot(),
              help=f"A folder file:// objects may be removed from (repeatable; or {ROOTS_ENV}, separated by "
                   f"{os.pathsep!r}); {{client_id}} and {{engagement_id}} in it stand for each entry's tenant. "
                   "A file outside every root, or any file when none is given, is not removed.")
@json_option
@click.pass_obj
def files_drain(target: Target, limit: int | None, lease: str, roots: tuple[str, ...]) -> None:
    """Remove queued stored objects; a missing one counts as removed; failures stay queued (pyflows_admin).

    file:// objects are removed only under --root folders (symbolic links resolved first); other URI
    schemes go to the storage backends installed under the entry-point group pyflows.storage.
    """
    duration = parse_duration(lease, "--lease")
    with progress_bar(target, "removing files", limit) as bar:  # a count; done of --limit when given
        report = drain_files(target.flows(application_name="pyflows-files"), limit=limit, lease=duration, roots=roots,
                             on_entry=lambda _entry, _error: bar.update(1))
    human = "\n".join([f"removed {report.removed}; failed {report.failed}"]
                      + [f"  {entry_id} {uri}: {error}" for entry_id, uri, error in report.errors])
    emit(target, report, human)
    if report.failed:
        sys.exit(int(Exit.ERROR))
