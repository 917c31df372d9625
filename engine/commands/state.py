"""``alarmrelay state ACCOUNT``: the account's live state (phone line, supervision, entries, queue)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import UserFacingError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "state",
        help="show an account's phone-line, supervision, Crash & Smash and delivery state (JSON)",
    )
    parser.add_argument("account", help="the module's DC-09 account number")
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.database import open_database  # noqa: PLC0415
    from engine.logging_setup import configure_logging  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415
    from engine.store.account_status import account_status  # noqa: PLC0415

    settings = load_settings(args.config, os.environ)
    configure_logging(level="warning", fmt="console")  # stderr: stdout is the JSON document

    async def main() -> Any:
        async with open_database(settings) as db:
            return await account_status(db.pool, args.account)

    status = asyncio.run(main())
    if status is None:
        raise UserFacingError(f"no account {args.account.upper()}", exit_code=1)
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(status), indent=2) + b"\n")
    return 0
