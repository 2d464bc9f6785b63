"""MkDocs hook: the command-line reference, generated from the code at build time so that it cannot drift.

A page that holds the line ``<!-- cli-reference: NAME -->`` gets it replaced by

* ``settings``: one row per ``TrainConfig`` field (flag, TOML key, type, default, meaning), read from the
  field's annotation, default and ``help``/``unset`` metadata (``dualprop.training.config.settings``);
* ``experiments``: the shipped experiment files and the studies of ``dualprop experiment``;
* ``COMMAND`` (``train``, ``experiment``, ``report``, ``bench``, ``diagnose``, ``robustness``): the
  description and options of that subcommand, walked from ``dualprop.cli.build_parser()``; the
  ``TrainConfig`` settings group is referred to the settings table instead of being repeated.

The package is imported from this checkout's ``src`` (building the parser has no side effects).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[2] / "src"
MARKER = re.compile(r"^<!-- cli-reference: ([a-z-]+) -->$", re.MULTILINE)
SETTINGS_GROUP = "settings (also keys of a --config TOML file)"


def _import_source() -> None:
    if str(SOURCE) not in sys.path:
        sys.path.insert(0, str(SOURCE))


def _cell(text: str) -> str:
    """Text for one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def settings_table() -> str:
    """Every ``TrainConfig`` field as a flag of ``train`` and ``diagnose`` and a key of a TOML config."""
    _import_source()
    from dualprop.training.config import settings

    rows = [
        "| flag | TOML key | type | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for setting in settings():
        flag = "--" + setting.name.replace("_", "-")
        if setting.kind is bool:
            flag = f"{flag} / --no-{flag[2:]}"
        kind = setting.kind.__name__ + (" list" if setting.is_list else "")
        if setting.default is None:
            default = f"unset: {setting.unset}"
        elif isinstance(setting.default, bool):
            default = "on" if setting.default else "off"
        elif isinstance(setting.default, list):
            default = _code(" ".join(map(str, setting.default)))
        else:
            default = _code(str(setting.default)) if setting.default != "" else "empty"
        rows.append(f"| {_code(flag)} | {_code(setting.name)} | {kind} | {_cell(default)} | {_cell(setting.help)} |")
    return "\n".join(rows)


def experiments_table() -> str:
    """The experiment files shipped with the package and the studies ``dualprop experiment`` runs."""
    _import_source()
    from dualprop.cli import STUDIES
    from dualprop.training.experiments import experiment_names, load_experiment

    rows = ["| name | kind | what |", "|---|---|---|"]
    for name in experiment_names():
        experiment = load_experiment(name)
        runs = f"{len(experiment.configs)} configuration{'s' if len(experiment.configs) != 1 else ''}"
        rows.append(f"| {_code(name)} | {runs} | {_cell(experiment.description)} |")
    for name, description in STUDIES.items():
        rows.append(f"| {_code(name)} | study | {_cell(description)} |")
    return "\n".join(rows)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    _import_source()
    from dualprop.cli import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """How an option is written, as argparse's own help writes it: ``--flag N [N ...]``, ``--dtype {a,b}``."""
    return parser._get_formatter()._format_action_invocation(action)


def _help(action: argparse.Action) -> str:
    return (action.help or "") % {"default": action.default, "prog": "dualprop"}


def command_reference(name: str) -> str:
    """The description and option tables of one subcommand of ``dualprop``."""
    from dualprop.training.config import field_names

    parser = _subparsers()[name]
    lines = [parser.description or "", "", "```text", parser.format_usage().strip(), "```"]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        lines += ["", f"**{group.title[0].upper()}{group.title[1:]}**", ""]
        if group.title == SETTINGS_GROUP:
            lines += [
                "Every setting of the [settings table](#settings), as a flag here and a key of the "
                "`--config` file, with the same meaning.",
                "",
            ]
            actions = [a for a in actions if a.dest not in field_names()]
            if not actions:
                continue
        lines += ["| option | meaning |", "|---|---|"]
        for action in actions:
            lines.append(f"| {_code(_invocation(parser, action))} | {_cell(_help(action))} |")
    return "\n".join(lines)


def render(name: str) -> str:
    """The generated Markdown for one marker."""
    if name == "settings":
        return settings_table()
    if name == "experiments":
        return experiments_table()
    if name not in _subparsers():
        raise ValueError(f"unknown cli-reference marker {name!r}")
    return command_reference(name)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace every cli-reference marker of a page with its generated Markdown."""
    return MARKER.sub(lambda match: render(match.group(1)), markdown)
