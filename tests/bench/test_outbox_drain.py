"""bench/outbox_drain.py: a real backlog drained by the engine's dispatcher, checked at the station."""

from __future__ import annotations

import asyncpg

from bench.outbox_drain import drain, lanes_not_once


async def test_a_small_backlog_drains_once_and_in_order(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    result = await drain(database_url, lanes=6, per_lane=4)
    assert (result.rows, result.station_frames, result.out_of_order_lanes) == (24, 24, 0)
    assert result.lanes_not_once == 0 and result.ok
    assert 1 <= result.claims <= 6  # the lanes' rows come with their heads, not one claim each
    assert result.seconds > 0 and result.per_s > 0
    states = await db_pool.fetch("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
    assert [(r["state"], r["n"]) for r in states] == [("delivered", 24)]


def test_a_row_missing_and_another_repeated_is_not_every_row_once() -> None:
    """Right frame count (4 of 4), every lane in order: still a lane wrong."""
    by_lane: dict[str | None, list[int]] = {"000000": [1, 1], "000001": [1, 2]}
    assert lanes_not_once(by_lane, lanes=2, per_lane=2) == 1
    assert lanes_not_once({"000000": [1, 2], "000001": [2]}, lanes=2, per_lane=2) == 1
    assert lanes_not_once({"000000": [1, 2]}, lanes=2, per_lane=2) == 1  # a lane never seen
    assert lanes_not_once({"000000": [1], "000001": [1], "000009": [1]}, lanes=2, per_lane=1) == 1
    assert lanes_not_once({"000000": [1, 2], "000001": [1, 2]}, lanes=2, per_lane=2) == 0
