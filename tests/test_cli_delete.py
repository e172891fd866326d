"""`pyflows flows impact|delete`, `pyflows audit`, `pyflows files drain` through CliRunner."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import pyflows.cli as cli_module
from pyflows.cli import Exit, cli
from pyflows.models import Tenant

from .helpers import count_rows
from .test_cli import assert_one_line_error
from .test_delete import everything, tree
from .test_lifecycle import insert_flow


@pytest.fixture
def run(pyflows_role_dsn: Callable[[str], str]) -> Callable[..., Result]:
    def invoke(group: str, tenant: Tenant | None, *args: str, role: str = "app", stdin: str | None = None) -> Result:
        context = ["--client", str(tenant.client_id), "--engagement", str(tenant.engagement_id),
                   "--actor", "dba@example.com"] if tenant else []
        argv = ["--dsn", pyflows_role_dsn(role), group, *context, *args]
        return CliRunner().invoke(cli, argv, input=stdin, catch_exceptions=False,
                                  env={"PYFLOWS_CLIENT_ID": "", "PYFLOWS_ENGAGEMENT_ID": ""})

    return invoke


def test_impact_prints_counts_and_verdict(run: Callable[..., Result], tenant_a: Tenant,
                                          owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    text = run("flows", tenant_a, "impact", str(target.flow_id))
    assert text.exit_code == 0
    for fragment in ("raw_import_records     3", "12 rows in all; 1 stored file(s)", "safe to delete"):
        assert fragment in text.stdout, text.stdout
    data = json.loads(run("flows", tenant_a, "impact", str(target.flow_id), "--json").stdout)
    assert set(data) == {"flow_id", "flow", "counts", "total_rows", "external_dependencies", "files", "safety"}


def test_delete_refuses_without_a_terminal_and_deletes_nothing(run: Callable[..., Result], tenant_a: Tenant,
                                                               owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    before = everything(owner)
    result = run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "cleanup")
    assert_one_line_error(result, Exit.USAGE, "without --yes")
    assert everything(owner) == before


def test_delete_asks_on_a_terminal(run: Callable[..., Result], tenant_a: Tenant, owner: psycopg.Connection[Any],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_module, "_interactive", lambda: True)
    target = tree(owner, tenant_a, status="paused")
    before = everything(owner)
    declined = run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "cleanup", stdin="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert everything(owner) == before
    accepted = run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "cleanup", stdin="y\n")
    assert accepted.exit_code == 0 and "deleted flow" in accepted.stdout and "audit event" in accepted.stdout
    assert count_rows(owner, "discovery_flows") == 0


def test_dry_run_reports_and_keeps_everything(run: Callable[..., Result], tenant_a: Tenant,
                                              owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    before = everything(owner)
    result = run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "check", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["deleted"]["assets"] == 3
    assert set(data) == {"event_id", "flow_id", "deleted", "files_enqueued", "forced", "warnings", "dry_run"}
    assert everything(owner) == before


def test_delete_errors_have_their_exit_codes(run: Callable[..., Result], tenant_a: Tenant,
                                             owner: psycopg.Connection[Any]) -> None:
    done = insert_flow(owner, tenant_a, "completed")
    assert_one_line_error(run("flows", tenant_a, "delete", str(done), "--reason", "x", "--yes"),
                          Exit.BUSY, "cannot be deleted", "p_force")
    assert_one_line_error(run("flows", tenant_a, "delete", str(uuid.uuid4()), "--reason", "x", "--yes"),
                          Exit.NOT_FOUND, "not found")
    assert_one_line_error(run("flows", tenant_a, "delete", str(done), "--reason", " ", "--yes", "--force"),
                          Exit.INVALID, "reason must not be empty")
    err = run("flows", tenant_a, "delete", str(done), "--reason", "x", "--yes", "--json")
    assert json.loads(err.stderr)["error"]["detail"]["blockers"][0]["code"] == "terminal"
    assert run("flows", tenant_a, "delete", "--reason", "x").exit_code == Exit.USAGE  # no ids at all
    forced = run("flows", tenant_a, "delete", str(done), "--reason", "x", "--yes", "--force")
    assert forced.exit_code == 0


def test_batch_from_a_file_per_flow(run: Callable[..., Result], tenant_a: Tenant, owner: psycopg.Connection[Any],
                                    tmp_path: Path) -> None:
    # More ids than one chunk: the CLI streams the file in chunks of BATCH_CHUNK.
    real = [insert_flow(owner, tenant_a, "cancelled", f"f{n}") for n in range(3)]
    ids = [uuid.uuid4()] + real + [uuid.uuid4() for _ in range(cli_module.BATCH_CHUNK + 5)]
    listing = tmp_path / "ids.txt"
    listing.write_text("# flows to remove\n" + "\n".join(str(i) for i in ids) + "\n\n")
    result = run("flows", tenant_a, "delete", "--from-file", str(listing), "--reason", "tidy", "--per-flow",
                 "--force", "--yes")
    assert result.exit_code == Exit.ERROR  # some failed
    assert f"deleted 3 flow(s); {len(ids) - 3} failed" in result.stdout
    assert f"flow {ids[0]}: flow {ids[0]} not found" in result.stdout  # the preview says so, and goes on
    assert count_rows(owner, "discovery_flows") == 0


def test_atomic_batch_json_lines_and_rollback_on_failure(run: Callable[..., Result], tenant_a: Tenant,
                                                         owner: psycopg.Connection[Any], tmp_path: Path) -> None:
    real = [insert_flow(owner, tenant_a, "cancelled", f"f{n}") for n in range(2)]
    listing = tmp_path / "ids.txt"
    listing.write_text("\n".join(str(i) for i in real))
    ok = run("flows", tenant_a, "delete", "--from-file", str(listing), "--reason", "tidy", "--force", "--yes",
             "--json")
    lines = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [line.get("ok") for line in lines[:-1]] == [True, True]
    assert lines[-1] == {"summary": {"atomic": True, "deleted": 2, "dry_run": False, "failed": 0}}

    again = [insert_flow(owner, tenant_a, "cancelled", "g"), uuid.uuid4()]
    listing.write_text("\n".join(str(i) for i in again))
    before = everything(owner)
    failed = run("flows", tenant_a, "delete", "--from-file", str(listing), "--reason", "tidy", "--force", "--yes")
    assert_one_line_error(failed, Exit.NOT_FOUND, "not found")
    assert everything(owner) == before


def test_bad_id_file_is_a_usage_error(run: Callable[..., Result], tenant_a: Tenant, tmp_path: Path) -> None:
    listing = tmp_path / "ids.txt"
    listing.write_text("not-a-uuid\n")
    result = run("flows", tenant_a, "delete", "--from-file", str(listing), "--reason", "x", "--yes")
    assert result.exit_code == Exit.USAGE and "line 1" in result.output


def test_audit_list_and_show(run: Callable[..., Result], tenant_a: Tenant, tenant_b: Tenant,
                             owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "duplicate upload", "--yes")
    run("flows", tenant_b, "delete", str(tree(owner, tenant_b, status="paused").flow_id), "--reason", "b", "--yes")
    listing = run("audit", tenant_a, "list")
    assert listing.exit_code == 0 and "duplicate upload" in listing.stdout and " b\n" not in listing.stdout
    events = json.loads(run("audit", tenant_a, "list", "--json").stdout)
    assert len(events) == 1 and events[0]["actor"] == "dba@example.com"
    shown = run("audit", tenant_a, "show", str(events[0]["event_id"]))
    assert shown.exit_code == 0
    for fragment in ("flow.delete", "duplicate upload", "raw_import_records     3             3"):
        assert fragment in shown.stdout, shown.stdout
    assert_one_line_error(run("audit", tenant_b, "show", str(events[0]["event_id"])), Exit.NOT_FOUND, "not found")
    assert json.loads(run("audit", tenant_a, "list", "--since", "2999-01-01", "--json").stdout) == []


def test_files_drain(run: Callable[..., Result], tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "x", "--yes")
    drained = run("files", None, "drain", "--root", "/tmp", role="admin")  # the tree's file is under /tmp
    assert drained.exit_code == 0 and "removed 1; failed 0" in drained.stdout
    assert json.loads(run("files", None, "drain", "--root", "/tmp", "--json", role="admin").stdout) == \
        {"errors": [], "failed": 0, "removed": 0}
    assert_one_line_error(run("files", None, "drain", role="app"), Exit.FORBIDDEN, "pyflows_admin")


def test_files_drain_refuses_bad_roots_before_claiming_anything(run: Callable[..., Result], tenant_a: Tenant,
                                                                  owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "x", "--yes")
    before = owner.execute("select attempts, done_at from pyflows.file_cleanup_queue").fetchall()
    for root, why in (("relative/uploads", "not an absolute path"), ("/nonexistent/pyflows-uploads", "not a folder")):
        refused = run("files", None, "drain", "--root", root, role="admin")
        assert refused.exit_code == Exit.USAGE and why in refused.stderr, refused.stderr
    assert owner.execute("select attempts, done_at from pyflows.file_cleanup_queue").fetchall() == before
    # A root naming the tenant need not exist yet; its entries are refused (outside it), not removed.
    templated = run("files", None, "drain", "--root", "/nonexistent/{client_id}", "--json", role="admin")
    assert templated.exit_code == Exit.ERROR and "outside every storage root" in templated.stdout


def test_purge_restore_and_prune_from_the_cli(run: Callable[..., Result], tenant_a: Tenant,
                                              owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused", records=30)
    refused = run("flows", tenant_a, "purge", str(target.flow_id), "--reason", "big")
    assert_one_line_error(refused, Exit.USAGE, "without --yes")
    purged = run("flows", tenant_a, "purge", str(target.flow_id), "--reason", "big", "--batch-rows", "10", "--yes")
    assert purged.exit_code == 0, purged.output
    assert "batch 1 removed" in purged.stderr and "purged flow" in purged.stdout
    event_id = json.loads(run("audit", tenant_a, "list", "--json").stdout)[0]["event_id"]
    restored = run("flows", tenant_a, "restore", str(event_id))
    assert restored.exit_code == 0 and f"restored flow {target.flow_id} (paused)" in restored.stdout
    assert_one_line_error(run("flows", tenant_a, "restore", str(event_id)), Exit.INVALID, "already restored")

    dry = run("audit", None, "prune", "--older-than", "0s", "--dry-run", role="admin")
    assert dry.exit_code == 0 and "would remove 2 audit event(s)" in dry.stdout
    assert_one_line_error(run("audit", None, "prune", "--older-than", "0s", role="admin"), Exit.USAGE, "without --yes")
    done = run("audit", None, "prune", "--older-than", "0s", "--yes", role="admin")
    assert done.exit_code == 0 and "removed 2 audit event(s)" in done.stdout
    assert_one_line_error(run("audit", None, "prune", "--older-than", "0s", "--yes"), Exit.FORBIDDEN, "pyflows_admin")
