"""``alarmrelay migrate``: apply the schema migrations (``serve`` also does it at start)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("migrate", help="apply the database schema migrations")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.database import open_database  # noqa: PLC0415 - keeps `alarmrelay --help` fast
    from engine.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config, os.environ)

    async def main() -> None:
        async with open_database(settings):
            pass  # open_database applies pending migrations

    asyncio.run(main())
    print("migrations applied")
    return 0
