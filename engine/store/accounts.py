"""The ``accounts`` table: bulk upsert (import), lookups, streaming load, last contact.

Rows map one-to-one to :class:`engine.account_model.Account`; ``forwarding`` is a jsonb document
with exactly the fields of ``ForwardingSettings`` (as msgspec encodes it).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from engine.account_model import Account, ForwardingSettings, KeyFormat

_COLUMNS = (
    "account, module_serial, name, key, key_format, timestamp_past_s, timestamp_future_s, "
    "local_time_zone, supervision_interval_s, two_way_voice_capable, virtual, forwarding, "
    "dialer_delay_s"
)
# One set-based statement per batch: arrays in, unnest, upsert.
_UPSERT = f"""
INSERT INTO accounts ({_COLUMNS})
SELECT a, s, n, k, kf, tp, tf, tz, si, tw, v, f::jsonb, dd
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::int[],
            $8::text[], $9::int[], $10::bool[], $11::bool[], $12::text[], $13::int[])
     AS t(a, s, n, k, kf, tp, tf, tz, si, tw, v, f, dd)
ON CONFLICT (account) DO UPDATE SET
    module_serial = EXCLUDED.module_serial, name = EXCLUDED.name, key = EXCLUDED.key,
    key_format = EXCLUDED.key_format, timestamp_past_s = EXCLUDED.timestamp_past_s,
    timestamp_future_s = EXCLUDED.timestamp_future_s, local_time_zone = EXCLUDED.local_time_zone,
    supervision_interval_s = EXCLUDED.supervision_interval_s,
    two_way_voice_capable = EXCLUDED.two_way_voice_capable, virtual = EXCLUDED.virtual,
    forwarding = EXCLUDED.forwarding, dialer_delay_s = EXCLUDED.dialer_delay_s, updated_at = now()
"""
_TOUCH = """
UPDATE accounts a SET last_contact_at = GREATEST(a.last_contact_at, t.at),
                      first_contact_at = COALESCE(a.first_contact_at, t.at)
