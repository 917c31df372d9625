"""``alarmrelay accounts import FILE`` / ``accounts export``: accounts in bulk as JSON.

The document is a JSON list of objects with exactly the fields of
:class:`engine.account_model.Account` (docs/configuration.md, "Accounts import/export format").
Import validates the whole file before writing anything, then upserts by account number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import msgspec

from engine.account_model import STATION_ACCOUNT, Account
from engine.errors import UTF8_BOM, UserFacingError
from engine.logging_setup import configure_logging
from engine.settings import TEN_YEARS_S, Settings, load_settings, validation_problem
from protocols.dc09_crypto import AesKey
from protocols.signal import Category

_HEX = frozenset("0123456789ABCDEF")
_UL_REQUIRED = (Category.ALARMS, Category.PANEL_NOT_RESPONDING)
_encoder = msgspec.json.Encoder()


def register(subparsers: Any) -> None:
    """Add ``accounts import`` and ``accounts export``."""
    parser = subparsers.add_parser("accounts", help="import or export customer accounts (JSON)")
    sub = parser.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    imp = sub.add_parser(
        "import",
        help="insert or update accounts from a JSON file",
        description="Insert or update accounts (by account number) from a JSON list of accounts.",
    )
    imp.add_argument("file", type=Path, help="JSON list of accounts ('-' for standard input)")
    imp.add_argument("--config", type=Path, default=None, help="TOML settings file")
    imp.add_argument(
        "--overwrite-customer-accounts",
        action="store_true",
        help="also replace accounts of active admin-API customers (refused by default: the "
        "API manages them, and its customer documents would no longer describe them)",
    )
    imp.set_defaults(func=run_import)
    exp = sub.add_parser("export", help="write every account as a JSON list")
    exp.add_argument(
        "--output", "-o", type=Path, default=None, help="file to write (default: standard output)"
    )
    exp.add_argument("--config", type=Path, default=None, help="TOML settings file")
    exp.set_defaults(func=run_export)


def account_problem(account: Account) -> str | None:
    """What is wrong with an account beyond its types (the first problem), or None."""
    number = account.account
    if not 1 <= len(number) <= 16 or not set(number.upper()) <= _HEX:
        # PROTOCOLS.md §1: 3-16 hex characters; public test vectors also use "0".
        return f"account: must be 1-16 hex characters (0-9, A-F), got {number!r}"
    texts = {
        "name": account.name,
        "module_serial": account.module_serial,
        "forwarding.primary_receiver": account.forwarding.primary_receiver,
        "forwarding.backup_receiver": account.forwarding.backup_receiver,
    }
    for field, text in texts.items():
        if text is not None and "\x00" in text:
            # PostgreSQL stores no NUL in text: it refused the whole file, naming no entry
            return f"{field}: contains a NUL character"
    if account.key is not None:
        try:
            AesKey.parse(account.key, account.key_format.value)
        except ValueError as exc:
            return f"key: {exc}"
    if account.supervision_interval_s < 200:
        return "supervision_interval_s: must be at least 200 (UL's shortest interval)"
    for name in ("supervision_interval_s", "timestamp_past_s", "timestamp_future_s"):
        value = getattr(account, name)
        if value is not None and value < 0:
            return f"{name}: must not be negative"
        if value is not None and value > TEN_YEARS_S:
            # added to a signal's time, as the settings' durations (and past the column's
            # range the database refused the whole file, naming no entry)
            return f"{name}: must be at most {TEN_YEARS_S} seconds (ten years)"
    if account.local_time_zone is not None:
        try:
            ZoneInfo(account.local_time_zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
            return f"local_time_zone: unknown time zone {account.local_time_zone!r}"
    forwarding = account.forwarding
    station_account = forwarding.station_account
    if station_account is not None and not STATION_ACCOUNT.fullmatch(station_account):
        # As the admin API requires: every frame to the station carries it (PROTOCOLS.md §1),
        # so an account the format cannot carry would dead-letter each of its deliveries.
        return (
            "forwarding.station_account: must be 3-16 hex characters (0-9, A-F), "
            f"got {station_account!r}"
        )
    if forwarding.ul_listed:
        missing = [c.value for c in _UL_REQUIRED if c not in forwarding.categories]
        if missing:
            # PRODUCT.md: on a UL/ETL installation these cannot be deselected.
            return f"forwarding.categories: a UL-listed account must forward {', '.join(missing)}"
    if forwarding.two_way_voice and not account.two_way_voice_capable:
        return "forwarding.two_way_voice: the module is not two-way-voice capable"
    if account.dialer_delay_s is not None and not 0 <= account.dialer_delay_s <= 600:
        return "dialer_delay_s: must be 0-600 seconds"
    return None


async def voice_receiver_problems(
    conn: asyncpg.Connection, accounts: Sequence[Account]
) -> list[str]:
    """Accounts with two-way voice whose primary receiver is unknown or does not support it.

    (The service package, the third rule, is checked by :func:`voice_package_problems`.)
    """
    wanted = {
        a.forwarding.primary_receiver
        for a in accounts
        if a.forwarding.two_way_voice and a.forwarding.primary_receiver is not None
    }
    rows = (
        await conn.fetch(
            "SELECT name, two_way_voice FROM receivers WHERE name = ANY($1::text[])", sorted(wanted)
        )
        if wanted
        else []
    )
    voice = {r["name"]: r["two_way_voice"] for r in rows}
    problems = []
    for account in accounts:
        receiver = account.forwarding.primary_receiver
        if not account.forwarding.two_way_voice:
            continue
        if receiver is None or receiver not in voice:
            problems.append(
                f"account {account.account}: forwarding.two_way_voice: no receiver {receiver!r} is registered"
            )
        elif not voice[receiver]:
            problems.append(
                f"account {account.account}: forwarding.two_way_voice: the receiver {receiver} does not support two-way voice"
            )
    return problems


async def voice_package_problems(
    conn: asyncpg.Connection, accounts: Sequence[Account]
) -> list[str]:
    """Accounts with two-way voice that belong to a live admin-API customer whose service
    package (base and add-ons) does not include it. Accounts of no customer have no package."""
    wanted = [a.account for a in accounts if a.forwarding.two_way_voice]
    if not wanted:
        return []
    rows = await conn.fetch(
        """
        SELECT c.account FROM customers c
        WHERE c.status = 'active' AND c.account = ANY($1::text[]) AND NOT EXISTS (
            SELECT 1 FROM service_packages p
            WHERE 'two_way_voice' = ANY(p.includes)
              AND (p.code = c.document->'package'->>'base'
                   OR p.code IN (SELECT jsonb_array_elements_text(
                                     coalesce(c.document->'package'->'addons', '[]'::jsonb)))))
        ORDER BY c.account
        """,
        wanted,
    )
    return [
        f"account {r['account']}: forwarding.two_way_voice: the customer's service package does "
        "not include two-way voice"
        for r in rows
    ]


def parse_accounts(data: bytes, source: str) -> list[Account]:
    """Decode and validate a JSON list of accounts; errors name the entry index and the field."""
    try:
        items = msgspec.json.decode(data.removeprefix(UTF8_BOM))
    except msgspec.DecodeError as exc:
        raise UserFacingError(f"{source}: invalid JSON: {exc}") from None
    except RecursionError:  # thousands of "[" decoded as Any
        raise UserFacingError(f"{source}: invalid JSON: nested too deeply") from None
    if not isinstance(items, list):
        raise UserFacingError(f"{source}: expected a JSON list of accounts")
    accounts: list[Account] = []
    numbers: dict[str, int] = {}
    serials: dict[str, int] = {}
    for index, item in enumerate(items):
        where = f"{source}: entry {index}"
        try:
            account = msgspec.convert(item, Account)
        except msgspec.ValidationError as exc:
            path, text = validation_problem(exc)
            if text == "unknown key":
                text = "unknown field"
            raise UserFacingError(
                f"{where}: {path}: {text}" if path else f"{where}: {text}"
            ) from None
        problem = account_problem(account)
        if problem is not None:
            raise UserFacingError(f"{where} (account {account.account}): {problem}")
        if account.account != account.account.upper():
            # Stored upper case, as the admin API stores it: every check against the database
            # (an admin-API customer's account, its package) must see the number it will replace.
            account = msgspec.structs.replace(account, account=account.account.upper())
        station_account = account.forwarding.station_account
        if station_account is not None and station_account != station_account.upper():
            # Stored as the admin API stores it: the frame's #acct takes upper case only.
            account = msgspec.structs.replace(
                account,
                forwarding=msgspec.structs.replace(
                    account.forwarding, station_account=station_account.upper()
                ),
            )
        number = account.account
        if number in numbers:
            raise UserFacingError(f"{where}: account {number} is also entry {numbers[number]}")
        numbers[number] = index
        if account.module_serial is not None:
            if account.module_serial in serials:
                raise UserFacingError(
                    f"{where}: module_serial {account.module_serial} is also entry "
                    f"{serials[account.module_serial]}"
                )
            serials[account.module_serial] = index
        accounts.append(account)
    return accounts


def _listed(items: Sequence[str], limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


async def customer_account_problems(
    conn: asyncpg.Connection, accounts: Sequence[Account]
) -> list[str]:
    """Accounts that an active admin-API customer manages (its document is their source)."""
    rows = await conn.fetch(
        "SELECT account, id FROM customers WHERE status = 'active' AND account = ANY($1::text[]) "
        "ORDER BY account",
        [a.account for a in accounts],
    )
    return [f"account {r['account']} is customer {r['id']}'s" for r in rows]


async def undeliverable_receivers(
    conn: asyncpg.Connection, accounts: Sequence[Account]
) -> tuple[list[str], list[str]]:
    """Receivers the accounts forward to that no station has, and those that are phone
    receivers (stored, but not delivered to), each with its count of accounts."""
    kinds = {r["name"]: r["kind"] for r in await conn.fetch("SELECT name, kind FROM receivers")}
    missing: dict[str, int] = {}
    phone: dict[str, int] = {}
    for account in accounts:
        forwarding = account.forwarding
        for name in (forwarding.primary_receiver, forwarding.backup_receiver):
            if name is None or kinds.get(name) == "ip":
                continue
            found = phone if kinds.get(name) == "phone" else missing
            found[name] = found.get(name, 0) + 1
    return (
        [f"{name!r} ({count} accounts)" for name, count in sorted(missing.items())],
        [f"{name!r} ({count} accounts)" for name, count in sorted(phone.items())],
    )


async def import_accounts(
    settings: Settings, accounts: Sequence[Account], *, overwrite_customer_accounts: bool = False
) -> int:
    """Upsert ``accounts`` into the configured database; returns how many.

    Refused, writing nothing: two-way voice an account cannot have, and (unless
    ``overwrite_customer_accounts``) accounts of active admin-API customers. Receivers that no
    station has yet are a warning on stderr, after the import.
    """
    from engine.database import open_database  # noqa: PLC0415 - keeps `alarmrelay --help` fast
    from engine.store.accounts import AccountStore  # noqa: PLC0415

    async with open_database(settings) as db:
        async with db.pool.acquire() as conn:
            managed = (
                []
                if overwrite_customer_accounts
                else await customer_account_problems(conn, accounts)
            )
            problems = await voice_receiver_problems(conn, accounts)
            problems += await voice_package_problems(conn, accounts)
            missing, phone = await undeliverable_receivers(conn, accounts)
        if managed:
            raise UserFacingError(
                f"{_listed(managed)}: change them through the admin API (/v1/customers/ID), or "
                "pass --overwrite-customer-accounts to replace them anyway; nothing was imported"
            )
        if problems:
            raise UserFacingError(f"two-way voice is not available: {_listed(problems)}")
        try:
            count = await AccountStore(db.pool).upsert_many(accounts)
        except asyncpg.UniqueViolationError as exc:
            raise UserFacingError(
                f"a module serial in the file already belongs to another account ({exc.detail}); "
                "nothing was imported"
            ) from None
        if missing:
            print(
                f"alarmrelay: warning: no station has the receivers {_listed(missing)}: until "
                "they are added (alarmrelay stations import, or the admin API), an account "
                "delivers through its other receiver, or keeps its signals in the outbox if it "
                "has none",
                file=sys.stderr,
            )
        if phone:
            print(
                f"alarmrelay: warning: the receivers {_listed(phone)} are phone receivers: "
                "alarmrelay cannot deliver to them without a telephony gateway, so an account "
                "delivers through its other receiver, or keeps its signals in the outbox if it "
                "has none",
                file=sys.stderr,
            )
        return count


async def export_accounts(settings: Settings, out: BinaryIO) -> int:
    """Write every account as a JSON list to ``out``, streaming; returns how many."""
    from engine.database import open_database  # noqa: PLC0415 - keeps `alarmrelay --help` fast
    from engine.store.accounts import AccountStore, InvalidAccountRow  # noqa: PLC0415

    count = 0
    async with open_database(settings) as db:
        out.write(b"[")
        try:
            async for account in AccountStore(db.pool).iter_all():
                out.write(b",\n  " if count else b"\n  ")
                out.write(_encoder.encode(account))
                count += 1
        except InvalidAccountRow as exc:
            raise UserFacingError(
                f"account {exc.account} cannot be exported: {exc.reason} (a row this version "
                "cannot read: a manual edit, or a newer engine's; fix the row, or export with "
                "the newer engine)"
            ) from None
        out.write(b"\n]\n" if count else b"]\n")
    return count


def run_import(args: argparse.Namespace) -> int:
    """``accounts import FILE``."""
    if str(args.file) == "-":
        data, source = sys.stdin.buffer.read(), "<stdin>"
    else:
        try:
            data, source = args.file.read_bytes(), str(args.file)
        except OSError as exc:
            raise UserFacingError(f"cannot read {args.file}: {exc.strerror}") from None
    accounts = parse_accounts(data, source)
    settings = load_settings(args.config)
    configure_logging(level="warning", fmt="console")  # stderr: stdout is the command's output
    count = asyncio.run(
        import_accounts(
            settings, accounts, overwrite_customer_accounts=args.overwrite_customer_accounts
        )
    )
    print(f"imported {count} accounts")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``accounts export [--output FILE]``."""
    settings = load_settings(args.config)
    configure_logging(level="warning", fmt="console")  # stderr: stdout may be the document
    if args.output is None:
        asyncio.run(export_accounts(settings, sys.stdout.buffer))
        sys.stdout.flush()
        return 0
    try:
        with whole_file(args.output) as out:
            count = asyncio.run(export_accounts(settings, out))
    except OSError as exc:
        raise UserFacingError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"exported {count} accounts to {args.output}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def whole_file(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for writing, replaced only once everything was written: an export that
    fails (the database out of reach, gone mid-way) leaves the previous file as it was. A path
    that is not a regular file (``/dev/stdout``, a pipe) is written directly."""
    if path.exists() and not path.is_file():
        with path.open("wb") as out:
            yield out
        return
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        # Readable by its owner only (mkstemp's 0600): the file holds the modules' AES keys.
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
