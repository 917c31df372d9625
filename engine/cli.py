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
from engine.errors import UserFacingError, is_database_unreachable


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
    except BrokenPipeError:
        # The reader of our output went away (``| head``): not an error of ours, nor the
        # database's. Point stdout at nothing so the interpreter's final flush stays quiet.
        import os  # noqa: PLC0415 - only on this path

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE
    except Exception as exc:  # never a traceback: one line that says what happened
        message = describe_failure(exc)
        print(f"alarmrelay: error: {message}", file=sys.stderr)
        return 1 if message.startswith("unexpected") else 2


def describe_failure(exc: Exception) -> str:
    """One line for an error no command turned into a UserFacingError."""
    import asyncpg  # noqa: PLC0415 - only on this path

    first = (str(exc).splitlines() or [""])[0]
    if isinstance(exc, asyncpg.DataError):
        return f"the database refused a value: {first}"
    if isinstance(exc, OSError) and exc.filename is not None:  # a file, not the database
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time (database.command_timeout_s)"
    if is_database_unreachable(exc):
        return f"lost the connection to PostgreSQL: {first or type(exc).__name__}"
    if isinstance(exc, asyncpg.PostgresError):
        return f"the database refused the request: {first}"
    return f"unexpected {type(exc).__name__}: {first} (a bug: please report it)"


if __name__ == "__main__":
    sys.exit(main())
