"""``pyflows demo`` and ``pyflows embedded``: the embedded PostgreSQL and the demo on it."""

from __future__ import annotations

import os

import click

from .. import demo as demo_mod
from .. import embedded, migrations
from ..connection import resolve_dsn
from ..render import table
from . import base
from .base import Group, Target


@click.command()
@click.option("--reset", is_flag=True, help="Remove the two demo tenants first (audited), then seed them anew.")
@click.pass_obj
def demo(target: Target, reset: bool) -> None:
    """Migrate and seed two demo tenants; with no DSN, on the embedded PostgreSQL. Seeding again leaves them as
    they are; --reset writes them anew."""
    if not target.use_embedded and not resolve_dsn(target.dsn):
        target.use_embedded = True
        target.embedded_because = "no DSN given: the demo's default"
    dsn = target.resolve()
    target.announce()
    if target.use_embedded:
        data_dir = target.data_dir or embedded.default_data_dir()
        stop = f"{base.invocation()} embedded stop"
        click.echo(f"Embedded PostgreSQL in {data_dir} (left running; stop it with `{stop}`)")
    result = migrations.migrate(dsn)
    click.echo(f"Migrated: {len(result.applied)} migration(s) applied, sql/ definitions applied.")
    if reset:
        demo_mod.reset(dsn)
        click.echo("Removed the demo tenants (audited), to seed them anew.")
    demo_mod.seed(dsn)
    for tenant in demo_mod.describe(dsn):
        click.echo("")
        click.echo(f"{tenant.client_name} / {tenant.engagement_name}")
        click.echo(f"  client {tenant.client_id}  engagement {tenant.engagement_id}")
        rendered = table(
            ("flow", "name", "status", "phase", "progress", "imports", "records", "mappings", "assets",
             "dependencies"),
            [(f.id, f.name, f.status, f.current_phase, f"{f.progress_percentage}%", f.imports, f.raw_records,
              f.mappings, f.assets, f.dependencies) for f in tenant.flows])
        click.echo("\n".join("  " + line for line in rendered.splitlines()))
    first_client, first_engagement = demo_mod.DEMO_TENANTS[0]
    click.echo("")
    # Found again without being named: the default data directory, or the one PYFLOWS_DATA_DIR names.
    if target.use_embedded and (target.data_dir is None or str(target.data_dir) == os.environ.get("PYFLOWS_DATA_DIR")):
        click.echo("The other commands find this server while it runs and nothing else names a database;")
        click.echo("to name it anyway (another shell, psql, an application):")
    else:
        click.echo("Use this database with the other commands:")
    click.echo(f"  export PYFLOWS_DSN='{dsn}'")
    run = base.invocation()
    click.echo(f"  {run} check")
    click.echo(f"  {run} flows --client {first_client} --engagement {first_engagement} gate")
    click.echo("  # as pyflows_app under Acme's context, row-level security shows Acme's flows only:")
    click.echo(f"  {demo_mod.psql_example()}")


@click.group(name="embedded", cls=Group)
def embedded_group() -> None:
    """The embedded PostgreSQL (from the pgserver wheel)."""


@embedded_group.command(name="start")
@click.pass_obj
def embedded_start(target: Target) -> None:
    """Start the embedded server (or find it running) and print its DSN; stderr says which."""
    server = embedded.running(target.data_dir)
    if server is None:
        server = embedded.start(target.data_dir)
        click.echo(f"pyflows: started the embedded PostgreSQL in {server.data_dir}", err=True)
    else:
        click.echo(f"pyflows: the embedded PostgreSQL in {server.data_dir} is already running", err=True)
    click.echo(server.dsn())


@embedded_group.command(name="stop")
@click.pass_obj
def embedded_stop(target: Target) -> None:
    """Stop the embedded server."""
    data_dir = target.data_dir or embedded.default_data_dir()
    if embedded.stop(target.data_dir):
        click.echo(f"stopped the embedded PostgreSQL in {data_dir}")
    else:
        click.echo(f"no embedded PostgreSQL is running in {data_dir}")