FROM unnest($1::text[], $2::timestamptz[]) AS t(account, at)
WHERE a.account = t.account
"""
_encoder = msgspec.json.Encoder()
_forwarding_decoder = msgspec.json.Decoder(ForwardingSettings)
_DEFAULT_FORWARDING = ForwardingSettings()
_KEY_FORMATS = {f.value: f for f in KeyFormat}


class InvalidAccountRow(ValueError):
    """A stored row that makes no :class:`Account`: a forwarding document with a field or a
    category this version does not know (a manual jsonb edit, a newer engine in a rolling upgrade).
    ``reason`` names what is wrong, never a key."""

    def __init__(self, account: str, reason: str) -> None:
        super().__init__(f"account {account}: {reason}")
        self.account = account
        self.reason = reason


OnInvalid = Callable[[InvalidAccountRow], None]
"""Told of each row that makes no Account (which is then skipped)."""


def account_from_row(row: Mapping[str, Any]) -> Account:
    """An Account from a row with the columns of ``_COLUMNS`` (forwarding as json text).

    Raises :class:`InvalidAccountRow` when the forwarding document does not decode.
    """
    try:
        forwarding = _forwarding(row["forwarding"])
    except msgspec.MsgspecError as exc:
        raise InvalidAccountRow(row["account"], f"forwarding: {exc}") from exc
    return Account(
        account=row["account"],
        module_serial=row["module_serial"],
        name=row["name"],
        key=row["key"],
        key_format=_KEY_FORMATS[row["key_format"]],
        timestamp_past_s=row["timestamp_past_s"],
        timestamp_future_s=row["timestamp_future_s"],
        local_time_zone=row["local_time_zone"],
        supervision_interval_s=row["supervision_interval_s"],
        two_way_voice_capable=row["two_way_voice_capable"],
        virtual=row["virtual"],
        forwarding=forwarding,
        dialer_delay_s=row["dialer_delay_s"],
    )


def _forwarding(document: str | None) -> ForwardingSettings:
    if document in (None, "{}"):
        return _DEFAULT_FORWARDING
    return _forwarding_decoder.decode(document)


def _columns(accounts: Sequence[Account]) -> list[list[Any]]:
    """The thirteen column arrays of ``_UPSERT`` for a batch."""
    return [
        [a.account.upper() for a in accounts],
        [a.module_serial for a in accounts],
        [a.name for a in accounts],
        [a.key for a in accounts],
        [a.key_format.value for a in accounts],
        [a.timestamp_past_s for a in accounts],
        [a.timestamp_future_s for a in accounts],
        [a.local_time_zone for a in accounts],
        [a.supervision_interval_s for a in accounts],
        [a.two_way_voice_capable for a in accounts],
        [a.virtual for a in accounts],
        [_encoder.encode(a.forwarding).decode() for a in accounts],
        [a.dialer_delay_s for a in accounts],
    ]


async def touch_contact(conn: asyncpg.Connection, contacts: Mapping[str, datetime]) -> None:
    """Record last contact (and first contact when unset) for ``{account: time}`` in one statement.

    Times only move forward. Accounts are updated in sorted order so that concurrent engines
    lock rows in the same order and cannot deadlock. Unknown accounts are ignored.
    """
    if not contacts:
        return
    accounts = sorted(contacts)
    await conn.execute(_TOUCH, accounts, [contacts[a] for a in accounts])


async def voice_accounts_on(
    conn: asyncpg.Connection | asyncpg.Pool, receivers: Sequence[str]
) -> dict[str, list[str]]:
    """``{receiver: [account, ...]}`` for the accounts with two-way voice on whose primary
    receiver is one of ``receivers`` (the ones a receiver must keep supporting it for)."""
    if not receivers:
        return {}
    rows = await conn.fetch(
        "SELECT forwarding->>'primary_receiver' AS receiver, account FROM accounts "
        "WHERE forwarding->>'primary_receiver' = ANY($1::text[]) "
        "AND (forwarding->>'two_way_voice')::boolean ORDER BY account",
        sorted(set(receivers)),
    )
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["receiver"], []).append(row["account"])
    return found


class AccountStore:
    """Accounts in PostgreSQL (through a pool)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert_many(self, accounts: Sequence[Account], *, batch: int = 5000) -> int:
        """Insert or update accounts by account number, ``batch`` per statement, all in one
        transaction (a refused row writes none of them); returns the count.

        An account number given twice counts once (the last one wins). Raises ``asyncpg.UniqueViolationError`` when a module serial already belongs to another
        account.
        """
        accounts = list({a.account.upper(): a for a in accounts}.values())
        async with self._pool.acquire() as conn, conn.transaction():
            for start in range(0, len(accounts), batch):
                await conn.execute(_UPSERT, *_columns(accounts[start : start + batch]))
        return len(accounts)

    async def get(self, account: str) -> Account | None:
        """The account with this DC-09 account number (any case), or None."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM accounts WHERE account = $1", account.upper()
        )
        return account_from_row(row) if row is not None else None

    async def get_by_serial(self, serial: str) -> Account | None:
        """The account whose module has this serial / IMEI, or None."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM accounts WHERE module_serial = $1", serial
        )
        return account_from_row(row) if row is not None else None

    async def iter_all(
        self, *, prefetch: int = 5000, on_invalid: OnInvalid | None = None
    ) -> AsyncIterator[Account]:
        """Every account in account order, streamed with a server-side cursor.

        Holds one connection and a read-only transaction (one snapshot) while iterating. A row
        that makes no Account raises :class:`InvalidAccountRow`, or with ``on_invalid`` is passed
        to it and skipped.
        """
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            async for row in conn.cursor(
                f"SELECT {_COLUMNS} FROM accounts ORDER BY account", prefetch=prefetch
            ):
                try:
                    account = account_from_row(row)
                except InvalidAccountRow as exc:
                    if on_invalid is None:
                        raise
                    on_invalid(exc)
                    continue
                yield account

    async def all(self, *, on_invalid: OnInvalid | None = None) -> list[Account]:
        """Every account, streamed from the server (the engine's directory load at start);
        ``on_invalid`` as for :meth:`iter_all`.

        The cyclic garbage collector is paused meanwhile: a million new long-lived structs would
        otherwise trigger repeated full traversals and double the load time.
        """
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return [account async for account in self.iter_all(on_invalid=on_invalid)]
        finally:
            if was_enabled:
                gc.enable()

    async def count(self) -> int:
        """How many accounts there are."""
        return int(await self._pool.fetchval("SELECT count(*) FROM accounts"))

    async def delete(self, account: str) -> bool:
        """Delete one account; True when it existed."""
        result = await self._pool.execute(
            "DELETE FROM accounts WHERE account = $1", account.upper()
        )
        return bool(result == "DELETE 1")

    async def touch_contact(self, contacts: Mapping[str, datetime]) -> None:
        """Record last/first contact for ``{account: time}`` (see :func:`touch_contact`)."""
        async with self._pool.acquire() as conn:
            await touch_contact(conn, {a.upper(): t for a, t in contacts.items()})

    async def contact_times(self, account: str) -> tuple[datetime | None, datetime | None] | None:
        """(first_contact_at, last_contact_at) of one account, or None when it does not exist."""
        row = await self._pool.fetchrow(
            "SELECT a.first_contact_at, GREATEST(a.last_contact_at, v.last_contact_at) AS last_contact_at "
            "FROM accounts a LEFT JOIN supervision v ON v.account = a.account WHERE a.account = $1",
            account.upper(),
        )
        return (row["first_contact_at"], row["last_contact_at"]) if row else None
