"""``pyflows migrate``, ``rollback`` and ``check``: the schema."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import click

from .. import __version__, migrations
from ..connection import target_summary
from ..render import to_json
from .base import Exit, Target, confirm, json_option


@click.command()
@click.option("--dry-run", is_flag=True, help="Say what would be applied, and apply nothing.")
@click.option("-y", "--yes", is_flag=True,
              help="Go on when nothing names the database (libpq's defaults) without asking.")
@click.pass_obj
def migrate(target: Target, dry_run: bool, yes: bool) -> None:
    """Apply pending migrations, then the sql/ definitions (always). Says which database first."""
    dsn = target.resolve()
    target.announce()
    confirm(f"Nothing names a database: migrate {target_summary(dsn)}, libpq's default?",
            yes or not target.nothing_named, dry_run, action="migrate libpq's default one")
    result = migrations.migrate(dsn, dry_run=dry_run)
    verb = "would apply" if dry_run else "applied"
    if result.applied:
        for migration_id in result.applied:
            click.echo(f"{verb} migration {migration_id}")
    else:
        click.echo("no migration pending")
    click.echo(f"{verb} sql/ definitions: {', '.join(result.sql_files)}")


@click.command()
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
    target.announce()
    confirm(f"Roll back {what} on {target.describe()}? Data in the dropped tables is lost", yes,
            action=f"roll back {what}")
    done = migrations.rollback(dsn, to=to, all_=all_)
    if not done:
        click.echo("nothing to roll back")
    for migration_id in done:
        click.echo(f"rolled back migration {migration_id}")
    if done and not all_:
        # sql/ is not rolled back: this package's functions may call what the rollback dropped.
        left = migrations.status(dsn).applied
        click.echo(f"pyflows: the sql/ functions installed by pyflows {__version__} may use what the rolled-back "
                   f"migration(s) made, and fail until `pyflows migrate` runs: with this pyflows to apply them "
                   f"again, or with the release whose newest migration is {left[-1] if left else 'none'} to put "
                   "its own sql/ back", err=True)


@click.command()
@json_option
@click.pass_obj
def check(target: Target) -> None:
    """Exit non-zero unless the schema is fully migrated and sql/ is current. Any role that may use pyflows may
    run it."""
    dsn = target.resolve()
    target.announce()
    state = migrations.status(dsn)
    if target.json:
        click.echo(to_json({"ok": state.ok, "applied": state.applied, "pending": state.pending,
                            "sql_current": state.sql_current, "problems": state.problems,
                            "layout": state.layout,
                            "database": {"target": target_summary(dsn), "from": target.origin}}))
        if not state.ok:
            sys.exit(int(Exit.SCHEMA))
        return
    for migration_id in state.applied:
        click.echo(f"applied  {migration_id}")
    for migration_id in state.pending:
        click.echo(f"pending  {migration_id}")
    if state.layout is not None:
        click.echo(f"layout   {describe_layout(state.layout)}")
    if not state.ok:
        for problem in state.problems:
            click.echo(f"pyflows: {problem}", err=True)
        sys.exit(int(Exit.SCHEMA))
    click.echo("pyflows schema is up to date")


def describe_layout(layout: dict[str, Any]) -> str:
    """One line: "single node (PostgreSQL)", or Citus' version, workers and how the tables are laid out."""
    if layout.get("engine") != "citus":
        return "single node (PostgreSQL)"
    kinds = Counter(layout.get("tables", {}).values())
    parts = [f"{kinds.pop('distributed', 0)} tables distributed by client_id",
             f"{kinds.pop('reference', 0)} reference tables"]
    parts += [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    return f"Citus {layout.get('citus_version')}, {layout.get('workers')} workers: {', '.join(parts)}"
