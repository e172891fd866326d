"""What a team would write instead of delete_flow, measured beside it on the same flow.

Each variant deletes one flow of the delete suite's shape in a rolled-back transaction, interleaved:

- ``unaudited cascade``: ``DELETE`` of the flow row with every user trigger off (the baseline);
- ``leaf-first DELETEs``: what a cleanup service writes by hand, children before parents, one
  statement per table, triggers off (unaudited, not restorable);
- ``ORM, cascade="all, delete-orphan"``: a SQLAlchemy model of the same tables with the default lazy
  loading, ``session.delete(flow)``: the ORM loads every collection and deletes row by row (triggers
  off, as the ORM's own application would have none);
- ``ORM, no edge collections``: the same without the assets' edge collections (the database's cascade
  removes the edges that touch them);
- ``ORM, passive_deletes=True``: the ORM leaves the children to the database's cascade;
- ``delete_flow``: pyflows, audited and restorable.

Needs SQLAlchemy (the ``bench`` extra).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from sqlalchemy import BigInteger, ForeignKeyConstraint, MetaData, Uuid, and_, create_engine, event, inspect
from sqlalchemy.orm import Mapped, Session, mapped_column, registry, relationship

from .common import TABLES, Conn, build_flow, disable_triggers, interleaved, set_context, table, tenant
from .delete import ratios, total_rows

LEAF_FIRST = (
    "delete from pyflows.asset_dependencies where client_id = %(c)s and engagement_id = %(e)s and "
    "(flow_id = %(f)s or source_asset_id in (select id from pyflows.assets where flow_id = %(f)s) "
    "or target_asset_id in (select id from pyflows.assets where flow_id = %(f)s))",
    "delete from pyflows.assets where client_id = %(c)s and engagement_id = %(e)s and flow_id = %(f)s",
    "delete from pyflows.raw_import_records where client_id = %(c)s and engagement_id = %(e)s and import_id in "
    "(select id from pyflows.data_imports where flow_id = %(f)s)",
    "delete from pyflows.import_field_mappings where client_id = %(c)s and engagement_id = %(e)s and import_id in "
    "(select id from pyflows.data_imports where flow_id = %(f)s)",
    "delete from pyflows.data_imports where client_id = %(c)s and engagement_id = %(e)s and flow_id = %(f)s",
    "delete from pyflows.discovery_flows where client_id = %(c)s and engagement_id = %(e)s and id = %(f)s",
)


def orm(edge_collections: bool, passive: bool) -> Any:
    """The ORM model a FastAPI/SQLAlchemy backend would declare for the flow tables (keys only)."""
    reg = registry(metadata=MetaData(schema="pyflows"))
    cascade = {"cascade": "all, delete-orphan", "passive_deletes": passive}

    def tenant_key(kind: Any = Uuid) -> tuple[Mapped[uuid.UUID], Mapped[uuid.UUID], Mapped[Any]]:
        return (mapped_column(Uuid, primary_key=True), mapped_column(Uuid, primary_key=True),
                mapped_column(kind, primary_key=True))

    @reg.mapped
    class Flow:
        __tablename__ = "discovery_flows"
        client_id, engagement_id, id = tenant_key()

    @reg.mapped
    class Import:
        __tablename__ = "data_imports"
        client_id, engagement_id, id = tenant_key()
        flow_id: Mapped[uuid.UUID] = mapped_column(Uuid)
        __table_args__ = (ForeignKeyConstraint(["client_id", "engagement_id", "flow_id"],
                                               ["discovery_flows.client_id", "discovery_flows.engagement_id",
                                                "discovery_flows.id"]),)

    def child(name: str, parent: str, column: str) -> Any:
        return type(name.title().replace("_", ""), (), {
            "__tablename__": name, "__annotations__": {},
            "client_id": mapped_column(Uuid, primary_key=True), "engagement_id": mapped_column(Uuid, primary_key=True),
            "id": mapped_column(BigInteger, primary_key=True), column: mapped_column(Uuid),
            "__table_args__": (ForeignKeyConstraint(
                ["client_id", "engagement_id", column],
                [f"{parent}.client_id", f"{parent}.engagement_id", f"{parent}.id"]),)})

    Record = reg.mapped(child("raw_import_records", "data_imports", "import_id"))
    Mapping = reg.mapped(child("import_field_mappings", "data_imports", "import_id"))
    Asset = reg.mapped(child("assets", "discovery_flows", "flow_id"))

    @reg.mapped
    class Edge:
        __tablename__ = "asset_dependencies"
        # Edges go both with their flow and with their assets: whichever delete comes second finds some
        # already gone through the database's cascade, which the ORM would otherwise warn about.
        __mapper_args__ = {"confirm_deleted_rows": False}
        client_id, engagement_id, id = tenant_key(BigInteger)
        flow_id: Mapped[uuid.UUID] = mapped_column(Uuid)
        source_asset_id: Mapped[int] = mapped_column(BigInteger)
        target_asset_id: Mapped[int] = mapped_column(BigInteger)
        __table_args__ = (
            ForeignKeyConstraint(["client_id", "engagement_id", "flow_id"],
                                 ["discovery_flows.client_id", "discovery_flows.engagement_id", "discovery_flows.id"]),
            ForeignKeyConstraint(["client_id", "engagement_id", "source_asset_id"],
                                 ["assets.client_id", "assets.engagement_id", "assets.id"]),
            ForeignKeyConstraint(["client_id", "engagement_id", "target_asset_id"],
                                 ["assets.client_id", "assets.engagement_id", "assets.id"]))

    # Added to the mappers (classes mapped with registry.mapped take no attributes set afterwards).
    inspect(Flow).add_property("imports", relationship(Import, **cascade))
    inspect(Flow).add_property("assets", relationship(Asset, **cascade))
    inspect(Flow).add_property("edges", relationship(
        Edge, foreign_keys=[Edge.client_id, Edge.engagement_id, Edge.flow_id], overlaps="outgoing,incoming",
        **cascade))
    inspect(Import).add_property("records", relationship(Record, **cascade))
    inspect(Import).add_property("mappings", relationship(Mapping, **cascade))
    if edge_collections:
        for name, column in (("outgoing", Edge.source_asset_id), ("incoming", Edge.target_asset_id)):
            inspect(Asset).add_property(name, relationship(
                Edge, primaryjoin=and_(Asset.client_id == Edge.client_id, Asset.engagement_id == Edge.engagement_id,
                                       Asset.id == column),
                foreign_keys=[Edge.client_id, Edge.engagement_id, column],
                overlaps="edges,outgoing,incoming", **cascade))
    reg.configure()
    return Flow


def run(conn: Conn, dsn: str, assets: int, runs: int) -> dict[str, Any]:
    client, engagement = tenant(0xF), tenant(0xF1)
    flow = build_flow(conn, client, engagement, assets)
    rows = total_rows(conn, client, engagement, flow)
    key = {"c": client, "e": engagement, "f": flow}
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    models = {"ORM, cascade=\"all, delete-orphan\"": orm(True, False), "ORM, no edge collections": orm(False, False),
              "ORM, passive_deletes=True": orm(False, True)}

    def unaudited(c: Conn) -> None:
        disable_triggers(c)
        c.execute("delete from pyflows.discovery_flows where id = %(f)s", key)

    def leaf_first(c: Conn) -> None:
        disable_triggers(c)
        for statement in LEAF_FIRST:
            c.execute(statement, key)

    sent: dict[str, int] = {}
    counter = {"n": 0}
    event.listen(engine, "before_cursor_execute", lambda *_: counter.__setitem__("n", counter["n"] + 1))

    def with_orm(variant: str, model: Any) -> Any:
        def delete(c: Conn) -> None:  # its own connection and transaction, rolled back; c stays idle
            with Session(engine) as session:
                for name in TABLES:
                    session.connection().exec_driver_sql(f"alter table pyflows.{name} disable trigger user")
                counter["n"] = 0
                session.delete(session.get(model, (client, engagement, flow)))
                session.flush()
                sent[variant] = counter["n"]  # the statements the ORM sent to delete the flow
                left = session.connection().exec_driver_sql(
                    "select (select count(*) from pyflows.assets where flow_id = %(f)s) "
                    "+ (select count(*) from pyflows.data_imports where flow_id = %(f)s)", key).scalar()
                if left:
                    raise AssertionError(f"the ORM left {left} rows of the flow")
                session.rollback()
        return delete

    def audited(c: Conn) -> None:
        set_context(c, client, engagement)
        c.execute("select pyflows.delete_flow(%(f)s, 'bench')", key)

    variants = {"unaudited cascade": unaudited, "leaf-first DELETEs": leaf_first,
                **{name: with_orm(name, model) for name, model in models.items()}, "delete_flow": audited}
    results = ratios(interleaved(conn, variants, runs), base="unaudited cascade")
    engine.dispose()
    statements = {"unaudited cascade": 1, "leaf-first DELETEs": len(LEAF_FIRST), **sent, "delete_flow": 1}
    return {"assets": assets, "rows": rows, "runs": runs, "results": results, "statements": statements}


def markdown(report: dict[str, Any]) -> list[str]:
    return [f"### Deleting one flow the ways a team would: {report['assets']:,} assets, {report['rows']:,} rows", "",
            f"{report['runs']} run(s), interleaved; each in a rolled-back transaction on the same rows.", "",
            *table(["variant", "statements sent", "median s", "/ unaudited cascade", "audited and restorable"],
                   [[name, f"{report['statements'][name]:,}", f"{r['median']:.3f}", f"{r['ratio']:.2f}×",
                     "yes" if name == "delete_flow" else "no"] for name, r in report["results"].items()])]
