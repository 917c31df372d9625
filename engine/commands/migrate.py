"""``alarmrelay migrate``: apply the schema migrations (``serve`` also does it at start)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from engine.logging_setup import configure_logging
from engine.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    """Add ``migrate``."""
    parser = subparsers.add_parser(
        "migrate",
        help="apply the database schema migrations",
        description="Apply pending migrations from engine/migrations/ to the configured database "
        "(the embedded one under data_dir when no database URL is set).",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.set_defaults(func=run)


async def migrate(settings: Settings) -> tuple[str, ...]:
    """Open the configured database, which applies pending migrations; returns their names."""
    from engine.database import open_database  # noqa: PLC0415 - keeps `alarmrelay --help` fast

    async with open_database(settings) as db:
        return db.migrations_applied


def run(args: argparse.Namespace) -> int:
    """``migrate [--config FILE]``."""
    settings = load_settings(args.config)
    configure_logging(level="warning", fmt="console")  # stderr; the summary goes to stdout
    applied = asyncio.run(migrate(settings))
    if applied:
        print(f"applied {len(applied)} migrations: {', '.join(applied)}")
    else:
        print("database schema is up to date")
    return 0
