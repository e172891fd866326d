"""A tiny run of the benchmark suite, so that it cannot rot (the real runs are in docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from bench import run as bench
from pyflows.testing import ServerInfo


def test_the_delete_benchmark_runs_and_reports_ratios(pyflows_server: ServerInfo) -> None:
    report = bench.main(["--dsn", pyflows_server.conninfo(pyflows_server.maintenance_dbname),
                         "--assets", "50", "--runs", "1"])
    assert report["rows"] == 50 + 2 * 49 + 50 + 4 + 1 + 1
    assert set(report["results"]) == {"unaudited", "delete_flow", "row_jsonb", "impact"}
    assert report["results"]["unaudited"]["ratio"] == pytest.approx(1.0)
    assert all(r["min"] > 0 for r in report["results"].values())
    assert "| delete_flow |" in bench.markdown(report)
