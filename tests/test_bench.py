"""A tiny run of every benchmark suite, so that none can rot (the real runs are in docs/benchmarks.md)."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bench import common, ingest, instructions, scale
from bench import run as bench
from pyflows.testing import CitusCluster, ServerInfo

TINY = ["--runs", "1", "--assets", "50", "--fresh-assets", "20", "--fresh-runs", "2", "--growth", "10,40",
        "--engagements", "20", "--flows", "200",
        "--list-calls", "10", "--clients", "3", "--contexts", "4", "--seconds", "1", "--purge-assets", "100",
        "--batch-rows", "60", "--batch-flows", "10", "--ids", "5,20", "--records", "300", "--ingest-assets", "40",
        "--race-clients", "4", "--race-seconds", "0.5", "--peer-assets", "20", "--http-calls", "8"]


@pytest.fixture(scope="module")
def reports(pyflows_server: ServerInfo) -> dict[str, dict]:
    return bench.main(["--dsn", pyflows_server.conninfo(pyflows_server.maintenance_dbname), *TINY])


def test_every_suite_runs_and_reports(reports: dict[str, dict]) -> None:
    assert list(reports) == [name for name in bench.SUITES if name not in bench.OPT_IN]
    for name, report in reports.items():
        assert report["environment"]["postgres"].startswith("PostgreSQL"), name


def test_delete_suite_compares_every_variant_with_the_cascade(reports: dict[str, dict]) -> None:
    report = reports["delete"]
    assert report["rows"] == 50 + 2 * 49 + 50 + 4 + 1 + 1
    assert set(report["results"]) == {"unaudited", "delete_flow", "row_jsonb", "archive_write", "impact", "restore"}
    assert report["results"]["unaudited"]["ratio"] == pytest.approx(1.0)
    assert all(r["min"] > 0 for r in report["results"].values())
    # Fresh copies of each size: each run's delete_flow archived exactly the copy's rows (the suite checks),
    # both variants timed, side by side, who goes first swapping; the ratio taken over the two runs as a pair.
    assert [p["rows"] for p in report["fresh"]] == [20 + 2 * 19 + 20 + 4 + 1 + 1, report["rows"]]
    for point in report["fresh"]:
        assert {name: r["n"] for name, r in point["results"].items()} == {"unaudited": 2, "delete_flow": 2}
        assert point["first"] == ["unaudited", "delete_flow"]
        assert point["paired"] == pytest.approx(math.sqrt(point["per_run"][0] * point["per_run"][1]))


def test_growth_measures_each_size(reports: dict[str, dict]) -> None:
    assert [p["rows"] for p in reports["growth"]["points"]] == [10 + 18 + 10 + 4 + 2, 40 + 78 + 40 + 4 + 2]


def test_gate_times_both_outcomes_of_start_and_the_rls_listing(reports: dict[str, dict]) -> None:
    results = reports["gate"]["results"]
    assert results["flow_gate"]["n"] == 20
    assert results["start_flow (started)"]["n"] == results["start_flow (PF409)"]["n"] == 10
    assert results["list_incomplete_flows as pyflows_app (RLS)"]["n"] == 10
    assert reports["gate"]["flows"] == 200 + 10  # completed, and a paused one on every other engagement


def test_concurrency_checks_the_invariant(reports: dict[str, dict]) -> None:
    report = reports["concurrency"]
    assert report["completed"] > 0
    assert report["contexts_with_more_than_one_incomplete"] == 0
    assert report["start_events"] == report["started"] == report["completed"]


def test_purge_measures_every_batch(reports: dict[str, dict]) -> None:
    report = reports["purge"]
    assert report["rows"] == 100 + 198 + 100 + 4 + 1 + 1
    assert report["batches"] >= report["rows"] // 60
    assert 0 < report["longest_batch"] <= report["purge_seconds"]


def test_batches_and_memory_report_each_variant_and_size(reports: dict[str, dict]) -> None:
    assert reports["batches"]["rows"] == 10 * (1 + 1 + 5 + 4 + 5 + 8)
    assert {name: r["n"] for name, r in reports["batches"]["single"].items()} == {
        "delete_flow": 10, "DELETE, audited": 10, "DELETE, unaudited": 10}
    assert [p["ids"] for p in reports["memory"]["points"]] == [5, 20]
    assert all(p["delete_max_rss_mb"] > 10 for p in reports["memory"]["points"])


def test_the_http_layer_is_timed_beside_the_sql_calls(reports: dict[str, dict]) -> None:
    report = reports["http"]
    assert sorted(report["results"]) == ["1 client", "3 clients", "3 clients, 2 server processes"]
    assert {name: r["n"] for name, r in report["results"]["1 client"].items()} == {
        "flow_gate (SQL)": 8, "GET /flows/gate": 8, "start_import + delete_flow (SQL)": 8,
        "POST /imports + DELETE /flows/{id}": 8}
    assert all(r["n"] == 3 * 2 for label in ("3 clients", "3 clients, 2 server processes")
               for r in report["results"][label].values())
    assert report["scrape"]["GET /metrics"]["n"] == 20 and report["flows"] >= 200 + 10  # every flow of the database


def test_record_replaces_only_its_own_section(tmp_path: Path) -> None:
    page = tmp_path / "b.md"
    page.write_text("a\n<!-- bench:gate:start -->\nold\n<!-- bench:gate:end -->\nz\n")
    bench.record("gate", "new", page)
    assert page.read_text() == "a\n<!-- bench:gate:start -->\nnew\n<!-- bench:gate:end -->\nz\n"
    with pytest.raises(SystemExit, match="no <!-- bench:purge:start -->"):
        bench.record("purge", "x", page)


def test_ingest_loads_every_variant_in_both_rounds(reports: dict[str, dict]) -> None:
    report = reports["ingest"]
    assert (report["records"], report["assets"], report["edges"]) == (300, 40, 2 * 40 - 3)
    for round_ in ("no statistics", "analyzed"):
        variants = report["medians"][round_]
        assert set(variants) == {"bulk", "insert", "keys (copy)", "keys (insert)", "plain copy"}
        tables = {"raw_import_records", "assets", "asset_dependencies"}
        assert all(set(times) == tables for name, times in variants.items() if name != "bulk")
        assert set(variants["bulk"]) == tables | {"restore", "reload", "restore WAL MB", "reload WAL MB"}
        assert variants["bulk"]["restore"] > 0 and variants["bulk"]["reload"] > 0
        assert variants["bulk"]["restore WAL MB"] > 0 and variants["bulk"]["reload WAL MB"] > 0
        # Each run's ratio is taken between loads made side by side; the bases are 1 against themselves.
        paired = report["paired"][round_]
        assert set(paired) == set(variants) and all(set(paired[v]) == set(variants[v]) for v in variants)
        assert paired["keys (copy)"] == paired["keys (insert)"] == {t: 1.0 for t in tables}
        assert paired["bulk"]["reload"] == 1.0  # the restore is set beside the reload, in the same run
        assert paired["bulk"]["reload WAL MB"] == 1.0
        assert all(r > 0 for ratios in paired.values() for r in ratios.values())


def test_ingest_ratios_cancel_the_cost_of_going_second() -> None:
    # A load compared with its base at 1.10x, each run's second load 1.2x dearer: runs alternate who goes first.
    runs = [1.1 / 1.2, 1.1 * 1.2, 1.1 / 1.2, 1.1 * 1.2, 1.1 / 1.2]
    assert [round(r, 9) for r in common.crossover(runs)] == [1.1, 1.1]  # the odd run out is left out
    assert common.crossover([1.3]) == [1.3]
    assert round(statistics.median(runs[:3]), 9) == round(1.1 / 1.2, 9)  # what a median of single runs said


def test_ingest_runs_start_on_empty_tables_and_keep_the_truncate_guard(pyflows_server: ServerInfo) -> None:
    dsn = pyflows_server.conninfo(pyflows_server.maintenance_dbname)
    with ingest.scratch_database(dsn, suffix="empty") as scratch, psycopg.connect(scratch, autocommit=True) as owner:
        ingest.make_copies(owner)
        client, engagement = ingest.tenant(0x1B), ingest.tenant(0x1B00)
        for schema in ("pyflows", "bench_keys", "bench_plain"):
            flow, _ = ingest.new_flow(owner, client, engagement, schema)
            with owner.transaction():  # a context, for pyflows' tenant check
                owner.execute("select pyflows.set_context(%s, %s, 'bench')", (client, engagement))
                ingest.copy_rows(owner, schema, "assets", [(client, engagement, flow, "a", "server", None, "{}")])
        counted = sql.SQL(" + ").join(sql.SQL("(select count(*) from {})").format(sql.Identifier(schema, name))
                                      for schema in ("pyflows", "bench_keys", "bench_plain") for name in ingest.NAMES)
        assert owner.execute(sql.SQL("select {}").format(counted)).fetchone()[0] == 3
        ingest.empty_tables(owner)
        assert owner.execute(sql.SQL("select {}").format(counted)).fetchone()[0] == 0
        with pytest.raises(psycopg.Error, match="would remove rows without auditing them"):
            owner.execute("truncate pyflows.assets cascade")


def test_race_keeps_one_incomplete_flow_with_pyflows(reports: dict[str, dict]) -> None:
    results = reports["race"]["results"]
    assert results["pyflows"]["incomplete_after"] == results["pyflows"]["started"] == 1
    assert results["pyflows"]["refused"] == results["pyflows"]["attempts"] - 1 > 0
    assert results["app-level check"]["incomplete_after"] == results["app-level check"]["started"] >= 1


def test_peers_delete_the_same_flow_every_way(reports: dict[str, dict]) -> None:
    report = reports["peers"]
    assert report["rows"] == 20 + 2 * 19 + 20 + 4 + 1 + 1
    assert list(report["results"]) == ["unaudited cascade", "leaf-first DELETEs", 'ORM, cascade="all, delete-orphan"',
                                       "ORM, no edge collections", "ORM, passive_deletes=True", "delete_flow"]
    assert all(r["min"] > 0 for r in report["results"].values())
    sent = report["statements"]  # the lazy ORM loads every collection and deletes row by row
    assert sent['ORM, cascade="all, delete-orphan"'] > sent["ORM, no edge collections"] > \
        sent["ORM, passive_deletes=True"] >= 1


@pytest.mark.citus
def test_scale_puts_one_node_beside_the_cluster(pyflows_server: ServerInfo, pyflows_citus: CitusCluster | None) -> None:
    if pyflows_citus is None:
        pytest.skip("needs the Citus cluster (PYFLOWS_TEST_CITUS)")
    report = bench.main(["--dsn", pyflows_server.conninfo(pyflows_server.maintenance_dbname), "--suite", "scale",
                         "--citus", pyflows_citus.scripts, *TINY])["scale"]
    assert report["layout"]["engine"] == "citus" and report["layout"]["pending"] == []
    for engine in ("single", "citus"):
        assert report[engine]["gate"]["results"]["flow_gate"]["n"] == 20
        assert report[engine]["concurrency"]["contexts_with_more_than_one_incomplete"] == 0
        assert report[engine]["concurrency"]["start_events"] == report[engine]["concurrency"]["completed"] > 0
        # the audited delete and the unaudited cascade ran on both engines, on flows of the same size
        assert report[engine]["delete"]["rows"] > 50 and report[engine]["delete"]["results"]["delete_flow"]["n"] == 1
    assert report["single"]["delete"]["rows"] == report["citus"]["delete"]["rows"]
    assert "Citus / one" in "\n".join(scale.markdown(report))


needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None, reason="the instructions suite needs valgrind")


@needs_valgrind
def test_instructions_count_each_variant_beside_the_bare_delete() -> None:
    report = instructions.run(calls=2, warm=1, flows=6, large_assets=40, ingest_records=60, ingest_assets=12)
    results = report["results"]
    assert list(results) == ["DELETE, unaudited", "DELETE, audited", "delete_flow", "delete_flows"]
    assert results["DELETE, unaudited"]["ratio"] == pytest.approx(1.0)
    # The audit costs instructions: a count that ignored the triggers or the API would not show it.
    assert results["delete_flow"]["per_call"] > results["DELETE, audited"]["per_call"] / 2 > 0
    assert results["DELETE, audited"]["ratio"] > 1.5
    assert "instructions per flow" in "\n".join(instructions.markdown(report))
    large = report["large"]
    assert large["rows"] == 4 * 40 + 4 and list(large["results"]) == list(instructions.LARGE_VARIANTS)
    assert large["results"]["DELETE, unaudited"]["ratio"] == pytest.approx(1.0)
    # The triggers archive every row, writing the archive is counted at all, and delete_flow costs more
    # than the audited DELETE (it counts the impact first).
    assert large["results"]["DELETE, audited"]["ratio"] > 1.5
    assert large["results"]["archive only"]["instructions"] > 0
    assert large["results"]["delete_flow"]["instructions"] > large["results"]["DELETE, audited"]["instructions"]
    assert "A large flow's delete, in instructions" in "\n".join(instructions.markdown(report))
    # Loading: every table's rows, both ways, in both rounds; a load that wrote nothing would count next to
    # nothing (a failed statement fails the count itself).
    ingest = report["ingest"]
    assert ingest["rows"] == {"raw_import_records": 60, "assets": 12, "asset_dependencies": 21}
    for round_ in ("no statistics", "analyzed"):
        for variant in ("bulk", "keys (copy)"):
            assert all(ingest["results"][round_][variant][t] > 2_000 * n for t, n in ingest["rows"].items())
    assert "Loading a flow, in the server's instructions" in "\n".join(instructions.markdown(report))


@needs_valgrind
def test_instructions_refuse_a_run_in_which_a_statement_failed() -> None:
    bin_dir = instructions.bindir()
    with instructions.cluster(bin_dir) as root:
        instructions._run([str(bin_dir / "postgres"), "--single", "-D", str(root / "base"), "postgres"],
                          stdin="create database bench;\n")
        assert instructions.count(bin_dir, root, "select 1;\n") > 0
        with pytest.raises(RuntimeError, match="a statement failed under valgrind: ERROR:  function nosuch"):
            instructions.count(bin_dir, root, "select 1;\nselect nosuch();\n")
