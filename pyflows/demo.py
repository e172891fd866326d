"""``pyflows demo``: seed two demo tenants with flows in several phases, and describe them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources

from psycopg.rows import class_row

from .connection import connect
from .queries import query

__all__ = ["DEMO_TENANTS", "DemoFlow", "DemoTenant", "seed", "reset", "describe", "psql_example", "example_sql"]

# The same ids are written by demo.sql.
DEMO_TENANTS: tuple[tuple[uuid.UUID, uuid.UUID], ...] = (
    (uuid.UUID("0d1e5c1e-0000-4000-8000-00000000000a"), uuid.UUID("0d1e5c1e-0000-4000-8000-0000000000a1")),
    (uuid.UUID("0d1e5c1e-0000-4000-8000-00000000000b"), uuid.UUID("0d1e5c1e-0000-4000-8000-0000000000b1")),
)


@dataclass(frozen=True)
class DemoFlow:
    id: uuid.UUID
    name: str
    status: str
    current_phase: str | None
    progress_percentage: Decimal
    imports: int
    raw_records: int
    mappings: int
    assets: int
    dependencies: int


@dataclass(frozen=True)
class DemoTenant:
    client_id: uuid.UUID
    engagement_id: uuid.UUID
    client_name: str
    engagement_name: str
    flows: list[DemoFlow]


def example_sql() -> str:
    """SQL that reads the first demo tenant's flows as an application would: as pyflows_app, under a context.

    ``set local role`` matters: the demo DSN logs in as a superuser, whom row-level security ignores.
    """
    client_id, engagement_id = DEMO_TENANTS[0]
    return (f"begin; set local role pyflows_app; select pyflows.set_context('{client_id}', '{engagement_id}', "
            "'you'); select name, status, progress_percentage from pyflows.discovery_flows; commit;")


def psql_example() -> str:
    return f'psql "$PYFLOWS_DSN" -c "{example_sql()}"'


def seed(dsn: str) -> None:
    """Write the demo tenants and flows unless they are there already (one transaction)."""
    script = resources.files(__package__).joinpath("demo.sql").read_text(encoding="utf-8")
    with connect(dsn, application_name="pyflows-demo") as conn:
        conn.execute(script.encode())


RESET_LOCK_TIMEOUT = "10s"  # a session using the demo holds rows: wait this long, then fail (nothing removed)


def reset(dsn: str) -> None:
    """Remove the demo tenants and everything they hold (as any delete: archived, audited as sql.delete),
    so that :func:`seed` writes them anew. Other tenants are not touched."""
    with connect(dsn, application_name="pyflows-demo") as conn:
        for client_id, engagement_id in DEMO_TENANTS:
            with conn.transaction():
                params = {"client_id": client_id, "engagement_id": engagement_id, "lock_timeout": RESET_LOCK_TIMEOUT}
                conn.execute(query("demo_bind"), params)
                conn.execute(query("demo_remove"), params)


def describe(dsn: str) -> list[DemoTenant]:
    """The demo tenants and their flows, each read under its own tenant context."""
    tenants: list[DemoTenant] = []
    with connect(dsn, application_name="pyflows-demo") as conn:
        for client_id, engagement_id in DEMO_TENANTS:
            with conn.transaction():
                params = {"client_id": client_id, "engagement_id": engagement_id, "actor": "pyflows-demo"}
                conn.execute(query("set_context"), params)
                names = conn.execute(query("tenant_names"), params).fetchone()
                assert names is not None
                with conn.cursor(row_factory=class_row(DemoFlow)) as cur:
                    flows = cur.execute(query("demo_flow_summary")).fetchall()
            tenants.append(DemoTenant(client_id, engagement_id, str(names[0]), str(names[1]), flows))
    return tenants
