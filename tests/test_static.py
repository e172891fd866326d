"""Static checks: plpgsql_check over every PL/pgSQL function, squawk over every migration.

plpgsql_check is PostgreSQL's own static analyser for PL/pgSQL (Debian: postgresql-15-plpgsql-check,
which .ci/run installs where missing). It resolves every query of a function against the catalog, so
a misspelt column, a wrong type or an unreachable branch fails here rather than at 3 a.m. Trigger
functions are checked against every table they are attached to, with that trigger's transition tables.

squawk lints migrations for statements that lock or rewrite tables dangerously. Each finding it still
reports is listed below with the reason it is acceptable; a new finding, or an exception that no
longer applies, fails the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pyflows.resources import migrations_dir
from pyflows.testing import ServerInfo

FUNCTIONS = """
    select p.oid, p.oid::regprocedure::text, t.tgrelid, t.tgrelid::regclass::text, t.tgoldtable, t.tgnewtable,
           p.prorettype = 'trigger'::regtype
      from pg_proc p
      left join pg_trigger t on t.tgfoid = p.oid and not t.tgisinternal
     where p.pronamespace in ('pyflows'::regnamespace, 'pyflows_audit'::regnamespace)
       and p.prolang = (select oid from pg_language where lanname = 'plpgsql')
     order by 2, 4
