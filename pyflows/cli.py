"""The ``pyflows`` command line: a thin shell over the library (no SQL here).

Every failure is one line on stderr (``pyflows: ...``) and a documented exit code (docs/cli.md),
never a traceback.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg

from . import __version__, embedded, migrations
from . import demo as demo_mod
from .connection import describe_dsn, resolve_dsn
from .errors import ConnectionFailed, MigrationError, PyflowsError, SchemaMissing, describe, from_psycopg


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # a database or migration error
    USAGE = 2  # bad options, or a destructive command refused without --yes
    CONNECTION = 3  # server unreachable, login refused, no such database, bad DSN
    SCHEMA = 4  # schema missing or not up to date


@dataclass
class Target:
    """Where the command's database is: --dsn / environment / libpq, or the embedded server."""

    dsn: str | None
    use_embedded: bool
    data_dir: Path | None
    _resolved: str | None = None

    def resolve(self) -> str:
        if self._resolved is None:
            if self.use_embedded:
                self._resolved = embedded.start(self.data_dir).dsn()
            else:
                self._resolved = resolve_dsn(self.dsn)
        return self._resolved


def _fail(message: str, code: Exit) -> NoReturn:
    click.echo(f"pyflows: {message}", err=True)
    sys.exit(int(code))


class _Group(click.Group):
    """Maps every pyflows and database error to one stderr line and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConnectionFailed as exc:
            _fail(str(exc), Exit.CONNECTION)
        except SchemaMissing as exc:
            _fail(str(exc), Exit.SCHEMA)
        except embedded.EmbeddedUnavailable as exc:
            _fail(str(exc), Exit.CONNECTION)
        except PyflowsError as exc:
            _fail(str(exc), Exit.ERROR)
        except psycopg.Error as exc:
            mapped = from_psycopg(exc)
            if isinstance(mapped, SchemaMissing):
                _fail(str(mapped), Exit.SCHEMA)
            if mapped is not None:
                _fail(str(mapped), Exit.ERROR)
            _fail(f"database error: {describe(exc)}", Exit.ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            # A bug, not a user error: still one line, with the way to the full traceback.
            if os.environ.get("PYFLOWS_DEBUG"):
                raise
            _fail(f"internal error {type(exc).__name__}: {describe(exc)} "
                  "(set PYFLOWS_DEBUG=1 for the traceback)", Exit.ERROR)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # declaration order, not alphabetical


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", metavar="DSN",
              help="PostgreSQL conninfo or URL. Default: $PYFLOWS_DSN, else $DATABASE_URL, else libpq's PG* variables.")
@click.option("--embedded", "use_embedded", is_flag=True,
              help="Use the embedded PostgreSQL (started if needed) instead of a DSN.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PYFLOWS_DATA_DIR",
              help="Data directory of the embedded server. Default: the user's data directory.")
@click.version_option(__version__, prog_name="pyflows")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, use_embedded: bool, data_dir: Path | None) -> None:
    """Manage pyflows discovery flows and the schema that keeps them."""
    if dsn and use_embedded:
        raise click.UsageError("--dsn and --embedded name two different servers; give one")
    ctx.obj = Target(dsn=dsn, use_embedded=use_embedded, data_dir=data_dir)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Say what would be applied, and apply nothing.")
@click.pass_obj
def migrate(target: Target, dry_run: bool) -> None:
    """Apply pending migrations, then the sql/ definitions (always)."""
    result = migrations.migrate(target.resolve(), dry_run=dry_run)
    verb = "would apply" if dry_run else "applied"
    if result.applied:
        for migration_id in result.applied:
            click.echo(f"{verb} migration {migration_id}")
    else:
        click.echo("no migration pending")
    click.echo(f"{verb} sql/ definitions: {', '.join(result.sql_files)}")


@cli.command()
@click.option("--to", "to", metavar="ID", help="Roll back every migration applied after ID (ID stays).")
@click.option("--all", "all_", is_flag=True, help="Roll back every migration: drops the pyflows schemas.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def rollback(target: Target, to: str | None, all_: bool, yes: bool) -> None:
    """Roll back the newest migration (or --to ID, or --all). Destroys the data those migrations hold."""
    if to and all_:
        raise click.UsageError("--to and --all contradict each other; give one")
    what = "every pyflows migration" if all_ else (f"every migration after {to}" if to else "the newest migration")
    dsn = target.resolve()
    if not yes:
        if not sys.stdin.isatty():
            _fail(f"refusing to roll back {what} without --yes (no terminal to ask)", Exit.USAGE)
        click.confirm(f"Roll back {what} on {describe_dsn(dsn)}? Data in the dropped tables is lost",
                      abort=True)
    done = migrations.rollback(dsn, to=to, all_=all_)
    if not done:
        click.echo("nothing to roll back")
    for migration_id in done:
        click.echo(f"rolled back migration {migration_id}")


@cli.command()
@click.pass_obj
def check(target: Target) -> None:
    """Exit non-zero unless the schema is fully migrated and sql/ is current."""
    state = migrations.status(target.resolve())
    for migration_id in state.applied:
        click.echo(f"applied  {migration_id}")
    for migration_id in state.pending:
        click.echo(f"pending  {migration_id}")
    if not state.ok:
        for problem in state.problems:
            click.echo(f"pyflows: {problem}", err=True)
        sys.exit(int(Exit.SCHEMA))
    click.echo("pyflows schema is up to date")


@cli.command()
@click.pass_obj
def demo(target: Target) -> None:
    """Migrate and seed two demo tenants; with no DSN, on the embedded PostgreSQL."""
    if not target.use_embedded and not resolve_dsn(target.dsn):
        target.use_embedded = True
    dsn = target.resolve()
    if target.use_embedded:
        data_dir = target.data_dir or embedded.default_data_dir()
        click.echo(f"Embedded PostgreSQL in {data_dir} (left running; stop it with `pyflows embedded stop`)")
    result = migrations.migrate(dsn)
    click.echo(f"Migrated: {len(result.applied)} migration(s) applied, sql/ definitions applied.")
    demo_mod.seed(dsn)
    for tenant in demo_mod.describe(dsn):
        click.echo("")
        click.echo(f"{tenant.client_name} / {tenant.engagement_name}")
        click.echo(f"  client {tenant.client_id}  engagement {tenant.engagement_id}")
        header = ("flow", "name", "status", "phase", "progress", "imports", "records", "mappings",
                  "assets", "dependencies")
        rows = [header] + [
            (str(f.id), f.name, f.status, f.current_phase or "-", f"{f.progress_percentage}%", str(f.imports),
             str(f.raw_records), str(f.mappings), str(f.assets), str(f.dependencies))
            for f in tenant.flows
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            click.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    click.echo("")
    click.echo("Use this database with the other commands:")
    click.echo(f"  export PYFLOWS_DSN='{dsn}'")
    click.echo("  pyflows check")
    click.echo("  # as pyflows_app under Acme's context, row-level security shows Acme's flows only:")
    click.echo(f"  {demo_mod.psql_example()}")


@cli.group(name="embedded", cls=_Group)
def embedded_group() -> None:
    """The embedded PostgreSQL (from the pgserver wheel)."""


@embedded_group.command(name="start")
@click.pass_obj
def embedded_start(target: Target) -> None:
    """Start the embedded server (or find it running) and print its DSN."""
    click.echo(embedded.start(target.data_dir).dsn())


@embedded_group.command(name="stop")
@click.pass_obj
def embedded_stop(target: Target) -> None:
    """Stop the embedded server."""
    data_dir = target.data_dir or embedded.default_data_dir()
    if embedded.stop(target.data_dir):
        click.echo(f"stopped the embedded PostgreSQL in {data_dir}")
    else:
        click.echo(f"no embedded PostgreSQL is running in {data_dir}")


def main() -> None:
    cli(prog_name="pyflows")


__all__ = ["cli", "main", "Exit", "MigrationError"]
