"""The outbox claim: lane heads only, most urgent first, never two leases on one row."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from engine.delivery import CLAIM_SQL


async def enqueue(pool: asyncpg.Pool, lane: str, priority: int, zone: int) -> int:
    return int(
        await pool.fetchval(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, priority, event,
                                    primary_receiver, seq, received_at)
            VALUES ($1, 0, 'A', $2, $2, $3, $4::jsonb, 'rx', '0001', now()) RETURNING id
            """,
            zone,
            lane,
            priority,
            f'{{"family":"cid","code":"130","qualifier":"1","zone":{zone},"classification":{{"category":"alarms"}}}}',
        )
    )


class TestClaim:
    async def test_urgent_lane_head_first(self, db_pool: asyncpg.Pool) -> None:
        """With room for one, the alarm at the head of another lane is claimed before older routine rows."""
        await enqueue(db_pool, "lane-routine", 1, 1)
        alarm = await enqueue(db_pool, "lane-alarm", 0, 2)
        [row] = await db_pool.fetch(CLAIM_SQL, 1, "engine-a", timedelta(seconds=6))
        assert row["id"] == alarm

    async def test_only_heads_and_no_double_lease(self, db_pool: asyncpg.Pool) -> None:
        """A lane's second row is not claimable while its head is pending; a leased head is not claimed twice."""
        head = await enqueue(db_pool, "lane", 1, 1)
        await enqueue(db_pool, "lane", 0, 2)  # more urgent, but behind the head in its lane
        first = await db_pool.fetch(CLAIM_SQL, 10, "engine-a", timedelta(seconds=6))
        assert [r["id"] for r in first] == [head]
        assert await db_pool.fetch(CLAIM_SQL, 10, "engine-b", timedelta(seconds=6)) == []
        await db_pool.execute("UPDATE deliveries SET state = 'delivered' WHERE id = $1", head)
        [nxt] = await db_pool.fetch(CLAIM_SQL, 10, "engine-b", timedelta(seconds=6))
        assert nxt["id"] != head

    async def test_expired_lease_is_taken_over_with_same_seq(self, db_pool: asyncpg.Pool) -> None:
        """A lease that lapsed (dead engine) is claimed again, keeping the row's seq."""
        head = await enqueue(db_pool, "lane", 0, 1)
        await db_pool.fetch(CLAIM_SQL, 10, "dead-engine", timedelta(seconds=6))
        await db_pool.execute(
            "UPDATE deliveries SET lease_until = now() - interval '1 second' WHERE id = $1", head
        )
        [row] = await db_pool.fetch(CLAIM_SQL, 10, "engine-b", timedelta(seconds=6))
        assert (row["id"], row["seq"], row["attempts"]) == (head, "0001", 2)
