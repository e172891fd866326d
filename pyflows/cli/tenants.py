"""``pyflows tenants``: clients and their engagements (members of pyflows_admin, or the schema owner)."""

from __future__ import annotations

import uuid

import click

from ..render import table
from . import base
from .base import Group, Target, json_option
from .output import emit


@click.group(cls=Group)
def tenants() -> None:
    """Clients and their engagements: add them, list them (pyflows_admin or the schema owner)."""


@tenants.command(name="add-client")
@click.argument("name")
@click.option("--id", "client_id", type=click.UUID, help="The client's id (default: a new one).")
@json_option
@click.pass_obj
def add_client(target: Target, name: str, client_id: uuid.UUID | None) -> None:
    """Add a client called NAME; prints its id."""
    client = target.flows(application_name="pyflows-cli").add_client(name, client_id)
    emit(target, client, f"client {client.client_id} {client.name!r}")


@tenants.command(name="add-engagement")
@click.argument("client_id", type=click.UUID)
@click.argument("name")
@click.option("--id", "engagement_id", type=click.UUID, help="The engagement's id (default: a new one).")
@json_option
@click.pass_obj
def add_engagement(target: Target, client_id: uuid.UUID, name: str, engagement_id: uuid.UUID | None) -> None:
    """Add an engagement called NAME to client CLIENT_ID; prints its id, and the options that name the tenant."""
    engagement = target.flows(application_name="pyflows-cli").add_engagement(client_id, name, engagement_id)
    use = f"{base.invocation()} flows --client {engagement.client_id} --engagement {engagement.engagement_id} gate"
    emit(target, engagement, f"engagement {engagement.engagement_id} {engagement.name!r} of client "
                             f"{engagement.client_id}\n  use it: {use}")


@tenants.command(name="list")
@json_option
@click.pass_obj
def list_(target: Target) -> None:
    """Every client and engagement, with its flows and how many are incomplete."""
    rows = target.flows(application_name="pyflows-cli").list_tenants()
    human = "no clients" if not rows else table(
        ("client", "name", "engagement", "name", "flows", "incomplete"),
        [(r.client_id, r.client_name, r.engagement_id, r.engagement_name, r.flows, r.incomplete_flows) for r in rows])
    emit(target, rows, human)
