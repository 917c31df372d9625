"""An account's live state is visible in one place."""

from __future__ import annotations

import asyncpg

from engine.account_model import Account
from engine.store.account_status import account_status
from engine.store.accounts import AccountStore


class TestAccountStatus:
    async def test_state_from_every_table(self, db_pool: asyncpg.Pool) -> None:
        """Phone line, supervision miss and pending entries come back together; unknown accounts are None."""
        await AccountStore(db_pool).upsert_many([Account(account="ABC")])
        await db_pool.execute(
            "INSERT INTO account_state (account, phone_line_failed) VALUES ('ABC', true)"
        )
        await db_pool.execute(
            "INSERT INTO supervision (account, deadline, missed) VALUES ('ABC', now(), true)"
        )
        await db_pool.execute(
            "INSERT INTO pending_entries (account, partition, zone, deadline, state) VALUES ('ABC', 1, 3, now(), 'pending')"
        )
        status = await account_status(db_pool, "abc")
        assert status is not None
        assert status.phone_line_failed
        assert status.panel_not_responding
        assert [(e.partition, e.zone, e.state) for e in status.entries] == [(1, 3, "pending")]
        assert status.deliveries_pending == 0
        assert await account_status(db_pool, "NOPE") is None
