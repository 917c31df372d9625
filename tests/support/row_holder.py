"""A lock held by another transaction, as an operator's transaction left open in psql."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
