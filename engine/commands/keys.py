"""``alarmrelay keys create --role admin|dealer|read-only [--dealer ID]``: bootstrap API keys.

The key is printed once on stdout and stored only as its SHA-256 (see engine/api/auth.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from engine.errors import UserFacingError


def register(subparsers: Any) -> None:
    """Add ``keys create``."""
    parser = subparsers.add_parser("keys", help="create admin API keys")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = sub.add_parser(
        "create",
        help="create an API key and print it once",
        description="Create an API key for the admin API. The key is printed once; only its hash is stored.",
    )
    create.add_argument("--role", required=True, choices=["admin", "dealer", "read-only"])
    create.add_argument(
        "--dealer", type=int, default=None, help="dealer id (required for --role dealer)"
    )
    create.add_argument("--label", default=None, help="a note to recognise the key by")
    create.add_argument("--config", type=Path, default=None, help="TOML settings file")
    create.set_defaults(func=run_create)


def run_create(args: argparse.Namespace) -> int:
    """``keys create``."""
    from engine.api import audit  # noqa: PLC0415
    from engine.api.api_keys import MAX_LABEL_LENGTH, create_audited_key  # noqa: PLC0415
    from engine.database import open_database  # noqa: PLC0415
    from engine.logging_setup import configure_logging  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415

    if args.role == "dealer" and args.dealer is None:
        raise UserFacingError("--role dealer needs --dealer ID")
    if args.role == "admin" and args.dealer is not None:
        raise UserFacingError("an admin key has no dealer: drop --dealer")
    if args.label is not None and len(args.label) > MAX_LABEL_LENGTH:
        raise UserFacingError(f"--label is at most {MAX_LABEL_LENGTH} characters")
    settings = load_settings(args.config)
    configure_logging(level="warning", fmt="console")

    async def main() -> tuple[int, str]:
        async with open_database(settings) as db:
            if args.dealer is not None and not await db.pool.fetchval(
                "SELECT true FROM dealers WHERE id = $1", args.dealer
            ):
                raise UserFacingError(f"no dealer with id {args.dealer}")
            async with db.pool.acquire() as conn, conn.transaction():
                return await create_audited_key(
                    conn,
                    audit.COMMAND_LINE,
                    role=args.role,
                    dealer_id=args.dealer,
                    label=args.label,
                )

    key_id, key = asyncio.run(main())
    print(key, flush=True)  # stdout holds the key alone: KEY=$(alarmrelay keys create ...)
    print(
        f"key id {key_id}, role {args.role}: store it now, it is not shown again",
        file=sys.stderr,
    )
    return 0
