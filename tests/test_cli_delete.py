"""`pyflows flows impact|delete`, `pyflows audit`, `pyflows files drain` through CliRunner."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import pyflows.cli.base as cli_base
import pyflows.cli.flows as cli_flows
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
    monkeypatch.setattr(cli_base, "interactive", lambda: True)
    target = tree(owner, tenant_a, status="paused")
    before = everything(owner)
    declined = run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "cleanup", stdin="n\n")
    assert declined.exit_code == Exit.DECLINED and "pyflows: not confirmed: nothing was done" in declined.stderr
    assert everything(owner) == before
    declined_json = run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "cleanup", "--json",
                        stdin="n\n")
    assert declined_json.exit_code == Exit.DECLINED
    error = declined_json.stderr[declined_json.stderr.index("{"):]  # after the prompt (no answer is echoed here)
    assert json.loads(error) == {
        "error": {"code": "declined", "message": "not confirmed: nothing was done"}}
    assert everything(owner) == before
    accepted = run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "cleanup", stdin="y\n")
    assert accepted.exit_code == 0 and "deleted flow" in accepted.stdout and "audit event" in accepted.stdout
    assert count_rows(owner, "discovery_flows") == 0


@pytest.mark.parametrize("args", [
    ("delete", "{flow}", "--reason", ""), ("delete", "{flow}", "--reason", "   ", "--yes"),
    ("purge", "{flow}", "--reason", " ", "--yes"), ("delete", "{flow}", "{flow}", "--reason", "", "--yes"),
])
def test_an_empty_reason_is_refused_before_anything_is_shown_or_done(run: Callable[..., Result], tenant_a: Tenant,
                                                                      owner: psycopg.Connection[Any],
                                                                      args: tuple[str, ...]) -> None:
    target = tree(owner, tenant_a, status="paused")
    before = everything(owner)
    result = run("flows", tenant_a, *(a.format(flow=target.flow_id) for a in args))
    assert result.exit_code == Exit.USAGE and result.stdout == ""
    assert "Invalid value for '--reason': must not be empty" in result.stderr
    assert everything(owner) == before


def test_usage_errors_and_refusals_are_json_with_json(run: Callable[..., Result], tenant_a: Tenant,
                                                      owner: psycopg.Connection[Any]) -> None:
    target = tree(owner, tenant_a, status="paused")
    before = everything(owner)
    cases = [
        (("delete", str(target.flow_id), "--reason", "x", "--json"), "refusing to delete without --yes"),
        (("delete", str(target.flow_id), "--json"), "Missing option '--reason'"),
        (("delete", "--bogus", "--json"), "No such option '--bogus'"),
        (("show", "not-a-uuid", "--json"), "'not-a-uuid' is not a valid UUID"),
        (("list", "--all-tenants", "--limit", "5", "--json"), "--limit page one tenant's flows"),
    ]
    for args, fragment in cases:
        result = run("flows", tenant_a, *args)
        assert result.exit_code == Exit.USAGE and result.stdout == "", (args, result.output)
        error = json.loads(result.stderr)["error"]
        assert error["code"] == "usage" and fragment in error["message"], (args, error)
    assert everything(owner) == before
    # Without --json the same errors stay text; and "--json" after "--" is an argument, not the option.
    assert run("flows", tenant_a, "show", "not-a-uuid").stderr.startswith("Usage:")
    assert run("flows", tenant_a, "show", "--", "--json").stderr.startswith("Usage:")


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
                          Exit.BUSY, "cannot be deleted", "(Add --force to override; the override is recorded")
    assert "p_force" not in run("flows", tenant_a, "delete", str(done), "--reason", "x", "--yes", "--json").stderr
    assert_one_line_error(run("flows", tenant_a, "delete", str(uuid.uuid4()), "--reason", "x", "--yes"),
                          Exit.NOT_FOUND, "not found")
    blank = run("flows", tenant_a, "delete", str(done), "--reason", " ", "--yes", "--force")
    assert blank.exit_code == Exit.USAGE and "'--reason': must not be empty" in blank.stderr  # before any call
    err = run("flows", tenant_a, "delete", str(done), "--reason", "x", "--yes", "--json")
    assert json.loads(err.stderr)["error"]["detail"]["blockers"][0]["code"] == "terminal"
    assert run("flows", tenant_a, "delete", "--reason", "x").exit_code == Exit.USAGE  # no ids at all
    forced = run("flows", tenant_a, "delete", str(done), "--reason", "x", "--yes", "--force")
    assert forced.exit_code == 0


def test_a_missing_id_file_is_a_usage_error(run: Callable[..., Result], tenant_a: Tenant, tmp_path: Path) -> None:
    result = run("flows", tenant_a, "delete", "--from-file", str(tmp_path / "nope.txt"), "--reason", "x", "--yes")
    assert result.exit_code == Exit.USAGE, result.output
    assert "Invalid value for --from-file: cannot read" in result.stderr
    assert "internal error" not in result.output


def test_batch_from_a_file_per_flow(run: Callable[..., Result], tenant_a: Tenant, owner: psycopg.Connection[Any],
                                    tmp_path: Path) -> None:
    # More ids than one chunk: the CLI streams the file in chunks of BATCH_CHUNK.
    real = [insert_flow(owner, tenant_a, "cancelled", f"f{n}") for n in range(3)]
    ids = [uuid.uuid4()] + real + [uuid.uuid4() for _ in range(cli_flows.BATCH_CHUNK + 5)]
    listing = tmp_path / "ids.txt"
    listing.write_text("# flows to remove\n" + "\n".join(str(i) for i in ids) + "\n\n")
    result = run("flows", tenant_a, "delete", "--from-file", str(listing), "--reason", "tidy", "--per-flow",
                 "--force", "--yes")
    assert result.exit_code == Exit.ERROR  # some failed
    assert f"deleted 3 flow(s); {len(ids) - 3} failed" in result.stdout
    assert f"flow {ids[0]}: flow {ids[0]} not found" in result.stdout  # the preview says so, and goes on
    assert f"{len(ids)} flow(s) to delete (each on its own); the impact of the first 3:" in result.stdout
    assert result.stdout.count("BLOCKED, overridden by --force (recorded in the audit)") == 2  # cancelled flows
    assert count_rows(owner, "discovery_flows") == 0


def test_batch_output_reads_true(run: Callable[..., Result], tenant_a: Tenant, owner: psycopg.Connection[Any]) -> None:
    flows = [str(insert_flow(owner, tenant_a, "cancelled", f"f{n}")) for n in range(2)]
    before = everything(owner)
    shown = run("flows", tenant_a, "delete", *flows, "--reason", "tidy", "--dry-run")
    assert "2 flow(s) to delete (all or nothing); the impact of each:" in shown.stdout, shown.stdout
    assert shown.stdout.count("removes:") == 2 and shown.stdout.count("\nBLOCKED\n") == 2  # not forced: blocked
    # A dry run's JSON names no event: the events were rolled back with the rest.
    dry = run("flows", tenant_a, "delete", *flows, "--reason", "tidy", "--dry-run", "--force", "--json")
    lines = [json.loads(line) for line in dry.stdout.splitlines()]
    assert [(line["ok"], line["event_id"]) for line in lines[:-1]] == [(True, None), (True, None)]
    one = json.loads(run("flows", tenant_a, "delete", flows[0], "--reason", "tidy", "--dry-run", "--force",
                         "--json").stdout)
    assert one["dry_run"] is True and one["event_id"] is None and one["deleted"]["discovery_flows"] == 1
    assert everything(owner) == before
    forced = run("flows", tenant_a, "delete", flows[0], "--reason", "tidy", "--force", "--yes")
    assert "BLOCKED, overridden by --force (recorded in the audit)" in forced.stdout
    assert "audit event" in forced.stdout


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
    assert_one_line_error(run("flows", tenant_a, "restore", str(event_id)), Exit.INVALID, "already restored, by audit")
    restore_event = json.loads(restored_json := run("audit", tenant_a, "list", "--json").stdout)[0]
    assert restore_event["action"] == "flow.restore", restored_json
    listing = run("audit", tenant_a, "list").stdout
    restore_line = next(line for line in listing.splitlines() if "flow.restore" in line)
    assert f" {sum(restore_event['details']['restored'].values())} " in restore_line  # its counts, not 0
    shown = run("audit", tenant_a, "show", str(event_id)).stdout
    assert re.search(rf"^restored by +audit event {restore_event['event_id']}$", shown, re.M), shown

    dry = run("audit", None, "prune", "--older-than", "0s", "--dry-run", role="admin")
    assert dry.exit_code == 0 and "would remove 2 audit event(s)" in dry.stdout
    assert_one_line_error(run("audit", None, "prune", "--older-than", "0s", role="admin"), Exit.USAGE,
                          "younger than a day (0s) without --yes --allow-recent")
    # A cutoff under a day: --yes alone does not let it through without a terminal.
    assert_one_line_error(run("audit", None, "prune", "--older-than", "0s", "--yes", role="admin"), Exit.USAGE,
                          "--allow-recent")
    assert json.loads(run("audit", None, "list", "--all-tenants", "--json", role="admin").stdout)[0]["action"] \
        == "flow.restore"  # nothing was pruned
    done = run("audit", None, "--actor", "dba@example.com", "prune", "--older-than", "0s", "--yes",
               "--allow-recent", role="admin")
    assert done.exit_code == 0 and "removed 2 audit event(s)" in done.stdout
    assert_one_line_error(run("audit", None, "prune", "--older-than", "0s", "--yes", "--allow-recent"),
                          Exit.FORBIDDEN, "pyflows_admin")
    # The prune is an event of no tenant: admins see it, with who ran it and what it removed.
    listed = run("audit", None, "list", "--all-tenants", "--action", "audit.prune", "--json", role="admin")
    (prune,) = json.loads(listed.stdout)
    assert prune["actor"] == "dba@example.com" and prune["client_id"] is None
    assert prune["details"]["events"] == 2 and prune["details"]["archive"]["raw_import_records"] == 30
    text = run("audit", None, "list", "--all-tenants", role="admin").stdout
    assert "audit.prune" in text and "dba@example.com" in text
    assert_one_line_error(run("audit", None, "list", "--all-tenants"), Exit.FORBIDDEN, "pyflows_admin")
    assert run("audit", tenant_a, "list", "--action", "audit.prune").exit_code == Exit.USAGE
    assert run("audit", None, "list", "--all-tenants", "--flow", str(target.flow_id), role="admin").exit_code \
        == Exit.USAGE


def test_a_prune_under_a_day_asks_even_with_yes(run: Callable[..., Result], tenant_a: Tenant,
                                               owner: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_base, "interactive", lambda: True)
    target = tree(owner, tenant_a, status="paused")
    assert run("flows", tenant_a, "delete", str(target.flow_id), "--reason", "x", "--yes").exit_code == 0
    declined = run("audit", None, "prune", "--older-than", "0s", "--yes", role="admin", stdin="n\n")
    assert declined.exit_code == Exit.DECLINED, declined.output
    assert "0s is under a day: events of today's work go too." in declined.stderr
    assert count_rows(owner, "discovery_flows") == 0 and len(json.loads(
        run("audit", tenant_a, "list", "--json").stdout)) == 1  # kept
    accepted = run("audit", None, "prune", "--older-than", "0s", "--yes", role="admin", stdin="y\n")
    assert accepted.exit_code == 0 and "removed 1 audit event(s)" in accepted.stdout
    assert run("audit", tenant_a, "list", "--json").stdout.strip() == "[]"


def test_progress_on_a_terminal_only_and_never_with_json_or_quiet(
        run: Callable[..., Result], tenant_a: Tenant, owner: psycopg.Connection[Any],
        monkeypatch: pytest.MonkeyPatch, pyflows_role_dsn: Callable[[str], str]) -> None:
    monkeypatch.setattr(cli_base, "stderr_is_terminal", lambda: True)
    # click draws the bar on a real terminal; into CliRunner's stream it writes the label once.
    big = tree(owner, tenant_a, status="paused", records=30)
    purged = run("flows", tenant_a, "purge", str(big.flow_id), "--reason", "big", "--batch-rows", "10", "--yes")
    assert purged.exit_code == 0 and "purging" in purged.stderr, purged.output
    assert "batch 1 removed" not in purged.stderr  # the bar replaces the batch lines on a terminal
    event = json.loads(run("audit", tenant_a, "list", "--json").stdout)[0]["event_id"]
    restored = run("flows", tenant_a, "restore", str(event))
    assert restored.exit_code == 0 and f"restoring audit event {event}" in restored.stderr
    dry = run("flows", tenant_a, "delete", str(big.flow_id), "--reason", "x", "--dry-run")
    assert f"rehearsing the delete of flow {big.flow_id}" in dry.stderr
    batch = run("flows", tenant_a, "delete", str(big.flow_id), str(uuid.uuid4()), "--reason", "x", "--dry-run",
                "--per-flow")
    assert "rehearsing" in batch.stderr
    deleted = run("flows", tenant_a, "delete", str(big.flow_id), "--reason", "x", "--yes")
    assert f"deleting flow {big.flow_id}" in deleted.stderr
    drained = run("files", None, "drain", "--root", "/nonexistent-root-{client_id}", role="admin")
    assert "removing files" in drained.stderr
    # Never with --json or --quiet, and never off a terminal.
    again = tree(owner, tenant_a, status="paused", records=30)
    quiet = CliRunner().invoke(cli, ["--quiet", "--dsn", pyflows_role_dsn("app"), "flows", "--client",
                                     str(tenant_a.client_id), "--engagement", str(tenant_a.engagement_id), "purge",
                                     str(again.flow_id), "--reason", "big", "--batch-rows", "10", "--yes"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.output
    as_json = run("flows", tenant_a, "restore", str(event), "--json")
    assert "restoring" not in as_json.stderr
    monkeypatch.setattr(cli_base, "stderr_is_terminal", lambda: False)
    logged = run("flows", tenant_a, "delete", str(again.flow_id), "--reason", "x", "--dry-run")
    assert "rehearsing" not in logged.stderr
