"""The root command: where the database is, and every command group under it."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from .. import __version__
from . import audit, files, flows, schema, serve, server, tenants
from .base import Group, Target


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", metavar="DSN",
              help="PostgreSQL conninfo or URL. Default: $PYFLOWS_DSN, else $DATABASE_URL, else libpq's PG* "
                   "variables, else the embedded server if it is running, else libpq's defaults.")
@click.option("--embedded", "use_embedded", is_flag=True,
              help="Use the embedded PostgreSQL (started if needed) instead of a DSN.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PYFLOWS_DATA_DIR",
              help="Data directory of the embedded server (with --embedded, demo and embedded). "
                   "Default: the user's data directory.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr (errors are still shown).")
@click.version_option(__version__, prog_name="pyflows")
@click.pass_context
def cli(ctx: click.Context, dsn: str | None, use_embedded: bool, data_dir: Path | None, quiet: bool) -> None:
    """Manage pyflows discovery flows and the schema that keeps them."""
    if dsn and use_embedded:
        raise click.UsageError("--dsn and --embedded name two different servers; give one")
    if (ctx.get_parameter_source("data_dir") is ParameterSource.COMMANDLINE and not use_embedded
            and ctx.invoked_subcommand not in ("demo", "embedded")):
        raise click.UsageError("--data-dir names the embedded server's data directory: give --embedded with it")
    ctx.obj = Target(dsn=dsn, use_embedded=use_embedded, data_dir=data_dir, quiet=quiet)


for command in (schema.migrate, schema.rollback, schema.check, server.demo, server.embedded_group, tenants.tenants,
                flows.flows, audit.audit, files.files, serve.serve):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="pyflows")