"""


def test_plpgsql_check_finds_no_error_in_any_function(owner: psycopg.Connection[Any],
                                                      pyflows_server: ServerInfo) -> None:
    if pyflows_server.source == "embedded":
        pytest.skip("the embedded server ships no plpgsql_check; this check runs on a system PostgreSQL")
    available = owner.execute("select 1 from pg_available_extensions where name = 'plpgsql_check'").fetchone()
    assert available, ("plpgsql_check is not installed on the test server: install the Debian package "
                       "postgresql-15-plpgsql-check (bash .ci/run does it) and run the tests again")
    owner.execute("create extension if not exists plpgsql_check")
    checked, findings = 0, []
    for oid, signature, relid, table, old, new, is_trigger in owner.execute(FUNCTIONS).fetchall():
        if is_trigger and relid is None:
            findings.append(f"{signature}: a trigger function attached to no table cannot be checked")
            continue
        rows = owner.execute(
            "select level, message, lineno, query from plpgsql_check_function_tb(%s, %s, oldtable => %s, "
            "newtable => %s, fatal_errors => false)", (oid, relid or 0, old, new)).fetchall()
        checked += 1
        findings += [f"{signature}{f' on {table}' if table else ''} line {lineno}: {level}: {message}"
                     for level, message, lineno, _ in rows if level == "error"]
    assert checked > 40
    assert findings == []


# Findings squawk reports that are accepted, each with its reason. Keys: (file, rule).
RUNNER = ("the runner sets lock_timeout on every migration session (pyflows.migrations, 10 s unless the "
          "session chose one); statement_timeout is left to the operator, since a migration may rightly run "
          "long (an index on a large archive)")
ROLLBACK = "a rollback removes what its migration created: that is what it is for"
NEW_TABLE = "the index is created in the same migration as its table, which is empty and unseen until commit"
JUSTIFIED: dict[tuple[str, str], str] = {
    ("0002_tenant_tables.sql", "prefer-bigint-over-int"): "small bounded values (phase position, attempts), not ids",
    ("0002_tenant_tables.sql", "prefer-bigint-over-smallint"): "phase positions: a handful of rows, fixed",
    ("0004_audit.sql", "require-concurrent-index-creation"): NEW_TABLE,
    ("0004_audit.rollback.sql", "require-concurrent-index-deletion"): ROLLBACK,
    ("0006_events_lookup.sql", "require-concurrent-index-deletion"): (
        "DROP INDEX CONCURRENTLY cannot run inside a migration's transaction; dropping an index is a "
        "catalog change that holds its lock for milliseconds, bounded by the runner's lock_timeout"),
    ("0010_hardening.sql", "require-concurrent-index-creation"): (
        "CREATE INDEX CONCURRENTLY cannot run inside a migration's transaction; a partial index on the audit "
        "events of one rare action (audit.prune) builds in one pass over events, which only deletes write"),
    ("0010_hardening.sql", "ban-drop-function"): (
        "the functions dropped (a trigger helper whose signature changes, two helpers whose work moves into "
        "others) are internal: no role but the owner may execute them"),
    ("0010_hardening.rollback.sql", "require-concurrent-index-deletion"): ROLLBACK,
    ("0012_delete_trigger_per_table.sql", "ban-drop-function"): (
        "the shared trigger function dropped is internal (no role but the owner may execute it); every "
        "trigger that used it runs a function of its own table from the same migration on"),
    ("0024_archive_in_one_statement.sql", "ban-drop-function"): (
        "_archive_statement is internal (no role but the owner may execute it) and made again in the same "
        "migration with one more argument, which has a default: every call of it reads the same"),
    ("0025_copy_counted_without_transition_tables.sql", "ban-drop-function"): (
        "the trigger function dropped (_on_copy_raw_import_records) is internal (no role but the owner may "
        "execute it) and its trigger is dropped in the same migration; the rollback makes both again"),
    ("0025_copy_counted_without_transition_tables.rollback.sql", "ban-drop-constraint"): ROLLBACK,
}
# Migration 0011 rebuilds the keys and foreign-key indexes of the flow-owned tables in another column
# order. Every one of these findings is what rebuilding a key in one transaction is: the tables are
# locked while their indexes are rebuilt and their foreign keys validated (docs/operations.md says what
# it costs), and the rollback does the same the other way. CONCURRENTLY and NOT VALID cannot run inside
# a migration's transaction or would leave a window without the key; the ids are identities, not serial.
for _name in ("0011_one_index_per_lookup.sql", "0011_one_index_per_lookup.rollback.sql"):
    for _rule in ("adding-foreign-key-constraint", "adding-serial-primary-key-field", "ban-drop-constraint",
                  "constraint-missing-not-valid", "disallowed-unique-constraint", "require-concurrent-index-creation",
                  "require-concurrent-index-deletion"):
        JUSTIFIED[(_name, _rule)] = "rebuilding a key in one transaction (migration 0011)"
JUSTIFIED |= {
    ("0006_events_lookup.rollback.sql", "require-concurrent-index-creation"): (
        "CREATE INDEX CONCURRENTLY cannot run inside a migration's transaction; the rollback rebuilds "
        "an index on the audit events, which are written only by deletes"),
}
# Migration 0015 gives the audit events a key led by client_id and the archive chunks a client_id, NOT
# NULL once filled, and its rollback undoes both: the tables are the audit's, written only by deletes
# and read by the audit listings, and locked for the migration's transaction (docs/operations.md). A
# key cannot be rebuilt CONCURRENTLY or NOT VALID inside a transaction; the ids are identities. The
# functions it drops are internal (no role but the owner may execute them) and replaced in the same
# migration.
for _name, _rules in (("0015_audit_by_client.sql", ("adding-not-nullable-field", "ban-drop-function")),
                      ("0015_audit_by_client.rollback.sql", ("ban-drop-not-null",))):
    for _rule in ("adding-serial-primary-key-field", "ban-drop-constraint", "constraint-missing-not-valid",
                  "require-concurrent-index-creation", "require-concurrent-index-deletion", *_rules):
        JUSTIFIED[(_name, _rule)] = "re-keying the audit trail by client in one transaction (migration 0015)"
# Migration 0016 indexes the audit events by time and the flows being purged for admin_metrics(): a
# migration runs in one transaction, where CREATE INDEX CONCURRENTLY cannot; the events are written by
# deletes only, and the flows index is partial (flows being purged, a handful), so the lock is short.
JUSTIFIED[("0016_audit_writes_on_the_shard.sql", "require-concurrent-index-creation")] = (
    "indexes for admin_metrics() inside the migration's transaction (migration 0016)")
JUSTIFIED[("0016_audit_writes_on_the_shard.rollback.sql", "require-concurrent-index-deletion")] = (
    "the rollback drops migration 0016's indexes in its transaction")
# Migrations 0021 and 0022 add a CHECK constraint to a partition (NOT VALID, inside a function, which
# squawk does not read); their rollbacks drop it before the partition becomes the table again.
for _name in ("0021_records_copy_partition.rollback.sql", "0022_assets_copy_partition.rollback.sql"):
    JUSTIFIED[(_name, "ban-drop-constraint")] = "the rollback drops the tenant check its migration added"
for name in (p.name for p in migrations_dir().glob("*.sql")):
    JUSTIFIED[(name, "require-lock-timeout")] = RUNNER
    JUSTIFIED[(name, "require-statement-timeout")] = RUNNER
    if name.endswith(".rollback.sql"):
        for rule in ("ban-drop-table", "ban-drop-function", "ban-drop-schema", "ban-drop-column"):
            JUSTIFIED[(name, rule)] = ROLLBACK


def squawk() -> str:
    found = shutil.which("squawk") or str(Path(sys.executable).with_name("squawk"))
    assert Path(found).exists(), "squawk is not installed: pip install -e '.[test]' installs squawk-cli"
    return found


def test_squawk_findings_are_all_justified() -> None:
    files = sorted(str(p) for p in migrations_dir().glob("*.sql"))
    done = subprocess.run([squawk(), "--pg-version=15.0", "--assume-in-transaction", "--reporter=json", *files],
                          capture_output=True, text=True, check=False)
    assert done.returncode in (0, 1), done.stderr  # 1: findings reported
    findings = {(Path(f["file"]).name, f["rule_name"]) for f in json.loads(done.stdout or "[]")}
    unjustified = sorted(findings - set(JUSTIFIED))
    assert unjustified == [], f"squawk findings without a reason: {unjustified}"
    stale = sorted(k for k in set(JUSTIFIED) - findings
                   if k[1] not in ("require-lock-timeout", "require-statement-timeout", "ban-drop-table",
                                   "ban-drop-function", "ban-drop-schema", "ban-drop-column"))
    assert stale == [], f"exceptions squawk no longer reports: {stale}"
