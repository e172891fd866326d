"""The command line against a real database: exit codes, one-line errors, migrate/check/rollback, demo."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict

import pyflows.cli.base as cli_base
from pyflows import __version__, embedded, migrations
from pyflows.cli import Exit, cli
from pyflows.connection import LIBPQ_SERVER_VARIABLES, resolve_dsn
from pyflows.demo import DEMO_TENANTS, example_sql, psql_example

from .helpers import FLOW_TREE_TABLES, count_rows


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def assert_one_line_error(result: Result, code: Exit, *fragments: str) -> None:
    """One error line on stderr (after the line naming the database, for the schema commands)."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("pyflows: database ")]
    assert len(lines) == 1 and lines[0].startswith("pyflows: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_unreachable_server(closed_port: int) -> None:
    for command in ("check", "migrate", "demo"):
        result = run("--dsn", f"host=127.0.0.1 port={closed_port} connect_timeout=2", command)
        assert_one_line_error(result, Exit.CONNECTION, "cannot reach PostgreSQL", str(closed_port))


def test_authentication_failure(pyflows_dsn: str) -> None:
    result = run("--dsn", pyflows_dsn + " user=pyflows_no_such_role", "check")
    assert_one_line_error(result, Exit.CONNECTION, "authentication failed", "pyflows_no_such_role")


def test_invalid_dsn() -> None:
    assert_one_line_error(run("--dsn", "this is not a dsn", "check"), Exit.CONNECTION, "invalid DSN")


def test_check_on_a_database_without_the_schema(blank_dsn: str) -> None:
    result = run("--dsn", blank_dsn, "check")
    assert result.exit_code == Exit.SCHEMA
    assert "the pyflows schema is missing: run `pyflows migrate`" in result.stderr
    assert "Traceback" not in result.output


def test_migrate_check_and_dry_run(blank_dsn: str) -> None:
    dry = run("--dsn", blank_dsn, "migrate", "--dry-run")
    assert dry.exit_code == 0 and "would apply migration 0001_schemas_and_roles" in dry.stdout
    assert run("--dsn", blank_dsn, "check").exit_code == Exit.SCHEMA  # the dry run changed nothing

    applied = run("--dsn", blank_dsn, "migrate")
    assert applied.exit_code == 0 and "applied migration 0003_row_level_security" in applied.stdout
    again = run("--dsn", blank_dsn, "migrate")
    assert again.exit_code == 0 and "no migration pending" in again.stdout
    check = run("--dsn", blank_dsn, "check")
    assert check.exit_code == 0 and "up to date" in check.stdout


@pytest.mark.parametrize("role", ["app", "admin"])
def test_check_works_for_every_role_that_uses_pyflows(pyflows_role_dsn: Callable[[str], str], role: str) -> None:
    text = run("--dsn", pyflows_role_dsn(role), "check")
    assert text.exit_code == 0 and "pyflows schema is up to date" in text.stdout, text.output
    assert "applied  0013_check_for_every_role" in text.stdout
    data = json.loads(run("--dsn", pyflows_role_dsn(role), "check", "--json").stdout)
    assert set(data) == {"ok", "applied", "pending", "sql_current", "problems", "layout", "database"}
    assert data["layout"]["engine"] in ("postgresql", "citus")  # pyflows.layout(), readable by every role
    assert data["database"]["from"] == "--dsn" and "dbname=" in data["database"]["target"]
    assert data["ok"] is True and data["pending"] == [] and data["problems"] == [] and data["sql_current"] is True
    assert data["applied"] == [m.id for m in migrations._migrations()]


def test_check_as_another_role_follows_rollbacks(pyflows_dsn: str, pyflows_role_dsn: Callable[[str], str]) -> None:
    app = pyflows_role_dsn("app")
    with psycopg.connect(pyflows_dsn, autocommit=True) as conn:
        # What another role reads is installed_sql's list; a rollback rewrites it from the migration table.
        conn.execute("update pyflows.installed_sql set migrations = migrations[1:12]")
        stale = json.loads(run("--dsn", app, "check", "--json").stdout)
        since_0013 = [m.id for m in migrations._migrations()][12:]
        assert since_0013[0] == "0013_check_for_every_role"
        assert stale["ok"] is False and stale["pending"] == since_0013
        migrations._record_migrations(pyflows_dsn)
        assert json.loads(run("--dsn", app, "check", "--json").stdout)["ok"] is True
    # Without 0013 another role may read neither list: it says so, and who can tell.
    assert migrations.rollback(pyflows_dsn, to="0012_delete_trigger_per_table") == list(reversed(since_0013))
    before = run("--dsn", app, "check")
    assert before.exit_code == Exit.SCHEMA and "run `pyflows check` as the schema owner" in before.stderr
    assert run("--dsn", pyflows_dsn, "check").exit_code == Exit.SCHEMA  # the owner sees 0013 pending
    assert run("--dsn", pyflows_dsn, "migrate").exit_code == 0
    assert run("--dsn", app, "check").exit_code == 0


def test_dsn_comes_from_the_environment(blank_dsn: str) -> None:
    run("--dsn", blank_dsn, "migrate")
    assert run("check", env={"PYFLOWS_DSN": blank_dsn, "DATABASE_URL": "host=/nonexistent"}).exit_code == 0
    assert run("check", env={"PYFLOWS_DSN": "", "DATABASE_URL": blank_dsn}).exit_code == 0


# Nothing names a database: no --dsn, no PYFLOWS_DSN or DATABASE_URL, no libpq variable; and no embedded server
# running in the (empty) data directory PYFLOWS_DATA_DIR names.
def nothing_named(data_dir: Path) -> dict[str, str | None]:
    return {"PYFLOWS_DSN": None, "DATABASE_URL": None, "PYFLOWS_DATA_DIR": str(data_dir),
            **{name: None for name in LIBPQ_SERVER_VARIABLES}}


def test_every_schema_command_names_its_database(blank_dsn: str, tmp_path: Path) -> None:
    migrated = run("migrate", env={"PYFLOWS_DSN": blank_dsn})
    dbname = conninfo_to_dict(blank_dsn)["dbname"]
    assert "pyflows: database host=" in migrated.stderr and f"dbname={dbname}" in migrated.stderr
    assert "(PYFLOWS_DSN)" in migrated.stderr
    checked = run("--dsn", blank_dsn, "check")
    assert f"dbname={dbname}" in checked.stderr and "(--dsn)" in checked.stderr
    assert "(DATABASE_URL)" in run("check", env={"PYFLOWS_DSN": "", "DATABASE_URL": blank_dsn}).stderr
    refused = run("rollback", env={"PYFLOWS_DSN": blank_dsn})
    assert refused.exit_code == Exit.USAGE and "(PYFLOWS_DSN)" in refused.stderr


def test_with_nothing_named_schema_changes_do_not_proceed_silently(tmp_path: Path) -> None:
    env = nothing_named(tmp_path / "no-server")
    refused = run("migrate", env=env)
    assert refused.exit_code == Exit.USAGE, refused.output
    assert "nothing named: libpq's defaults" in refused.stderr
    assert "refusing to migrate libpq's default one without --yes" in refused.stderr
    assert refused.stdout == ""  # nothing was applied or said to be
    dry = run("migrate", "--dry-run", env=env)  # changes nothing: goes on, and says where
    assert "nothing named: libpq's defaults" in dry.stderr


def test_data_dir_goes_with_embedded(blank_dsn: str, tmp_path: Path) -> None:
    refused = run("--data-dir", str(tmp_path), "check")
    assert refused.exit_code == Exit.USAGE and "give --embedded with it" in refused.stderr


def test_a_stopped_embedded_server_suggests_starting_it(tmp_path: Path) -> None:
    (tmp_path / "PG_VERSION").write_text("16\n")  # a data directory whose server is not running
    result = run("--dsn", f"host={tmp_path} dbname=pyflows", "check")
    assert_one_line_error(result, Exit.CONNECTION, f"start it with `pyflows --data-dir {tmp_path} embedded start`")


def test_dsn_resolution_order() -> None:
    env = {"PYFLOWS_DSN": "dbname=a", "DATABASE_URL": "dbname=b"}
    assert resolve_dsn("dbname=x", env) == "dbname=x"
    assert resolve_dsn(None, env) == "dbname=a"
    assert resolve_dsn(None, {"DATABASE_URL": "dbname=b"}) == "dbname=b"
    assert resolve_dsn(None, {}) == ""  # libpq's PG* variables decide


def test_rollback_needs_yes_without_a_terminal(pyflows_dsn: str) -> None:
    result = run("--dsn", pyflows_dsn, "rollback", "--all")
    assert_one_line_error(result, Exit.USAGE, "without --yes")
    assert run("--dsn", pyflows_dsn, "check").exit_code == 0  # nothing was rolled back


def test_rollback_all_then_check_then_migrate(pyflows_dsn: str) -> None:
    result = run("--dsn", pyflows_dsn, "rollback", "--all", "--yes")
    assert result.exit_code == 0 and "rolled back migration 0001_schemas_and_roles" in result.stdout
    assert run("--dsn", pyflows_dsn, "check").exit_code == Exit.SCHEMA
    assert run("--dsn", pyflows_dsn, "migrate").exit_code == 0
    assert run("--dsn", pyflows_dsn, "check").exit_code == 0


def test_rollback_of_the_newest_migration_says_sql_needs_migrate(pyflows_dsn: str) -> None:
    """sql/ stays as this package installed it: rollback says so, check reports the pending migration,
    and migrate puts everything back."""
    newest, before = migrations.status(pyflows_dsn).applied[-2:][::-1]
    result = run("--dsn", pyflows_dsn, "rollback", "--yes")
    assert result.exit_code == 0 and f"rolled back migration {newest}" in result.stdout
    assert f"pyflows {__version__}" in result.stderr and "`pyflows migrate`" in result.stderr
    assert f"newest migration is {before}" in result.stderr
    checked = run("--dsn", pyflows_dsn, "check")
    assert checked.exit_code == Exit.SCHEMA and f"pending: {newest}" in checked.stderr
    assert run("--dsn", pyflows_dsn, "migrate").exit_code == 0
    assert run("--dsn", pyflows_dsn, "check").exit_code == 0


def test_conflicting_options_are_usage_errors(pyflows_dsn: str) -> None:
    assert run("--dsn", pyflows_dsn, "--embedded", "check").exit_code == Exit.USAGE
    assert run("--dsn", pyflows_dsn, "rollback", "--to", "0001_schemas_and_roles", "--all").exit_code == Exit.USAGE


def test_rollback_to_unknown_migration(pyflows_dsn: str) -> None:
    result = run("--dsn", pyflows_dsn, "rollback", "--to", "9999_nope", "--yes")
    assert_one_line_error(result, Exit.ERROR, "no migration '9999_nope'")


def test_demo_seeds_two_tenants_once(pyflows_dsn: str) -> None:
    first = run("--dsn", pyflows_dsn, "demo")
    assert first.exit_code == 0, first.output
    for name in ("Acme Logistics / Cloud migration 2027", "Globex Retail / Data-centre exit", "Q4 CMDB export",
                 "waiting_for_user", "export PYFLOWS_DSN="):
        assert name in first.stdout
    with psycopg.connect(pyflows_dsn) as conn:
        counts = {t: count_rows(conn, t) for t in FLOW_TREE_TABLES}
        incomplete = conn.execute("""
            select f.client_id, count(distinct a.id), count(distinct d.id), count(distinct i.id),
                   count(distinct r.id), count(distinct m.id)
              from pyflows.discovery_flows f
              left join pyflows.assets a on a.flow_id = f.id
              left join pyflows.asset_dependencies d on d.flow_id = f.id
              left join pyflows.data_imports i on i.flow_id = f.id
              left join pyflows.raw_import_records r on r.import_id = i.id
              left join pyflows.import_field_mappings m on m.import_id = i.id
             where f.status in ('initialized', 'running', 'paused', 'waiting_for_user', 'failed')
             group by f.client_id, f.id""").fetchall()
    assert {row[0] for row in incomplete} == {client for client, _ in DEMO_TENANTS}
    assert any(all(n > 0 for n in row[1:]) for row in incomplete), incomplete  # one flow owns every kind of row
    assert len({row[0] for row in incomplete}) == len(incomplete)  # one incomplete flow per context

    # The printed example shows one tenant's flows only, even though the DSN is a superuser's.
    assert psql_example() in first.stdout
    with psycopg.connect(pyflows_dsn, autocommit=True) as conn:
        conn.execute(example_sql().replace("commit;", "").encode())
        names = {row[0] for row in conn.execute("select name from pyflows.discovery_flows")}
        conn.execute("rollback")
    assert names == {"Q3 CMDB export", "Q4 CMDB export"}

    second = run("--dsn", pyflows_dsn, "demo")
    assert second.exit_code == 0
    with psycopg.connect(pyflows_dsn, autocommit=True) as conn:
        assert {t: count_rows(conn, t) for t in FLOW_TREE_TABLES} == counts
        # --reset writes the demo anew: a flow a user changed is back as the demo has it; other tenants stay.
        conn.execute("select pyflows.set_context(%s, %s, 'x')", DEMO_TENANTS[0])
        conn.execute("update pyflows.discovery_flows set name = 'changed' where name = 'Q4 CMDB export'")
        other = conn.execute("insert into pyflows.clients (name) values ('not a demo') returning id").fetchone()[0]
    reset = run("--dsn", pyflows_dsn, "demo", "--reset")
    assert reset.exit_code == 0 and "Removed the demo tenants" in reset.stdout, reset.output
    assert "Q4 CMDB export" in reset.stdout and "changed" not in reset.stdout
    with psycopg.connect(pyflows_dsn) as conn:
        assert {t: count_rows(conn, t) for t in FLOW_TREE_TABLES} == counts
        assert conn.execute("select count(*) from pyflows.clients where id = %s", (other,)).fetchone() == (1,)
        assert conn.execute("select count(*) from pyflows_audit.events where action = 'sql.delete'").fetchone()[0] > 0


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "pyflows", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Usage: pyflows" in done.stdout and "tenants" in done.stdout, done.stderr


def test_suggested_commands_run_from_where_pyflows_was_started(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    script = tmp_path / ".venv" / "bin" / "pyflows"  # a virtual environment's script, not on PATH
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert cli_base.invocation() == str(script)
    monkeypatch.setattr(sys, "argv", [str(Path(cli_base.__file__).parent.parent / "__main__.py")])
    assert cli_base.invocation() == f"{sys.executable} -m pyflows"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(script.parent))
    monkeypatch.setattr(sys, "argv", [str(script)])
    assert cli_base.invocation() == "pyflows"  # on PATH: the short name


@pytest.fixture
def embedded_dir(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "pgdata"
    yield data_dir
    embedded.stop(data_dir)


@pytest.mark.smoke
def test_demo_on_the_embedded_server(embedded_dir: Path) -> None:
    result = run("--data-dir", str(embedded_dir), "demo", env={"PYFLOWS_DSN": "", "DATABASE_URL": ""})
    assert result.exit_code == 0, result.output
    assert f"Embedded PostgreSQL in {embedded_dir}" in result.stdout
    assert f"pyflows: started the embedded PostgreSQL in {embedded_dir}" in result.stderr  # it says when it starts one
    assert "(no DSN given: the demo's default)" in result.stderr
    assert "Acme Logistics" in result.stdout and "Globex Retail" in result.stdout
    # The server keeps running and the data directory is reused: --embedded reaches the same database.
    check = run("--embedded", "--data-dir", str(embedded_dir), "check")
    assert check.exit_code == 0 and "up to date" in check.stdout
    assert f"(the embedded PostgreSQL in {embedded_dir} (--embedded)" in check.stderr
    assert "started" not in check.stderr  # it was running: nothing was started
    # With nothing else named, the commands after the demo reach the server it left running.
    found = run("check", env=nothing_named(embedded_dir))
    assert found.exit_code == 0 and "up to date" in found.stdout, found.output
    assert f"the embedded PostgreSQL in {embedded_dir}, running (nothing else named" in found.stderr
    gate = run("flows", "--client", str(DEMO_TENANTS[0][0]), "--engagement", str(DEMO_TENANTS[0][1]), "gate",
               env=nothing_named(embedded_dir))
    assert gate.exit_code in (0, Exit.CONFLICT) and "flow" in gate.stdout, gate.output
    assert "is already running" in run("--data-dir", str(embedded_dir), "embedded", "start").stderr
    stop = run("--data-dir", str(embedded_dir), "embedded", "stop")
    assert stop.exit_code == 0 and "stopped" in stop.stdout
    down = run("--dsn", embedded.EmbeddedServer(embedded_dir, str(embedded_dir), 5432).dsn(), "check")
    assert_one_line_error(down, Exit.CONNECTION, "embedded start")
    assert "no embedded PostgreSQL is running" in run("--data-dir", str(embedded_dir), "embedded", "stop").stdout
