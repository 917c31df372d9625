"""Rows that outlive their signal: decisions and finished deliveries, deleted after retention.

``signals`` is partitioned by day and a partition past ``retention.signals_days`` is dropped
whole (``drop_signal_partitions_before``). Each signal's forwarding decisions (``decisions``) and
its deliveries (``deliveries``) live in tables of their own and would stay for ever: at millions
of signals a day that is millions of rows a day nobody can reach any more (the history API reads
them through their signal). This removes them once their signal is gone:

* a decision or delivery whose ``signal_id`` is below the lowest id still in ``signals``. Signal
  ids come from one sequence and a signal is committed with its decisions and outbox rows in one
  transaction; the lowest id is read in the same statement (one snapshot), so a row whose signal
  is still there, or is being committed, is never taken;
* deliveries only when finished (``delivered`` or ``dead``): a pending one is still owed to the
  station, however old its signal.

Deleted in batches of ``batch`` rows, each its own statement and commit, paced (a pause as long
as each statement), until none is left or ``budget_s`` has been spent (the next maintenance run
goes on). Several engines may run it at once: a row deleted by one is skipped by the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from engine import metrics

log = structlog.get_logger("engine.retention")

# Each takes up to $1 rows (by key, so that the delete goes through an index however large the
# table) below the lowest signal id still stored; none stored: every row's signal is gone, hence
# the largest bigint. A signal's decisions go together.
PURGES: dict[str, str] = {
    "decisions": """
        DELETE FROM decisions
        WHERE signal_id = ANY (ARRAY(
            SELECT signal_id FROM decisions
            WHERE signal_id < coalesce((SELECT min(id) FROM signals), 9223372036854775807)
            ORDER BY signal_id LIMIT $1))
    """,
    "deliveries": """
        DELETE FROM deliveries
        WHERE id = ANY (ARRAY(
            SELECT id FROM deliveries
            WHERE signal_id < coalesce((SELECT min(id) FROM signals), 9223372036854775807)
              AND state <> 'pending'
            ORDER BY signal_id LIMIT $1))
          AND state <> 'pending'
    """,
}


async def purge_past_retention(
    pool: asyncpg.Pool,
    *,
    batch: int = 10_000,
    budget_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, int]:
    """Delete decisions and finished deliveries of signals no longer stored; rows per table.

    After each full batch it pauses as long as the statement took, so a backlog (an engine
    restarted after days, a retention shortened) is worked off at half a connection's pace,
    never crowding out the group commits.
    """
    deadline = clock() + budget_s
    deleted = dict.fromkeys(PURGES, 0)
    complete = True
    for table, statement in PURGES.items():
        while True:
            started = clock()
            if started >= deadline:
                complete = False
                break
            status = await pool.execute(statement, batch)
            n = int(status.rsplit(" ", 1)[-1])
            deleted[table] += n
            metrics.child(metrics.RETENTION_DELETED, table).inc(n)
            if n < batch:
                break
            await sleep(clock() - started)
    log.info(
        "retention_purge", complete=complete, **{f"{t}_deleted": n for t, n in deleted.items()}
    )
    return deleted
