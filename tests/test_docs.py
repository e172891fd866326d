"""The documentation says what the code does: README commands, CI, exit codes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from pyflows.cli import Exit, cli

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
