"""The ``accounts`` table: bulk upsert (import), lookups, streaming load for the directory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from engine.account_model import Account, ForwardingSettings, KeyFormat

_COLUMNS = (
    "account, module_serial, name, key, key_format, timestamp_past_s, timestamp_future_s, "
    "local_time_zone, supervision_interval_s, two_way_voice_capable, virtual, forwarding"
)
_forwarding_encoder = msgspec.json.Encoder()
_forwarding_decoder = msgspec.json.Decoder(ForwardingSettings)


def account_from_row(row: Any) -> Account:
    """An Account from a row with the columns of ``_COLUMNS``."""
    forwarding = row["forwarding"]
    return Account(
        account=row["account"],
        module_serial=row["module_serial"],
        name=row["name"],
        key=row["key"],
        key_format=KeyFormat(row["key_format"]),
        timestamp_past_s=row["timestamp_past_s"],
        timestamp_future_s=row["timestamp_future_s"],
        local_time_zone=row["local_time_zone"],
        supervision_interval_s=row["supervision_interval_s"],
        two_way_voice_capable=row["two_way_voice_capable"],
        virtual=row["virtual"],
        forwarding=_forwarding_decoder.decode(forwarding)
        if forwarding and forwarding != "{}"
        else ForwardingSettings(),
    )


def _row(account: Account) -> tuple[Any, ...]:
    return (
        account.account.upper(),
        account.module_serial,
        account.name,
        account.key,
        account.key_format.value,
        account.timestamp_past_s,
        account.timestamp_future_s,
        account.local_time_zone,
        account.supervision_interval_s,
        account.two_way_voice_capable,
        account.virtual,
        _forwarding_encoder.encode(account.forwarding).decode(),
    )


class AccountStore:
    """Accounts in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert_many(self, accounts: Sequence[Account], *, batch: int = 5000) -> int:
        """Insert or update accounts (by account number) in batches; returns the count."""
        sql = (
            f"INSERT INTO accounts ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12::jsonb) "
            "ON CONFLICT (account) DO UPDATE SET module_serial = EXCLUDED.module_serial, name = EXCLUDED.name, "
            "key = EXCLUDED.key, key_format = EXCLUDED.key_format, timestamp_past_s = EXCLUDED.timestamp_past_s, "
            "timestamp_future_s = EXCLUDED.timestamp_future_s, local_time_zone = EXCLUDED.local_time_zone, "
            "supervision_interval_s = EXCLUDED.supervision_interval_s, "
            "two_way_voice_capable = EXCLUDED.two_way_voice_capable, virtual = EXCLUDED.virtual, "
            "forwarding = EXCLUDED.forwarding, updated_at = now()"
        )
        async with self._pool.acquire() as conn:
            for start in range(0, len(accounts), batch):
                async with conn.transaction():
                    await conn.executemany(sql, [_row(a) for a in accounts[start : start + batch]])
        return len(accounts)

    async def get(self, account: str) -> Account | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM accounts WHERE account = $1", account.upper()
        )
        return account_from_row(row) if row is not None else None

    async def get_by_serial(self, serial: str) -> Account | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM accounts WHERE module_serial = $1", serial
        )
        return account_from_row(row) if row is not None else None

    async def all(self) -> list[Account]:
        """Every account, streamed with a cursor (a million rows do not sit in one result)."""
        out: list[Account] = []
        async with self._pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(
                f"SELECT {_COLUMNS} FROM accounts ORDER BY account", prefetch=5000
            ):
                out.append(account_from_row(row))
        return out

    async def delete(self, account: str) -> bool:
        result = await self._pool.execute(
            "DELETE FROM accounts WHERE account = $1", account.upper()
        )
        return bool(result.endswith(" 1"))

    async def contact_times(self, account: str) -> tuple[Any, Any] | None:
        """(first_contact_at, last_contact_at) of one account."""
        row = await self._pool.fetchrow(
            "SELECT first_contact_at, last_contact_at FROM accounts WHERE account = $1",
            account.upper(),
        )
        return (row["first_contact_at"], row["last_contact_at"]) if row else None
