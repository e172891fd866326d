"""The alert rules of docs/monitoring.md: the file is the one the page shows, it parses, its rules name
only metrics /metrics exports, and (where promtool is installed: CI installs it) promtool checks the
rules and runs their unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")

import yaml  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from pyflows.http import _Snapshot  # noqa: E402
from pyflows.models import Metrics  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
RULES = DOCS / "prometheus" / "pyflows.rules.yml"


def exported_metric_names() -> set[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(Metrics({"paused": 1}, 1, Decimal(1), Decimal(300), 1, 1, Decimal(1), 1, Decimal(1),
                                        {"flow.delete": 1})))
    return set(re.findall(r"^# TYPE (\S+) ", generate_latest(registry).decode(), re.MULTILINE))


def test_the_page_shows_the_rules_file() -> None:
    page = (DOCS / "monitoring.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, re.DOTALL)
    assert RULES.read_text() in blocks


def test_the_rules_parse_and_name_only_exported_metrics() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["alert"] for r in rules} == {"PyflowsAbandonedFlows", "PyflowsFileCleanupBacklog",
                                           "PyflowsFileRemovalsFailing", "PyflowsPurgeStuck"}
    exported = exported_metric_names()
    for rule in rules:
        named = set(re.findall(r"\bpyflows_[a-z_]+", rule["expr"] + " ".join(rule["annotations"].values())))
        assert named and named <= exported, (rule["alert"], named - exported)
        assert rule["labels"]["severity"] in ("warning", "critical") and re.fullmatch(r"\d+[mh]", rule["for"])
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed")
def test_promtool_checks_the_rules_and_runs_their_tests() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", "pyflows.rules.test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout
