"""``alarmrelay accounts import FILE`` / ``accounts export``: accounts in bulk as JSON.

The JSON is a list of account objects with exactly the fields of ``engine.account_model.Account``
(see docs/accounts.md). Import validates everything before writing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from engine.account_model import Account
from engine.errors import UserFacingError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("accounts", help="import or export customer accounts (JSON)")
    sub = parser.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="insert or update accounts from a JSON file")
    imp.add_argument("file", type=Path, help="JSON list of accounts ('-' for stdin)")
    imp.add_argument("--config", type=Path, default=None, help="TOML settings file")
    imp.set_defaults(func=run_import)
    exp = sub.add_parser("export", help="write all accounts as JSON")
    exp.add_argument("--output", "-o", type=Path, default=None, help="file (default: stdout)")
    exp.add_argument("--config", type=Path, default=None, help="TOML settings file")
    exp.set_defaults(func=run_export)


def parse_accounts(data: bytes, source: str) -> list[Account]:
    """Decode and validate a JSON list of accounts, with errors naming the entry and field."""
    try:
        items = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise UserFacingError(f"{source}: invalid JSON: {exc}") from None
    if not isinstance(items, list):
        raise UserFacingError(f"{source}: expected a JSON list of accounts")
    out: list[Account] = []
    seen: dict[str, int] = {}
    serials: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            account = msgspec.convert(item, Account)
        except msgspec.ValidationError as exc:
            raise UserFacingError(f"{source}: account #{index}: {exc}") from None
        problem = _validate(account)
        if problem:
            raise UserFacingError(f"{source}: account #{index} ({account.account}): {problem}")
        number = account.account.upper()
        if number in seen:
            raise UserFacingError(
                f"{source}: account #{index}: account {number} repeats entry #{seen[number]}"
            )
        seen[number] = index
        if account.module_serial:
            if account.module_serial in serials:
                raise UserFacingError(
                    f"{source}: account #{index}: module_serial {account.module_serial} repeats entry #{serials[account.module_serial]}"
                )
            serials[account.module_serial] = index
        out.append(account)
    return out


def _validate(account: Account) -> str | None:
    from protocols.dc09_crypto import AesKey  # noqa: PLC0415

    number = account.account.upper()
    if not (1 <= len(number) <= 16) or not number.isalnum() or not number.isascii():
        return "account must be 1-16 characters 0-9, A-Z"
    if account.key is not None:
        try:
            AesKey.parse(account.key, account.key_format.value)
        except ValueError as exc:
            return f"key: {exc}"
    if account.supervision_interval_s < 200:
        return "supervision_interval_s must be at least 200 (UL 1610's shortest interval)"
    if account.local_time_zone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

        try:
            ZoneInfo(account.local_time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            return f"local_time_zone: unknown time zone {account.local_time_zone!r}"
    return None


def run_import(args: argparse.Namespace) -> int:
    from engine.database import open_database  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415
    from engine.store.accounts import AccountStore  # noqa: PLC0415

    if str(args.file) == "-":
        data, source = sys.stdin.buffer.read(), "stdin"
    else:
        try:
            data, source = args.file.read_bytes(), str(args.file)
        except OSError as exc:
            raise UserFacingError(f"cannot read {args.file}: {exc.strerror}") from None
    accounts = parse_accounts(data, source)
    settings = load_settings(args.config, os.environ)

    async def main() -> int:
        async with open_database(settings) as db:
            return await AccountStore(db.pool).upsert_many(accounts)

    count = asyncio.run(main())
    print(f"imported {count} accounts")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from engine.database import open_database  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415
    from engine.store.accounts import AccountStore  # noqa: PLC0415

    settings = load_settings(args.config, os.environ)

    async def main() -> list[Account]:
        async with open_database(settings) as db:
            return await AccountStore(db.pool).all()

    data = msgspec.json.format(msgspec.json.encode(asyncio.run(main())), indent=2)
    if args.output is None:
        sys.stdout.buffer.write(data + b"\n")
    else:
        args.output.write_bytes(data + b"\n")
        print(f"exported to {args.output}", file=sys.stderr)
    return 0
