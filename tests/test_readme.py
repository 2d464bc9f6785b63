"""The README is a landing page whose every command runs: its Python example runs, its ``dualprop`` commands
parse, its links lead to files of the repository, and CI runs exactly its test and documentation commands."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from dualprop.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.MULTILINE | re.DOTALL)


def _commands() -> list[str]:
    """Every command of the README's shell blocks, split at ``&&``."""
    return [command.strip() for block in _blocks("bash") for line in block.splitlines() for command in line.split("&&")]


def test_readme_is_a_short_landing_page():
    assert len(README.splitlines()) <= 200
    assert _blocks("python") and _commands()


def test_python_example_trains_and_reports_a_finite_loss():
    (example,) = _blocks("python")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(example, "README.md", "exec"), {"__name__": "readme"})
    match = re.fullmatch(r"feed-forward loss after 20 steps: (\d+\.\d+)\n", output.getvalue())
    assert match is not None, output.getvalue()
    assert 0.0 < float(match.group(1)) < 2.3  # below the loss of guessing among 10 classes, ln 10


@pytest.mark.parametrize("command", [c for c in _commands() if c.startswith("dualprop ")])
def test_dualprop_commands_parse(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command == shlex.split(command)[1]


def test_every_command_is_one_the_project_knows():
    known = ("dualprop ", "python -m pip install ", "python -m pytest", "mkdocs build", "sudo apt-get install ")
    assert all(command.startswith(known) for command in _commands()), _commands()


def test_ci_runs_exactly_the_readme_test_and_docs_commands():
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    lines = [line for block in _blocks("bash") for line in block.splitlines()]
    test_line = 'python -m pip install ".[test]" && python -m pytest -q'
    docs_line = 'python -m pip install ".[docs]" && mkdocs build --strict'
    assert test_line in lines and docs_line in lines
    assert ci_lines.index(test_line) < ci_lines.index(docs_line)


def test_relative_links_lead_to_files_of_the_repository():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    relative = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert relative
    missing = [t for t in relative if not (ROOT / t).is_file()]
    assert not missing
