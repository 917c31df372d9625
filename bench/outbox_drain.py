"""Outbox backlog drain: how fast the dispatcher empties a backlog once the station is back.

Run: ``python -m bench.outbox_drain [--lanes 5000] [--per-lane 20] [--repeats 3]`` (needs
PostgreSQL at ``BENCH_ADMIN_URL``, default 127.0.0.1:5432; creates and drops its own database
per run).

A station outage leaves every forwardable signal pending in ``deliveries``, no row leased (the
failed heads hand their lanes back), one lane per station account. This benchmark writes such a
backlog directly (``lanes`` lanes of ``per_lane`` rows, priorities mixed, the ids of each lane
interleaved with the others as a day's traffic leaves them), then starts the engine's
:class:`engine.delivery.Dispatcher` with its defaults against a station simulator
(:class:`engine.station_sim.StationSimulator`, in this process, ACKing everything, over the
receiver's 16 connections), and measures the time until no row is pending. It checks that the
station got every row exactly once (each lane's rows by their place in the lane, not a count of
frames) and each lane's rows in id order, and counts the claim queries. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import uvloop

from bench.run import _create_database, _drop_database, median_run
from engine.delivery import CLAIM_SQL, Dispatcher
from engine.migrate import apply_migrations
from engine.pg_connection import EngineConnection
from engine.station_model import ReceiverConfig
from engine.station_sim import StationSimulator
from receivers.registry import ReceiverRegistry

_EVENT = (
    '{"family":"cid","code":"130","qualifier":"1","zone":%s,"classification":{"category":"alarms"}}'
)


@dataclass(frozen=True)
class Drained:
    rows: int
    seconds: float
    claims: int
    station_frames: int
    out_of_order_lanes: int
    lanes_not_once: int  # lanes where a row is missing or came more than once

    @property
    def ok(self) -> bool:
        return (
            self.station_frames == self.rows and not self.out_of_order_lanes + self.lanes_not_once
        )

    @property
    def per_s(self) -> float:
        return self.rows / self.seconds


class _CountingConnection:
    """A connection of :class:`CountingPool`, counting the claim queries it runs."""

    def __init__(self, conn: Any, counter: CountingPool) -> None:
        self._conn = conn
        self._counter = counter

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        if query is CLAIM_SQL:
            self._counter.claims += 1
        rows: list[Any] = await self._conn.fetch(query, *args)
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class CountingPool:
    """The dispatcher's pool, counting the claim queries that go through it (on the pool or
    on a connection acquired from it)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.claims = 0

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        if query is CLAIM_SQL:
            self.claims += 1
        rows: list[Any] = await self._pool.fetch(query, *args)
        return rows

    @contextlib.asynccontextmanager
    async def acquire(self, **kwargs: Any) -> AsyncIterator[_CountingConnection]:
        async with self._pool.acquire(**kwargs) as conn:
            yield _CountingConnection(conn, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


async def _backlog(url: str, lanes: int, per_lane: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
        # Row g belongs to lane g % lanes: each lane's rows are spread over the whole id range.
        # The zone carries the row's place in its lane (from 1; Contact ID has 3 digits for it),
        # so the station can check the order.
        await conn.execute(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at)
            SELECT g, 0, 'A' || (g % $1::int), 'lane-' || (g % $1::int),
                   lpad((g % $1::int)::text, 6, '0'), g % 3, format($3::text, g / $1::int + 1)::jsonb,
                   'rx', lpad((g % 9999 + 1)::text, 4, '0'), now()
            FROM generate_series(0, $1::int * $2::int - 1) g
            """,
            lanes,
            per_lane,
            _EVENT,
        )
        await conn.execute("ANALYZE deliveries")
    finally:
        await conn.close()


async def drain(url: str, lanes: int, per_lane: int, *, limit_s: float = 600.0) -> Drained:
    """Write the backlog, start a dispatcher, and wait until nothing is pending."""
    await _backlog(url, lanes, per_lane)
    station = StationSimulator()
    port = await station.start()
    registry = ReceiverRegistry(
        [ReceiverConfig(name="rx", host="127.0.0.1", port=port, connections=16)]
    )
    pool = await asyncpg.create_pool(url, min_size=2, max_size=8, connection_class=EngineConnection)
    counting = CountingPool(pool)
    dispatcher = Dispatcher(counting, lambda: registry)
    total = lanes * per_lane
    try:
        started = time.perf_counter()
        dispatcher.start()
        while True:
            await asyncio.sleep(0.05)
            pending = await pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'pending'")
            elapsed = time.perf_counter() - started
            if pending == 0 or elapsed > limit_s:
                break
        if pending:
            raise RuntimeError(f"{pending} of {total} rows still pending after {limit_s:g} s")
    finally:
        await dispatcher.stop()
        await registry.close()
        await station.stop()
        await pool.close()
    by_lane: dict[str | None, list[int]] = defaultdict(list)
    for frame in station.received:
        by_lane[frame.account].append(frame.events[0].zone or 0)  # place in the lane, from 1
    disordered = sum(1 for zones in by_lane.values() if zones != sorted(zones))
    return Drained(
        total,
        elapsed,
        counting.claims,
        len(station.received),
        disordered,
        lanes_not_once(by_lane, lanes, per_lane),
    )


def lanes_not_once(by_lane: dict[str | None, list[int]], lanes: int, per_lane: int) -> int:
    """Lanes (station accounts, as ``_backlog`` numbers them) whose rows did not each reach the
    station exactly once, from each frame's place in its lane: a row missing in one lane and one
    repeated in another leave the frame count right and every lane in order."""
    want = list(range(1, per_lane + 1))
    expected = {f"{lane:06d}" for lane in range(lanes)}
    wrong = sum(1 for account in expected if sorted(by_lane.get(account, [])) != want)
    return wrong + sum(1 for account in by_lane if account not in expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lanes", type=int, default=5000, help="station accounts with a backlog")
    parser.add_argument(
        "--per-lane", type=int, default=20, help="pending rows in each lane (at most 999)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if min(args.lanes, args.per_lane, args.repeats) < 1:
        parser.error("--lanes, --per-lane and --repeats must be at least 1")
    if args.per_lane > 999:
        parser.error("--per-lane: at most 999 (the row's place travels as its Contact ID zone)")
    runs: list[Drained] = []
    for rep in range(args.repeats):
        url = _create_database()
        try:
            result = uvloop.run(drain(url, args.lanes, args.per_lane))
        finally:
            _drop_database(url)
        runs.append(result)
        print(
            f"[outbox-drain] run {rep + 1}/{args.repeats}: {result.rows} rows in "
            f"{result.seconds:.1f} s ({result.per_s:.0f}/s), {result.claims} claims, station "
            f"{result.station_frames} frames, {result.out_of_order_lanes} lanes out of order, "
            f"{result.lanes_not_once} lanes with a row missing or repeated",
            file=sys.stderr,
            flush=True,
        )
    print(
        "| backlog | runs (rows/s each) | rows/s (median) | seconds | claim queries | station frames | lanes out of order | lanes not once |"
    )
    print("|---|---|---|---|---|---|---|---|")
    mid = median_run(runs, lambda r: r.per_s)
    each = ", ".join(f"{r.per_s:.0f}" for r in runs)
    print(
        f"| {args.lanes} lanes × {args.per_lane} | {len(runs)} ({each}) | **{mid.per_s:.0f}** | "
        f"{mid.seconds:.1f} | {mid.claims} | {mid.station_frames} | {mid.out_of_order_lanes} | "
        f"{mid.lanes_not_once} |"
    )
    if not all(r.ok for r in runs):
        raise SystemExit("outbox-drain: the station did not get every row once and in order")


if __name__ == "__main__":
    main()
