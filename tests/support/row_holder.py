"""A lock held by another transaction, as an operator's transaction left open in psql."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

# A delivery lane's lock (an advisory lock, as a dispatcher's failure write takes it): $1 the lane.
HOLD_LANE_SQL = "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))"


@contextlib.asynccontextmanager
async def holding(pool: asyncpg.Pool, sql: str, *args: object) -> AsyncIterator[None]:
    """Run ``sql`` (``SELECT … FOR UPDATE``, :data:`HOLD_LANE_SQL`) in a transaction of its own connection, kept open
    until the block ends, then rolled back (its locks released)."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute(sql, *args)
            yield
        finally:
            await transaction.rollback()


_LANE_LOCK_WAITS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def lane_lock_waited_for(pool: asyncpg.Pool, task: asyncio.Future[Any]) -> bool:
    """Whether a transaction of this database waited for an advisory lock (a delivery lane's)
    while ``task`` ran, looked at until it is done: such a wait lasts the lock timeout (500 ms),
    many times the look's period."""
    while not task.done():
        if await pool.fetchval(_LANE_LOCK_WAITS):
            return True
        await asyncio.sleep(0.005)
    return False
