"""bench/outbox_drain.py: a real backlog drained by the engine's dispatcher, checked at the station."""

from __future__ import annotations

import asyncpg

from bench.outbox_drain import drain


async def test_a_small_backlog_drains_once_and_in_order(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    result = await drain(database_url, lanes=6, per_lane=4)
    assert (result.rows, result.station_frames, result.out_of_order_lanes) == (24, 24, 0)
    assert 1 <= result.claims <= 6  # the lanes' rows come with their heads, not one claim each
    assert result.seconds > 0 and result.per_s > 0
    states = await db_pool.fetch("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
    assert [(r["state"], r["n"]) for r in states] == [("delivered", 24)]
