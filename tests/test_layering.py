"""Imports flow one way: cli → analysis → training → learner → graph, network, rules, schedules, losses;
data knows nothing of learning."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dualprop"


def imported_modules(path: Path) -> set[str]:
    """Every ``dualprop…`` module a file imports (absolute or relative, at any depth of the file)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
    return {name for name in found if name.startswith("dualprop")}


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("training", ("dualprop.analysis", "dualprop.cli")),
        ("analysis", ("dualprop.cli",)),
        ("data", ("dualprop.training", "dualprop.analysis", "dualprop.cli", "dualprop.learner")),
    ],
)
def test_a_layer_imports_nothing_above_it(layer, forbidden):
    offenders = {
        f"{path.name} imports {name}"
        for path in (PACKAGE / layer).glob("*.py")
        for name in imported_modules(path)
        if name.startswith(forbidden)
    }
    assert not offenders


def test_the_import_scanner_sees_relative_and_nested_imports(tmp_path):
    source = PACKAGE / "cli.py"
    assert "dualprop.analysis" in imported_modules(source)  # imported inside functions
    assert "dualprop.data.errors" in imported_modules(PACKAGE / "data" / "imageset.py")  # from .errors import
