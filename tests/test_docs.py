"""The documentation says what the code does: README commands, CI, exit codes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner

from bench.common import BENCH_ROLE
from pyflows import demo
from pyflows.cli import Exit, cli
from pyflows.connection import DEFAULT_APPLICATION_NAME
from pyflows.models import Tenant
from pyflows.testing import TEST_ROLES

ROOT = Path(__file__).resolve().parent.parent


def _shell_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", markdown, re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    blocks = _shell_blocks((ROOT / "README.md").read_text())
    demo, tests = blocks[0], blocks[1]
    assert demo.endswith("pyflows demo") and "'.[embedded]'" in demo
    assert tests.endswith("pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_cli_doc_lists_every_exit_code() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", text, re.M)}
    assert documented == {int(code) for code in Exit}


def test_every_pyflows_command_in_the_readme_exists() -> None:
    """Each `pyflows …` line of the README's shell blocks names a command the CLI has (not a group)."""
    lines = [line.split("#", 1)[0].strip() for block in _shell_blocks((ROOT / "README.md").read_text())
             for line in block.splitlines()]
    commands = [shlex.split(line.replace("<", "'<").replace(">", ">'"))
                for line in lines if line.startswith(("pyflows ", ".venv/bin/pyflows "))]
    assert len(commands) > 10
    for words in commands:
        command: click.Command = cli
        for word in words[1:]:
            if isinstance(command, click.Group) and word in command.commands:
                command = command.commands[word]
        assert not isinstance(command, click.Group), words
        assert command is not cli, words


