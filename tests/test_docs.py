"""The documentation site's sources: the generated command-line reference says what the code accepts, every
page of the navigation exists, and nothing points at documents outside the repository."""

import argparse
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from dualprop.cli import build_parser
from dualprop.training.config import TrainConfig, field_names
from dualprop.training.experiments import experiment_names

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hook(name="cli_reference"):
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table_rows(markdown: str) -> list[list[str]]:
    """The cells of every body row of the Markdown tables in ``markdown``."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows[1:]


def test_settings_table_has_one_row_per_field_with_its_default_and_help():
    rows = _table_rows(_hook().settings_table())
    fields = dataclasses.fields(TrainConfig)
    assert [row[1] for row in rows] == [f"`{f.name}`" for f in fields]
    defaults = TrainConfig()
    for row, f in zip(rows, fields):
        assert row[4] == f.metadata["help"].replace("|", "\\|")
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            assert row[3] == ("on" if value else "off")
        elif value is None:
            assert row[3] == f"unset: {f.metadata['unset']}"
        elif isinstance(value, list):
            assert row[3] == f"`{' '.join(map(str, value))}`"
        elif value != "":
            assert row[3] == f"`{value}`"
    assert rows[0][:4] == ["`--rule`", "`rule`", "str", "`dpT`"]
    assert ["`--hidden`", "`hidden`", "int list", "`256 256`"] == rows[[r[1] for r in rows].index("`hidden`")][:4]


@pytest.mark.parametrize("command", ["train", "experiment", "report", "bench", "diagnose", "robustness"])
def test_command_reference_lists_every_option_of_the_parser(command):
    hook = _hook()
    text = hook.command_reference(command)
    (subparsers,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    parser = subparsers.choices[command]
    for group in parser._action_groups:
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if group.title == hook.SETTINGS_GROUP and action.dest in field_names():
                assert "[settings table](#settings)" in text
                assert f"`{action.option_strings[0]} " not in text  # not repeated here
            elif action.option_strings:
                assert action.option_strings[0] in text, action.option_strings
            else:
                assert f"| `{action.metavar or action.dest}" in text


def test_experiments_table_lists_every_shipped_experiment_and_study():
    text = _hook().experiments_table()
    for name in [*experiment_names(), "robustness-mlp", "noise-robustness"]:
        assert f"| `{name}` |" in text


def test_every_marker_of_the_pages_renders_and_an_unknown_one_is_refused():
    hook = _hook()
    markers = [name for page in DOCS.rglob("*.md") for name in hook.MARKER.findall(page.read_text())]
    assert {"settings", "experiments", "train"} <= set(markers)
    for name in markers:
        assert hook.render(name).strip()
    with pytest.raises(ValueError, match="unknown cli-reference marker 'nonsense'"):
        hook.render("nonsense")
    page = "intro\n<!-- cli-reference: settings -->\nafter"
    rendered = hook.on_page_markdown(page, None, None, None)
    assert "<!--" not in rendered and "| `--rule` |" in rendered and rendered.endswith("after")


def test_every_page_of_the_navigation_exists():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = re.findall(r"^\s*- (?:[^:\n]+: )?([\w/.-]+\.md)$", config, re.MULTILINE)
    assert len(pages) >= 25
    assert [page for page in pages if not (DOCS / page).is_file()] == []


def test_nothing_cites_a_document_outside_the_repository():
    sources = [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/*.py"), *DOCS.rglob("*.md"), ROOT / "README.md"]
    pattern = re.compile("DESIGN" + r"(\.md| §)")  # split so that this file does not match itself
    assert [str(path) for path in sources if pattern.search(path.read_text(encoding="utf-8"))] == []


def test_docstring_roles_are_dropped_before_inline_code_only():
    html = "see :func:<code>random_order</code> and :class:<code>Learner</code>; a ratio 1:2 and :func: alone"
    assert _hook("docstring_roles").on_page_content(html, None, None, None) == (
        "see <code>random_order</code> and <code>Learner</code>; a ratio 1:2 and :func: alone"
    )
