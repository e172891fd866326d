"""Migrations: up, all the way down, up again; idempotence; rollbacks; failures leave nothing behind."""

from __future__ import annotations

import re
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from yoyo.migrations import read_sql_migration

from pyflows import migrations
from pyflows.errors import MigrationError
from pyflows.models import Tenant
from pyflows.resources import migrations_dir, sql_files

from .helpers import schema_snapshot, write_flow_tree

MIGRATION_IDS = sorted(p.stem for p in migrations_dir().glob("*.sql") if not p.stem.endswith(".rollback"))


def _snapshot(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        return schema_snapshot(conn)


def _schemas(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("select nspname from pg_namespace where nspname like 'pyflows%'").fetchall()
    return {r[0] for r in rows}


def test_migration_files_are_numbered_and_each_has_a_rollback() -> None:
    names = sorted(p.name for p in migrations_dir().glob("*.sql"))
    forward = [n for n in names if not n.endswith(".rollback.sql")]
    assert forward, "no migrations found"
    for name in forward:
        assert re.fullmatch(r"\d{4}_[a-z0-9_]+\.sql", name), name
        rollback = name.replace(".sql", ".rollback.sql")
        assert rollback in names, f"{name} has no {rollback}: yoyo would roll it back as a silent no-op"
    numbers = [int(n[:4]) for n in forward]
    assert numbers == list(range(1, len(forward) + 1)), "migration numbers must be consecutive from 0001"


def test_migrations_never_select() -> None:
    # yoyo prints the rows of any SELECT in a migration to stdout; split statements as yoyo does.
    for path in migrations_dir().glob("*.sql"):
        _, _, statements = read_sql_migration(str(path))
        assert statements, path.name
        for statement in statements:
            code = re.sub(r"--[^\n]*", "", statement).strip().lower()
            assert not code.startswith(("select", "with", "table", "values")), f"{path.name}: {code[:60]}"


@pytest.mark.smoke
def test_up_down_up_gives_the_same_schema(blank_dsn: str) -> None:
    first = migrations.migrate(blank_dsn)
    assert first.applied == MIGRATION_IDS
    assert first.sql_files == [p.name for p in sql_files()]
    assert migrations.status(blank_dsn).ok
    migrated = _snapshot(blank_dsn)

    rolled_back = migrations.rollback(blank_dsn, all_=True)
    assert rolled_back == list(reversed(MIGRATION_IDS))
    assert _schemas(blank_dsn) == set()
    state = migrations.status(blank_dsn)
    assert state.pending == MIGRATION_IDS and not state.ok

    again = migrations.migrate(blank_dsn)
    assert again.applied == MIGRATION_IDS
    assert _snapshot(blank_dsn) == migrated


def test_each_migration_rolls_back_alone_and_reapplies(blank_dsn: str) -> None:
    migrations.migrate(blank_dsn)
    full = _snapshot(blank_dsn)
    for expected in reversed(MIGRATION_IDS):
        assert migrations.rollback(blank_dsn) == [expected]
        assert migrations.status(blank_dsn).pending[0] == expected
    assert migrations.rollback(blank_dsn) == []  # nothing left
    migrations.migrate(blank_dsn)
    assert _snapshot(blank_dsn) == full


def test_rollback_to_keeps_the_named_migration(blank_dsn: str) -> None:
    migrations.migrate(blank_dsn)
    done = migrations.rollback(blank_dsn, to=MIGRATION_IDS[0])
    assert done == list(reversed(MIGRATION_IDS[1:]))
    assert migrations.status(blank_dsn).applied == MIGRATION_IDS[:1]
    assert _schemas(blank_dsn) == {"pyflows", "pyflows_audit"}


def test_rollback_to_an_unknown_id_is_refused(blank_dsn: str) -> None:
    migrations.migrate(blank_dsn)
    with pytest.raises(MigrationError, match="no migration 'nope'"):
        migrations.rollback(blank_dsn, to="nope")
    assert migrations.status(blank_dsn).ok


def test_migrate_twice_is_a_no_op(blank_dsn: str) -> None:
    migrations.migrate(blank_dsn)
    before = _snapshot(blank_dsn)
    second = migrations.migrate(blank_dsn)
    assert second.applied == []
    assert _snapshot(blank_dsn) == before


def test_sql_definitions_apply_twice_without_duplicates(pyflows_dsn: str) -> None:
    before = _snapshot(pyflows_dsn)
    migrations.apply_sql(pyflows_dsn)
    migrations.apply_sql(pyflows_dsn)
    assert _snapshot(pyflows_dsn) == before


def test_dry_run_applies_nothing(blank_dsn: str) -> None:
    result = migrations.migrate(blank_dsn, dry_run=True)
    assert result.dry_run and result.applied == MIGRATION_IDS
    assert _schemas(blank_dsn) == set()


def test_a_failing_migration_leaves_nothing_half_written(blank_dsn: str) -> None:
    with psycopg.connect(blank_dsn, autocommit=True) as conn:
        conn.execute("create schema pyflows_audit")  # 0001 creates it and will collide
    with pytest.raises(MigrationError, match=r"0001_schemas_and_roles failed: .*pyflows_audit"):
        migrations.migrate(blank_dsn)
    assert _schemas(blank_dsn) == {"pyflows_audit"}  # 0001's own `create schema pyflows` rolled back
    assert migrations.status(blank_dsn).applied == []


@pytest.mark.parametrize(("old", "new", "message"), [
    ("a passage it does not hold", "x", "holds the passage to replace 0 times"),
    ("v_client", "x", r"holds the passage to replace \d+ times"),  # more than once
    ("", "x", "nothing to replace"),
    (None, "x", "nothing to replace"),
    ("v_function text", None, "nothing to replace"),
])
def test_replacing_a_passage_that_is_not_there_exactly_once_is_refused_and_changes_nothing(
        owner: psycopg.Connection[Any], old: str | None, new: str | None, message: str) -> None:
    """Migration 0020 changes the trigger generator through _replace_in_function: a passage found
    never or more than once (or none given) is PF422, and the function keeps its definition."""
    generator = "pyflows_audit._create_delete_trigger(text)"
    before = owner.execute("select pg_get_functiondef(%s::regprocedure)", (generator,)).fetchone()
    with pytest.raises(psycopg.Error, match=message) as caught, owner.transaction():
        owner.execute("select pyflows_audit._replace_in_function(%s, %s, %s)", (generator, old, new))
    assert caught.value.sqlstate == "PF422"
    assert owner.execute("select pg_get_functiondef(%s::regprocedure)", (generator,)).fetchone() == before


def test_replacing_a_passage_found_once_makes_the_function_again(owner: psycopg.Connection[Any]) -> None:
    with owner.transaction(force_rollback=True):
        owner.execute("create function pyflows_audit._scratch() returns text language sql "
                      "set search_path = pg_catalog, pyflows_audit, pg_temp as $$ select 'before' $$")
        owner.execute("select pyflows_audit._replace_in_function('pyflows_audit._scratch()', %s, %s)",
                      ("'before'", "'after'"))
        assert owner.execute("select pyflows_audit._scratch()").fetchone() == ("after",)


def test_a_migration_waits_for_a_busy_table_only_as_long_as_lock_timeout(
        blank_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations.migrate(blank_dsn)
    # 0013 and every migration after it are pending again: 0013 alters a table, and fails first.
    newest = "0013_check_for_every_role"
    pending = MIGRATION_IDS[MIGRATION_IDS.index(newest):]
    migrations.rollback(blank_dsn, to=MIGRATION_IDS[MIGRATION_IDS.index(newest) - 1])
    with psycopg.connect(blank_dsn) as reader:
        # A long-running writer holds every table of both schemas (ROW EXCLUSIVE): the pending migration
        # changes one of them and needs a lock that conflicts.
        tables = [r[0] for r in reader.execute(
            "select oid::regclass::text from pg_class where relkind = 'r' "
            "and relnamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)").fetchall()]
        reader.execute(f"lock table {', '.join(tables)} in row exclusive mode")
        monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=200ms")
        with pytest.raises(MigrationError, match=rf"{newest} failed: .*lock timeout"):
            migrations.migrate(blank_dsn)
        assert migrations.status(blank_dsn).pending == pending
    monkeypatch.delenv("PGOPTIONS")
    assert migrations.migrate(blank_dsn).applied == pending


def test_the_runner_bounds_lock_waits_unless_the_session_chose(blank_dsn: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    backend = migrations._Backend(migrations._Target(blank_dsn), migrations.MIGRATION_TABLE)
    assert backend.connection.execute("show lock_timeout").fetchone() == (migrations.MIGRATION_LOCK_TIMEOUT,)
    backend.connection.close()
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=42s")
    backend = migrations._Backend(migrations._Target(blank_dsn), migrations.MIGRATION_TABLE)
    assert backend.connection.execute("show lock_timeout").fetchone() == ("42s",)
    backend.connection.close()


def test_check_reports_stale_sql_definitions(pyflows_dsn: str) -> None:
    assert migrations.status(pyflows_dsn).ok
    with psycopg.connect(pyflows_dsn, autocommit=True) as conn:
        conn.execute("update pyflows.installed_sql set digest = 'older'")
    state = migrations.status(pyflows_dsn)
    assert not state.ok and not state.sql_current
    assert any("sql/ definitions differ" in p for p in state.problems)
    migrations.migrate(pyflows_dsn)
    assert migrations.status(pyflows_dsn).ok


def test_rollback_keeps_the_cluster_roles(blank_dsn: str) -> None:
    migrations.migrate(blank_dsn)
    migrations.rollback(blank_dsn, all_=True)
    with psycopg.connect(blank_dsn) as conn:
        roles = {r[0] for r in conn.execute(
            "select rolname from pg_roles where rolname in ('pyflows_app', 'pyflows_admin')")}
    assert roles == {"pyflows_app", "pyflows_admin"}


def test_check_reports_migrations_from_a_newer_pyflows(pyflows_dsn: str) -> None:
    with psycopg.connect(pyflows_dsn, autocommit=True) as conn:
        conn.execute("insert into _yoyo_migration (migration_hash, migration_id, applied_at_utc) "
                     "values ('f00', '0999_from_the_future', now())")
    state = migrations.status(pyflows_dsn)
    assert not state.ok
    assert any("0999_from_the_future" in p and "upgrade pyflows" in p for p in state.problems)


def test_concurrent_migrations_apply_once(blank_dsn: str) -> None:
    results: list[migrations.MigrateResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrations.migrate(blank_dsn))
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sorted(len(r.applied) for r in results) == [0, 0, len(MIGRATION_IDS)]
    assert migrations.status(blank_dsn).ok


ARCHIVE = ("clients", "engagements", "discovery_flows", "data_imports", "raw_import_records", "import_field_mappings",
           "assets", "asset_dependencies")


def _archive(dsn: str) -> dict[str, list[str]]:
    """Every archived row, as text, by archive relation (table before 0009, view after)."""
    with psycopg.connect(dsn) as conn:
        return {name: [r[0] for r in conn.execute(sql.SQL("select t::text from {} as t order by 1").format(
            sql.Identifier("pyflows_audit", name)))] for name in ARCHIVE}


def test_the_archive_keeps_every_row_through_0009_and_its_rollback(blank_dsn: str) -> None:
    migrations.migrate(blank_dsn)
    assert migrations.rollback(blank_dsn, to="0008_refuse_truncate") == list(reversed(
        MIGRATION_IDS[MIGRATION_IDS.index("0009_compressed_archive"):]))
    before = _snapshot(blank_dsn)
    with psycopg.connect(blank_dsn) as conn:  # rows archived by the typed tables of 0004
        client, engagement = uuid.uuid4(), uuid.uuid4()
        conn.execute("insert into pyflows.clients (id, name) values (%s, 'c')", (client,))
        conn.execute("insert into pyflows.engagements (client_id, id, name) values (%s, %s, 'e')", (client, engagement))
        for n in range(3):
            write_flow_tree(conn, Tenant(client, engagement), status="paused" if n == 0 else "completed",
                            name=f"flow {n}", records=4, assets=5)
        conn.execute("delete from pyflows.discovery_flows where name <> 'flow 0'")
        conn.execute("delete from pyflows.clients")
    archived = _archive(blank_dsn)
    assert len(archived["assets"]) == 15 and len(archived["asset_dependencies"]) == 12
    assert len(archived["clients"]) == 1 and len(archived["discovery_flows"]) == 3

    migrations.migrate(blank_dsn)
    assert _archive(blank_dsn) == archived
    with psycopg.connect(blank_dsn) as conn:  # one chunk per event and table: the two deletes
        assert conn.execute("select count(*), sum(row_count) from pyflows_audit.assets_chunks").fetchone() == (2, 15)
    migrations.rollback(blank_dsn, to="0008_refuse_truncate")
    assert _archive(blank_dsn) == archived
    assert _snapshot(blank_dsn) == before
    migrations.migrate(blank_dsn)
    assert _archive(blank_dsn) == archived