def test_the_readme_python_runs_as_written(pyflows_dsn: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    demo.seed(pyflows_dsn)
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    monkeypatch.setenv("PYFLOWS_DSN", pyflows_dsn)
    exec(compile(block, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("blocked by ")  # the demo's Acme has a flow in progress


def test_the_readme_names_every_role_the_tests_and_benchmarks_create() -> None:
    readme = (ROOT / "README.md").read_text()
    for role in [name for name, _ in TEST_ROLES.values()] + [BENCH_ROLE, "pyflows_app", "pyflows_admin"]:
        assert f"`{role}`" in readme and role in readme.split("drop role if exists", 1)[1], role


def _listed(markdown: str, after: str) -> list[str]:
    """The backticked names of the list item that starts with ``after`` (up to the next item or paragraph)."""
    start = markdown.index(after)
    end = min(i for i in (markdown.find("\n- ", start + 1), markdown.find("\n\n", start)) if i > 0)
    return [name for name in re.findall(r"`([a-z_]+)`", markdown[start:end]) if name != "null"]


def test_documented_keys_are_what_the_code_returns(pyflows_role_dsn: Any, pyflows_dsn: str) -> None:
    """application_name values, the JSON keys docs/cli.md lists, and the demo's agent insights."""
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    named = set(re.findall(r'application_name="([^"]+)"', "".join(
        p.read_text() for p in (ROOT / "pyflows").rglob("*.py")))) | {DEFAULT_APPLICATION_NAME}
    sentence = cli_doc[cli_doc.index("Every connection sets `application_name`"):]
    assert set(re.findall(r"`(pyflows[a-z-]*)`", sentence[:sentence.index("so DBAs")])) == named

    demo.seed(pyflows_dsn)
    insights_doc = (ROOT / "docs" / "sql-api.md").read_text()
    shape = re.search(r"\| `agent_insights` \| `\[\{([a-z_, ]+)\}\]`", insights_doc)
    assert shape is not None
    with psycopg.connect(pyflows_dsn) as conn:
        insights = [i for (row,) in conn.execute("select agent_insights from pyflows.discovery_flows") for i in row]
    assert insights and all(sorted(i) == sorted(shape[1].split(", ")) for i in insights)

    client, engagement = (str(i) for i in demo.DEMO_TENANTS[0])
    base = ["--dsn", pyflows_role_dsn("app"), "flows", "--client", client, "--engagement", engagement]
    runner = CliRunner()
    flow = json.loads(runner.invoke(cli, [*base, "list", "--filter", "incomplete", "--json"]).stdout)[0]["flow_id"]
    added = runner.invoke(cli, [*base, "upload", "b.csv", "--storage-uri", "s3://u/b.csv", "--byte-size", "1",
                                "--flow", flow, "--json"])
    assert list(json.loads(added.stdout)) == sorted(_listed(cli_doc, "- `flows upload … --json`")), added.output
    events_doc = _listed(cli_doc, "- `audit list --json`")
    runner.invoke(cli, [*base, "delete", flow, "--reason", "docs", "--yes", "--force"])
    audit = ["--dsn", pyflows_role_dsn("app"), "audit", "--client", client, "--engagement", engagement]
    events = json.loads(runner.invoke(cli, [*audit, "list", "--json"]).stdout)
    assert events and all(sorted(event) == sorted(events_doc) for event in events)



def _sections(markdown: str) -> dict[str, str]:
    """sql-api.md's function sections: each documented function's name → the text of its section."""
    parts = re.split(r"^### ", markdown, flags=re.M)[1:]
    found: dict[str, str] = {}
    for part in parts:
        heading, _, body = part.partition("\n")
        for name in re.findall(r"`([a-z_]+)\(", heading):
            found[name] = body.split("\n## ", 1)[0]
    return found


def _top_level_keys(shape: str) -> list[str]:
    """The keys of a documented object such as ``{a, b: {c}, d text[]}``: a, b, d."""
    inner, depth, part, parts = shape.strip()[1:-1], 0, "", []
    for char in inner:
        depth += char in "{[("
        depth -= char in "}])"
        if char == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += char
    parts.append(part)
    return [re.match(r"\s*([a-z_]+)", p)[1] for p in parts if p.strip()]  # type: ignore[index]


def test_documented_columns_of_every_set_returning_function_are_its_columns(owner: psycopg.Connection[Any]) -> None:
    sections = _sections((ROOT / "docs" / "sql-api.md").read_text())
    checked = 0
    for name, body in sections.items():
        match = re.search(r"Columns: `([^`]+)`", body)
        if not match:
            continue
        documented = [c.split()[0] for c in match[1].replace("\n", " ").split(",")]  # names, not types
        (columns,) = owner.execute(
            "select array_agg(n order by o) from pg_proc p, unnest(p.proargnames, p.proargmodes) with ordinality "
            "as a(n, m, o) where p.pronamespace = 'pyflows'::regnamespace and p.proname = %s and a.m = 't'",
            (name,)).fetchone()
        assert columns == documented, name
        checked += 1
    assert checked >= 5


def test_documented_results_are_what_the_functions_return(tenant_a: Tenant, pyflows_connect: Any) -> None:
    """Each `Result: {…}` of docs/sql-api.md against the keys the function returns, called as an application."""
    sections = _sections((ROOT / "docs" / "sql-api.md").read_text())
    conn = pyflows_connect("app", autocommit=True)

    def call(function: str, *args: Any) -> dict[str, Any]:
        with conn.transaction():
            conn.execute("select pyflows.set_context(%s, %s, 'docs')", (tenant_a.client_id, tenant_a.engagement_id))
            placeholders = ", ".join(["%s"] * len(args))
            return dict(conn.execute(f"select pyflows.{function}({placeholders})", args).fetchone()[0])

    results: dict[str, dict[str, Any]] = {"flow_gate": call("flow_gate")}
    results["start_import"] = started = call("start_import", "a.csv", "s3://u/a.csv", 1)
    flow = started["flow_id"]
    results["add_import"] = call("add_import", flow, "b.csv", "s3://u/b.csv", 1)
    results["resume_flow"] = call("resume_flow", flow)
    results["heartbeat"] = call("heartbeat", flow)
    results["set_flow_status"] = call("set_flow_status", flow, "paused")
    results["deletion_safety"] = call("deletion_safety", flow)
    results["delete_flow"] = deleted = call("delete_flow", flow, "docs")
    results["restore_flow"] = call("restore_flow", deleted["event_id"])
    for function, returned in results.items():
        match = re.search(r"Result:\s*`(\{[^`]+\})`", sections[function]) or re.search(r"^`(\{[^`]+\})`",
                                                                                         sections[function], re.M)
        assert match, function
        assert sorted(_top_level_keys(match[1].replace("\n", " "))) == sorted(returned), function
