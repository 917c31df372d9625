"""The ``alarmrelay`` command line.

Subcommands live one per module in :mod:`engine.commands`; each exposes
``register(subparsers: argparse._SubParsersAction) -> None`` and sets ``func`` on its parser,
a callable ``(argparse.Namespace) -> int`` returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from typing import cast

from engine import commands
from engine.errors import UserFacingError


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with every subcommand found in :mod:`engine.commands`."""
    parser = argparse.ArgumentParser(
        prog="alarmrelay",
        description="Alarm signal ingestion (SIA DC-09, MQTT) and forwarding to monitoring stations.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"engine.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; problems the user can fix are one line on stderr, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = cast(Callable[[argparse.Namespace], int], args.func)
    try:
        return func(args)
    except UserFacingError as exc:
        print(f"alarmrelay: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
