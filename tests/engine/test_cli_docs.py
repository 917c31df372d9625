"""docs/cli.md (and docs/station-sim.md) name every command and option of the ``alarmrelay``
parser, and no option it does not have: a flag added, renamed or removed fails here."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from engine.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _commands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command path and its parser: ("accounts", "import") → its parser."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        found[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))

    walk(build_parser(), ())
    return found


def _page(path: tuple[str, ...]) -> str:
    name = "station-sim.md" if path[:1] == ("station-sim",) else "cli.md"
    return (DOCS / name).read_text(encoding="utf-8")


class TestCliDocs:
    def test_every_command_and_option_is_documented(self) -> None:
        missing = []
        for path, parser in _commands().items():
            if not path:
                continue
            page = _page(path)
            if " ".join(path) not in page:
                missing.append(" ".join(path))
            for action in parser._actions:
                options = [o for o in action.option_strings if o not in ("-h", "--help")]
                if options and not any(
                    re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", page) for o in options
                ):
                    missing.append(f"{' '.join(path)} {options[0]}")
        assert not missing, missing

    def test_every_documented_option_exists(self) -> None:
        options = {
            option
            for parser in _commands().values()
            for action in parser._actions
            for option in action.option_strings
        }
        for name in ("cli.md", "station-sim.md"):
            named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", (DOCS / name).read_text()))
            assert named <= options, (name, named - options)
