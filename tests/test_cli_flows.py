"""`pyflows flows ...` through click's CliRunner against the real database, as pyflows_test_app."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

from pyflows.cli import Exit, cli, parse_duration
from pyflows.models import PHASES, Tenant

from .test_cli import assert_one_line_error

# These hold on Citus as on one server (PYFLOWS_TEST_CITUS, docs/scale-out.md).
pytestmark = pytest.mark.citus


@pytest.fixture
def flows_cli(pyflows_role_dsn: Callable[[str], str]) -> Callable[..., Result]:
    """Run `pyflows --dsn <app role> flows --client A --engagement E --actor ops ARGS` for a tenant."""

    def run(tenant: Tenant | None, *args: str, role: str = "app") -> Result:
        context = ["--client", str(tenant.client_id), "--engagement", str(tenant.engagement_id)] if tenant else []
        argv = ["--dsn", pyflows_role_dsn(role), "flows", *context, "--actor", "ops@example.com", *args]
        return CliRunner().invoke(cli, argv, catch_exceptions=False,
                                  env={"PYFLOWS_CLIENT_ID": "", "PYFLOWS_ENGAGEMENT_ID": ""})

    return run


def as_json(result: Result) -> Any:
    assert result.exit_code in (0, Exit.CONFLICT), result.output
    return json.loads(result.stdout)


@pytest.mark.smoke
def test_gate_start_and_blocked_gate(flows_cli: Callable[..., Result], tenant_a: Tenant) -> None:
    open_gate = flows_cli(tenant_a, "gate")
    assert open_gate.exit_code == 0 and "A new flow can start." in open_gate.stdout

    started = flows_cli(tenant_a, "start", "Q4 export")
    assert started.exit_code == 0 and "started flow" in started.stdout
    flow = as_json(flows_cli(tenant_a, "list", "--json"))[0]
    assert flow["name"] == "Q4 export" and flow["created_by"] == "ops@example.com"

    blocked = flows_cli(tenant_a, "gate")
    assert blocked.exit_code == Exit.CONFLICT
    for text in ('"Q4 export" is initialized in Data import at 0.00%', "Next steps:",
                 f"pyflows flows resume {flow['flow_id']}", "Or delete"):
        assert text in blocked.stdout
    gate_json = as_json(flows_cli(tenant_a, "gate", "--json"))
    assert set(gate_json) == {"can_start", "blocking_flow", "next_steps"}
    assert gate_json["can_start"] is False and gate_json["blocking_flow"]["flow_id"] == flow["flow_id"]


def test_start_while_blocked_is_pf409_in_text_and_json(flows_cli: Callable[..., Result], tenant_a: Tenant,
                                                       owner: psycopg.Connection[Any]) -> None:
    flows_cli(tenant_a, "start", "first")
    text = flows_cli(tenant_a, "start", "second")
    assert_one_line_error(text, Exit.CONFLICT, "an incomplete flow exists", "first")
    err = flows_cli(tenant_a, "start", "second", "--json")
    assert err.exit_code == Exit.CONFLICT and err.stdout == ""
    payload = json.loads(err.stderr)["error"]
    assert payload["code"] == "PF409" and payload["detail"]["name"] == "first"
    assert payload["detail"]["actions"] == ["resume", "delete"] and payload["hint"]
    assert owner.execute("select count(*) from pyflows.discovery_flows").fetchone() == (1,)


def test_upload_show_progress_resume(flows_cli: Callable[..., Result], tenant_a: Tenant) -> None:
    upload = as_json(flows_cli(tenant_a, "upload", "cmdb.csv", "--storage-uri", "s3://b/cmdb.csv",
                               "--byte-size", "123", "--json"))
    flow_id = upload["flow_id"]
    assert set(upload) == {"flow_id", "import_id", "flow"}
    more = as_json(flows_cli(tenant_a, "upload", "more.csv", "--storage-uri", "s3://b/more.csv", "--byte-size",
                             "5", "--flow", flow_id, "--json"))
    assert more["flow_id"] == flow_id and more["import_id"] != upload["import_id"]

    progressed = as_json(flows_cli(tenant_a, "progress", flow_id, "data_import", "--insight", '{"rows": 2}',
                                   "--json"))
    assert progressed["current_phase"] == "data_validation" and progressed["progress_percentage"] == 14.29

    shown = flows_cli(tenant_a, "show", flow_id)
    assert shown.exit_code == 0
    for text in ("data_import          Data import          completed", "data_imports           2",
                 '"insight": {"rows": 2}', "can resume: no"):
        assert text in shown.stdout, shown.stdout
    details = as_json(flows_cli(tenant_a, "show", flow_id, "--json"))
    assert set(details) == {"flow", "phases", "counts", "errors", "agent_insights", "next_steps", "can_resume",
                            "can_delete"}

    resumed = flows_cli(tenant_a, "resume", flow_id)
    assert resumed.exit_code == 0 and "already running; nothing to do" in resumed.stdout


def test_times_in_tables_carry_their_time_zone(flows_cli: Callable[..., Result], tenant_a: Tenant) -> None:
    flows_cli(tenant_a, "start", "f")
    listed = flows_cli(tenant_a, "list").stdout
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d (UTC|[A-Z]{2,5}|[+-]\d{4})\b", listed), listed


def test_flows_list_filters_and_json_keys(flows_cli: Callable[..., Result], tenant_a: Tenant) -> None:
    assert flows_cli(tenant_a, "list").stdout.strip() == "no flows"
    flows_cli(tenant_a, "start", "one")
    rows = as_json(flows_cli(tenant_a, "list", "--filter", "incomplete", "--json"))
    assert set(rows[0]) == {"flow_id", "name", "status", "current_phase", "phase_title", "progress_percentage",
                            "created_by", "created_at", "last_activity_at", "counts", "next_steps"}
    assert as_json(flows_cli(tenant_a, "list", "--filter", "terminal", "--json")) == []


@pytest.mark.parametrize("args, code, fragment", [
    (("show", str(uuid.UUID(int=1))), Exit.NOT_FOUND, "not found"),
    (("resume", str(uuid.UUID(int=1))), Exit.NOT_FOUND, "not found"),
    (("progress", str(uuid.UUID(int=1)), "data_import"), Exit.NOT_FOUND, "not found"),
    (("start", "   "), Exit.INVALID, "flow name must not be empty"),
    (("list", "--limit", "0"), Exit.INVALID, "limit must be between 1 and 1000"),
    (("upload", "f.csv", "--storage-uri", "no-scheme", "--byte-size", "1"), Exit.INVALID, "storage_uri"),
])
def test_errors_map_to_exit_codes(flows_cli: Callable[..., Result], tenant_a: Tenant, args: tuple[str, ...],
                                  code: Exit, fragment: str) -> None:
    assert_one_line_error(flows_cli(tenant_a, *args), code, fragment)


def test_another_tenants_engagement_is_not_found(flows_cli: Callable[..., Result], tenant_a: Tenant,
                                                 tenant_b: Tenant) -> None:
    mixed = Tenant(tenant_a.client_id, tenant_b.engagement_id)
    assert_one_line_error(flows_cli(mixed, "gate"), Exit.NOT_FOUND, "not found for client")


def test_usage_errors(flows_cli: Callable[..., Result], tenant_a: Tenant) -> None:
    assert flows_cli(None, "gate").exit_code == Exit.USAGE
    assert flows_cli(tenant_a, "show", "not-a-uuid").exit_code == Exit.USAGE
    assert flows_cli(tenant_a, "progress", str(uuid.uuid4()), "data_import", "--insight", "{bad").exit_code \
        == Exit.USAGE
    assert flows_cli(tenant_a, "list", "--idle-for", "2h").exit_code == Exit.USAGE
    assert flows_cli(tenant_a, "list", "--all-tenants", "--idle-for", "soon").exit_code == Exit.USAGE


def test_all_tenants_listing_is_for_admins(flows_cli: Callable[..., Result], tenant_a: Tenant,
                                           tenant_b: Tenant) -> None:
    flows_cli(tenant_a, "start", "A's flow")
    flows_cli(tenant_b, "start", "B's flow")
    admin = flows_cli(None, "list", "--all-tenants", role="admin")
    assert admin.exit_code == 0 and "A's flow" in admin.stdout and "B's flow" in admin.stdout
    rows = as_json(flows_cli(None, "list", "--all-tenants", "--json", role="admin"))
    assert {r["client_name"] for r in rows} == {"Client A", "Client B"}
    assert isinstance(rows[0]["idle_for"], float)
    assert as_json(flows_cli(None, "list", "--all-tenants", "--idle-for", "7d", "--json", role="admin")) == []
    assert_one_line_error(flows_cli(None, "list", "--all-tenants", role="app"), Exit.FORBIDDEN, "pyflows_admin")
    # Paging options belong to one tenant's listing: with --all-tenants they are refused, not ignored.
    for args, named in ((("--limit", "1"), "--limit"), (("--offset", "1"), "--offset"),
                        (("--filter", "terminal"), "--filter"),
                        (("--limit", "50", "--offset", "0"), "--limit and --offset")):
        refused = flows_cli(None, "list", "--all-tenants", *args, role="admin")
        assert refused.exit_code == Exit.USAGE and refused.stdout == "", refused.output
        assert f"{named} page one tenant's flows" in refused.stderr


def test_phases_are_listed_by_help_and_by_the_unknown_phase_error(flows_cli: Callable[..., Result],
                                                                  tenant_a: Tenant,
                                                                  owner: psycopg.Connection[Any]) -> None:
    in_order = ", ".join(r[0] for r in owner.execute("select phase from pyflows.phases order by position"))
    assert ", ".join(PHASES) == in_order
    help_text = " ".join(CliRunner().invoke(cli, ["flows", "progress", "--help"]).stdout.split())
    assert f"PHASE, in order: {in_order}." in help_text
    flow = as_json(flows_cli(tenant_a, "start", "f", "--json"))["flow_id"]
    assert_one_line_error(flows_cli(tenant_a, "progress", flow, "mapping"), Exit.INVALID,
                          f"unknown phase 'mapping' (The phases, in order: {in_order}.)")


def test_status_and_heartbeat_from_the_cli(flows_cli: Callable[..., Result], tenant_a: Tenant) -> None:
    flow = as_json(flows_cli(tenant_a, "start", "f", "--json"))["flow_id"]
    paused = flows_cli(tenant_a, "status", flow, "paused")
    assert paused.exit_code == 0 and f"flow {flow}: initialized -> paused" in paused.stdout
    assert f"flow {flow} is already paused" in flows_cli(tenant_a, "status", flow, "paused").stdout
    running = as_json(flows_cli(tenant_a, "status", flow, "running", "--json"))
    assert running == {"flow_id": flow, "status": "running", "changed": True, "previous_status": "paused"}
    beat = as_json(flows_cli(tenant_a, "heartbeat", flow, "--json"))
    assert set(beat) == {"flow_id", "heartbeat_at", "lease_until"} and beat["lease_until"] > beat["heartbeat_at"]
    assert as_json(flows_cli(tenant_a, "show", flow, "--json"))["flow"]["heartbeat_at"] == beat["heartbeat_at"]
    beat_text = flows_cli(tenant_a, "heartbeat", flow).stdout
    assert re.search(r"heartbeat at \d{4}-\d\d-\d\d \d\d:\d\d \S+, active until \d{4}-", beat_text), beat_text
    failed = flows_cli(tenant_a, "status", flow, "failed", "--error", "disk full")
    assert failed.exit_code == 0, failed.output
    assert as_json(flows_cli(tenant_a, "show", flow, "--json"))["errors"] == [{"message": "disk full"}]
    assert flows_cli(tenant_a, "status", flow, "paused", "--error", "x").exit_code == Exit.USAGE
    assert flows_cli(tenant_a, "status", flow, "completed").exit_code == Exit.USAGE  # progress completes a flow
    assert_one_line_error(flows_cli(tenant_a, "status", str(uuid.uuid4()), "paused"), Exit.NOT_FOUND, "not found")
    assert flows_cli(tenant_a, "status", flow, "cancelled").exit_code == 0
    assert_one_line_error(flows_cli(tenant_a, "heartbeat", flow), Exit.INVALID)


def test_parse_duration() -> None:
    assert [parse_duration(t).total_seconds() for t in ("90", "90s", "15m", "2h", "7d", "1w")] == \
        [90, 90, 900, 7200, 604800, 604800]


def test_load_a_csv_export_into_an_import(flows_cli: Callable[..., Result], tenant_a: Tenant,
                                          owner: psycopg.Connection[Any], tmp_path: Any) -> None:
    upload = as_json(flows_cli(tenant_a, "upload", "cmdb.csv", "--storage-uri", "s3://b/cmdb.csv",
                               "--byte-size", "123", "--json"))
    export = tmp_path / "cmdb.csv"
    export.write_bytes("\ufeffHost,IP,Notes\nweb-1,10.0.0.1,\"a, b\"\ndb-1,10.0.0.2,ünïcode\n".encode())
    loaded = flows_cli(tenant_a, "load", upload["import_id"], str(export))
    assert loaded.exit_code == 0, loaded.output
    assert f"loaded 2 records into import {upload['import_id']} (2 in all)" in loaded.stdout
    stored = owner.execute("select row_number, data from pyflows.raw_import_records where import_id = %s "
                           "order by row_number", (upload["import_id"],)).fetchall()
    assert stored == [(1, {"Host": "web-1", "IP": "10.0.0.1", "Notes": "a, b"}),
                      (2, {"Host": "db-1", "IP": "10.0.0.2", "Notes": "ünïcode"})]
    assert as_json(flows_cli(tenant_a, "load", upload["import_id"], str(export), "--json")) == {
        "loaded": 2, "flow_id": upload["flow_id"], "import_id": upload["import_id"], "record_count": 4}

    before = owner.execute("select count(*) from pyflows.raw_import_records").fetchone()
    for name, content, fragment in (
            ("ragged.csv", b"Host,IP\nweb-2,10.0.0.3\nweb-3\n", "line 3 has 1 fields, the header 2"),
            ("latin1.csv", b"Host\nweb-2\n\xe9t\xe9\n", "line 3 is not UTF-8"),
            ("empty.csv", b"", "no header line")):
        bad = tmp_path / name
        bad.write_bytes(content)
        refused = flows_cli(tenant_a, "load", upload["import_id"], str(bad))
        assert refused.exit_code == Exit.INVALID and fragment in refused.stderr, (name, refused.output)
    missing = flows_cli(tenant_a, "load", str(uuid.UUID(int=1)), str(export))
    assert missing.exit_code == Exit.NOT_FOUND, missing.output
    assert flows_cli(tenant_a, "load", upload["import_id"], str(tmp_path / "nope.csv")).exit_code == Exit.USAGE
    assert owner.execute("select count(*) from pyflows.raw_import_records").fetchone() == before
