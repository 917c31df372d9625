"""A pool connection for one try of database work that must end in time, answered or not.

A connection gone half-open (the network path to PostgreSQL lost without a reset) answers
nothing, ever: neither a statement's reply nor an error comes. The statement then waits for
``command_timeout`` at best, and when the connection goes back to the pool, asyncpg waits for
the cancel of a statement cut short, and for the connection's reset, with no bound at all.
Work that holds a lock, a lane or a slot while it waits must not wait so: each of its tries
takes a connection here, and a try not over in time fails with ``TimeoutError`` (among
``DATABASE_ERRORS``), the connection's return to the pool bounded alike.

A try that timed out may still have committed, exactly as one whose reply was lost: callers
treat it so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from engine import metrics


@contextlib.asynccontextmanager
async def bounded_connection(
    pool: asyncpg.Pool,
    timeout_s: float,
    *,
    work: str,
) -> AsyncIterator[Any]:
    """A connection of ``pool`` for one try of ``work``: waiting for the connection, the
    statements run on it (a transaction's BEGIN and COMMIT included) and its return to the pool
    (the wait for a timed-out statement's cancel, the reset) each take at most ``timeout_s``;
    what a try cut short still runs (a ROLLBACK) ends ``timeout_s`` later at most, its
    connection closed. A try not over in time raises ``TimeoutError``, counted by ``work``
    (``alarmrelay_delivery_database_timeouts_total``)."""
    try:
        # The acquire's timeout also bounds the connection's return to the pool.
        async with pool.acquire(timeout=timeout_s) as conn:
            # A statement cut short is cancelled (the server stops it), and what follows on the
            # connection (a transaction's ROLLBACK) first waits for the server to acknowledge
            # that on the connection: one that answers nothing never does. Closed then, a try's
            # time later, and what waits on it fails at once.
            closing = asyncio.get_running_loop().call_later(2 * timeout_s, conn.terminate)
            deadline = asyncio.timeout(timeout_s)
            try:
                async with deadline:
                    yield conn
            except Exception as exc:
                if deadline.expired() and not isinstance(exc, TimeoutError):
                    raise TimeoutError(f"{work}: no answer within {timeout_s} s") from exc
                raise
            finally:
                closing.cancel()
    except TimeoutError:
        metrics.child(metrics.DELIVERY_DATABASE_TIMEOUTS, work).inc()
        raise
