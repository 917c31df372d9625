"""The outbox claim: lane heads most urgent first, with the rows queued behind them, in lane
order; never two leases on one row."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
from structlog.testing import capture_logs

from bench.outbox_drain import CountingPool
from engine import delivery
from engine.claimed_rows import owned_from_record
from engine.delivery import CLAIM_SQL, Dispatcher
from engine.station_model import ReceiverConfig
from engine.station_sim import StationSimulator
from receivers.registry import ReceiverRegistry


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
        [row] = await db_pool.fetch(CLAIM_SQL, 1, "engine-a", timedelta(seconds=6), 32)
        assert row["id"] == alarm

    async def test_a_head_and_the_rows_behind_it_go_to_one_engine(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The rows queued behind a claimed head are leased with it (to be sent after it, in
        order); a second engine finds nothing of that lane to claim, and a row behind a head is
        never claimed on its own, however urgent."""
        head = await enqueue(db_pool, "lane", 1, 1)
        second = await enqueue(db_pool, "lane", 0, 2)  # more urgent, but behind the head
        third = await enqueue(db_pool, "lane", 1, 3)
        first = await db_pool.fetch(CLAIM_SQL, 10, "engine-a", timedelta(seconds=6), 32)
        assert sorted(r["id"] for r in first) == [head, second, third]
        assert {r["lane"] for r in first} == {"lane"}
        assert await db_pool.fetch(CLAIM_SQL, 10, "engine-b", timedelta(seconds=6), 32) == []
        owners = await db_pool.fetch("SELECT DISTINCT lease_owner FROM deliveries")
        assert [o["lease_owner"] for o in owners] == ["engine-a"]

    async def test_a_head_with_nothing_behind_it_alone_while_another_lane_waits(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Room for one lane: the urgent lane's head and its row behind are taken, the other
        lane's rows are not (the limit counts lanes, the rows behind come with their head)."""
        await enqueue(db_pool, "lane-routine", 1, 1)
        alarm = await enqueue(db_pool, "lane-alarm", 0, 2)
        behind = await enqueue(db_pool, "lane-alarm", 1, 3)
        rows = await db_pool.fetch(CLAIM_SQL, 1, "engine-a", timedelta(seconds=6), 32)
        assert sorted(r["id"] for r in rows) == [alarm, behind]

    async def test_the_rows_behind_stop_at_the_first_that_is_not_free(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Only an unbroken run is taken: a row leased to another engine (or waiting for a
        retry) ends it, so nothing after it can overtake it."""
        head = await enqueue(db_pool, "lane", 1, 1)
        free = await enqueue(db_pool, "lane", 1, 2)
        held = await enqueue(db_pool, "lane", 1, 3)
        await enqueue(db_pool, "lane", 1, 4)
        await db_pool.execute(
            "UPDATE deliveries SET lease_owner = 'engine-b', lease_until = now() + interval '1 minute' "
            "WHERE id = $1",
            held,
        )
        rows = await db_pool.fetch(CLAIM_SQL, 10, "engine-a", timedelta(seconds=6), 32)
        assert sorted(r["id"] for r in rows) == [head, free]
        other = await enqueue(db_pool, "other", 1, 5)
        retry = await enqueue(db_pool, "other", 1, 6)
        await enqueue(db_pool, "other", 1, 7)
        await db_pool.execute(
            "UPDATE deliveries SET next_attempt_at = now() + interval '1 minute' WHERE id = $1",
            retry,
        )
        [row] = await db_pool.fetch(CLAIM_SQL, 10, "engine-c", timedelta(seconds=6), 32)
        assert row["id"] == other

    async def test_a_head_tried_before_goes_alone(self, db_pool: asyncpg.Pool) -> None:
        """A head that failed before (its receiver may still be down) is claimed without the
        rows behind it: at every retry of an outage they would be leased and handed back."""
        head = await enqueue(db_pool, "lane", 1, 1)
        await enqueue(db_pool, "lane", 1, 2)
        await db_pool.execute("UPDATE deliveries SET attempts = 1 WHERE id = $1", head)
        [row] = await db_pool.fetch(CLAIM_SQL, 10, "engine-a", timedelta(seconds=6), 32)
        assert (row["id"], row["attempts"]) == (head, 2)

    async def test_at_most_so_many_rows_behind_a_head(self, db_pool: asyncpg.Pool) -> None:
        ids = [await enqueue(db_pool, "lane", 1, zone) for zone in range(5)]
        rows = await db_pool.fetch(CLAIM_SQL, 10, "engine-a", timedelta(seconds=6), 2)
        assert sorted(r["id"] for r in rows) == ids[:3]
        attempts = {r["id"]: r["attempts"] for r in rows}
        assert set(attempts.values()) == {1}

    async def test_expired_lease_is_taken_over_with_same_seq(self, db_pool: asyncpg.Pool) -> None:
        """A lease that lapsed (dead engine) is claimed again, keeping the row's seq."""
        head = await enqueue(db_pool, "lane", 0, 1)
        await db_pool.fetch(CLAIM_SQL, 10, "dead-engine", timedelta(seconds=6), 32)
        await db_pool.execute(
            "UPDATE deliveries SET lease_until = now() - interval '1 second' WHERE id = $1", head
        )
        [row] = await db_pool.fetch(CLAIM_SQL, 10, "engine-b", timedelta(seconds=6), 32)
        assert (row["id"], row["seq"], row["attempts"]) == (head, "0001", 2)


async def _drain(
    db_pool: asyncpg.Pool, *, engines: int = 1, **options: Any
) -> tuple[StationSimulator, CountingPool, list[int]]:
    """Run ``engines`` dispatchers (``options``; each with its own receiver connections, as
    separate engine processes have) against one ACKing station until nothing is pending; the
    station, the claim count and what each dispatcher delivered."""
    station = StationSimulator()
    port = await station.start()
    registries = [
        ReceiverRegistry([ReceiverConfig(name="rx", host="127.0.0.1", port=port)])
        for _ in range(engines)
    ]
    counting = CountingPool(db_pool)
    dispatchers = [
        Dispatcher(counting, lambda r=registry: r, owner=f"engine-{i}", **options)
        for i, registry in enumerate(registries)
    ]
    for dispatcher in dispatchers:
        dispatcher.start()
    try:
        async with asyncio.timeout(20):
            while await db_pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'pending'"):
                await asyncio.sleep(0.05)
    finally:
        for dispatcher in dispatchers:
            await dispatcher.stop()
        for registry in registries:
            await registry.close()
        await station.stop()
    return station, counting, [dispatcher.delivered for dispatcher in dispatchers]


async def _backlog(db_pool: asyncpg.Pool, lanes: int, per_lane: int) -> None:
    """``lanes`` lanes of ``per_lane`` unleased rows, ids interleaved; row g is in lane g %
    lanes (station account 9000 + lane), its place in the lane (from 1) is its zone."""
    await db_pool.execute(
        """
        INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                priority, event, primary_receiver, seq, received_at)
        SELECT g, 0, 'A', 'lane-' || lpad((g % $1::int)::text, 2, '0'),
               '9' || lpad((g % $1::int)::text, 3, '0'), g % 3,
               jsonb_build_object('family', 'cid', 'code', '130', 'qualifier', '1',
                                  'zone', g / $1::int + 1, 'classification',
                                  jsonb_build_object('category', 'alarms')),
               'rx', '0001', now()
        FROM generate_series(0, $1::int * $2::int - 1) g
        """,
        lanes,
        per_lane,
    )


def _places(station: StationSimulator) -> dict[str | None, list[int | None]]:
    """Each station account's zones (the rows' places in their lane) in the order received."""
    places: dict[str | None, list[int | None]] = {}
    for frame in station.received:
        places.setdefault(frame.account, []).append(frame.events[0].zone)
    return places


class TestBacklog:
    async def test_a_backlog_drains_a_lane_at_a_time_in_order_and_once(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A station back after an outage: 40 lanes of 15 unleased rows each, their ids
        interleaved. The dispatcher (16 lanes in flight, 16 rows behind each head) delivers every
        row once, each lane in id order, with a few claims instead of one per row."""
        lanes, per_lane = 40, 15
        await _backlog(db_pool, lanes, per_lane)
        station, counting, _ = await _drain(db_pool, max_in_flight=16, claim_behind=16)
        places = _places(station)
        assert len(station.received) == lanes * per_lane  # each row once
        assert sorted(places) == [f"9{lane:03d}" for lane in range(lanes)]  # station accounts
        in_order = list(range(1, per_lane + 1))
        assert {a: p for a, p in places.items() if p != in_order} == {}
        # Heads alone (one row of a lane per claim, 16 lanes a claim) would take at least
        # 600 / 16 = 38 claims; with up to 16 rows behind its head a lane takes one.
        assert counting.claims <= 20
        states = await db_pool.fetch("SELECT DISTINCT state FROM deliveries")
        assert [s["state"] for s in states] == ["delivered"]

    async def test_two_engines_share_a_backlog_each_lane_in_order_and_once(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Two engines drain one backlog at once, with few slots and short runs so that a
        lane's rows go through several claims and both engines: a lane's next run is only
        claimable once the previous one is delivered, so every row arrives once, in order."""
        lanes, per_lane = 30, 12
        await _backlog(db_pool, lanes, per_lane)
        station, _, delivered = await _drain(db_pool, engines=2, max_in_flight=6, claim_behind=2)
        places = _places(station)
        assert len(station.received) == lanes * per_lane
        assert sum(delivered) == lanes * per_lane and min(delivered) > 0  # both took part
        in_order = list(range(1, per_lane + 1))
        assert {a: p for a, p in places.items() if p != in_order} == {}
        owners = await db_pool.fetch(
            "SELECT count(DISTINCT lease_owner) AS n FROM deliveries WHERE lease_owner IS NOT NULL"
        )
        assert owners[0]["n"] == 0  # every lease given up with its outcome

    async def test_a_long_lane_is_claimed_again_at_once_not_at_the_next_poll(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """One station account with 100 rows pending: each claim takes its head and 8 rows
        behind; when they are delivered the lane is claimed again straight away (the poll is
        30 s here: waiting for it, the lane would take minutes), still in order."""
        await db_pool.execute(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at)
            SELECT g, 0, 'A', 'lane', '9000', 1,
                   jsonb_build_object('family', 'cid', 'code', '130', 'qualifier', '1',
                                      'zone', g, 'classification',
                                      jsonb_build_object('category', 'alarms')),
                   'rx', '0001', now()
            FROM generate_series(1, 100) g
            """
        )
        station, counting, _ = await _drain(db_pool, claim_behind=8, poll_s=30.0)
        assert [f.events[0].zone for f in station.received] == list(range(1, 101))
        assert 12 <= counting.claims <= 14  # 100 rows, 9 a claim (and the one finding none)

    async def test_a_retried_head_goes_alone_and_its_lane_follows_at_once(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A station back after an outage: the lane's head was tried before, so it is claimed
        alone; once it is delivered the rest of the lane is claimed straight away (the poll is
        30 s here), in runs, in order."""
        await _backlog(db_pool, 1, 20)
        await db_pool.execute(
            "UPDATE deliveries SET attempts = 1 WHERE id = (SELECT min(id) FROM deliveries)"
        )
        station, counting, _ = await _drain(db_pool, claim_behind=8, poll_s=30.0)
        assert [f.events[0].zone for f in station.received] == list(range(1, 21))
        assert counting.claims <= 5  # the head alone, then 19 rows in runs of up to 9


class TestUnrecordedFailure:
    async def test_a_row_leased_behind_a_head_whose_failure_was_not_recorded_waits_for_it(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The head times out and its failure cannot be written (every try of the statement
        fails); its lease is still ours for a while, so a commit may lease us the lane's next
        row. That row goes back to the outbox instead of being sent at once: the head's retry,
        once its lease ends, is delivered first, then the row."""
        station = StationSimulator(mode="drop")  # the head's first send gets no answer
        await station.start()
        head = await enqueue(db_pool, "ABC", 0, 1)  # the lane is the station account here
        await db_pool.execute(
            """
            CREATE SEQUENCE test_refusals;  -- counts the refusals (a sequence is not rolled back)
            CREATE FUNCTION test_refuse_failure() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM nextval('test_refusals');
                RAISE EXCEPTION 'test: the failure write is refused';
            END $$;
            CREATE TRIGGER test_refuse_failure BEFORE UPDATE ON deliveries FOR EACH ROW
            WHEN (NEW.last_error IS DISTINCT FROM OLD.last_error)
            EXECUTE FUNCTION test_refuse_failure();
            """
        )
        registry = ReceiverRegistry(
            [ReceiverConfig(name="rx", host="127.0.0.1", port=station.port, ack_timeout_s=0.5)]
        )
        dispatcher = Dispatcher(
            db_pool, lambda: registry, poll_s=0.05, lease_s=3.0, retry_base_s=0.05
        )
        dispatcher.start()
        try:
            async with asyncio.timeout(20):
                while await db_pool.fetchval("SELECT last_value FROM test_refusals") < 5:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(1.5)  # the pause after the fifth: the dispatcher gives up
            await db_pool.execute(
                "DROP TRIGGER test_refuse_failure ON deliveries; DROP FUNCTION test_refuse_failure()"
            )
            station.set_mode("ack")
            # What a commit does when the lane's last pending row is ours with a live lease.
            behind = await db_pool.fetchrow(
                """
                INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                        priority, event, primary_receiver, seq, received_at,
                                        lease_owner, lease_until)
                SELECT 2, 0, account, lane, station_account, priority, event, primary_receiver,
                       '0002', now(), $1, now() + interval '1 minute'
                FROM deliveries WHERE id = $2
                RETURNING *
                """,
                dispatcher.owner,
                head,
            )
            dispatcher.adopt([owned_from_record(behind)])
            async with asyncio.timeout(30):
                while (
                    await db_pool.fetchval(
                        "SELECT count(*) FROM deliveries WHERE state = 'delivered'"
                    )
                    < 2
                ):
                    await asyncio.sleep(0.05)
        finally:
            await dispatcher.stop()
            await registry.close()
            await station.stop()
            await db_pool.execute(
                "DROP TRIGGER IF EXISTS test_refuse_failure ON deliveries; "
                "DROP FUNCTION IF EXISTS test_refuse_failure(); DROP SEQUENCE IF EXISTS test_refusals"
            )
        acked = [r.seq for r in station.received if r.reply == "ack"]
        assert acked == ["0001", "0002"]
        assert [r.seq for r in station.received if r.reply == "drop"] == ["0001"]


class TestLateFailureWrite:
    async def test_a_failure_written_after_another_engine_took_the_row_leaves_its_lease(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """This engine's lease lapsed while it waited for the receiver; another engine claimed
        the row. This engine's failure write must not clear that engine's lease (a third could
        then claim the row and send it at the same time) nor the row's state once delivered."""
        station = StationSimulator(mode="ack")
        await station.start()
        registry = ReceiverRegistry(
            [ReceiverConfig(name="rx", host="127.0.0.1", port=station.port)]
        )
        dispatcher = Dispatcher(db_pool, lambda: registry, poll_s=30.0)
        try:
            taken = owned_from_record(await _leased(db_pool, dispatcher.owner, "L1", "0001", 1))
            finished = owned_from_record(await _leased(db_pool, dispatcher.owner, "L2", "0002", 2))
            await db_pool.execute(
                "UPDATE deliveries SET lease_owner = 'other', lease_until = now() + interval "
                "'1 minute' WHERE id = $1",
                taken.id,
            )
            await db_pool.execute(
                "UPDATE deliveries SET state = 'delivered', lease_owner = NULL, lease_until = NULL"
                " WHERE id = $1",
                finished.id,
            )
            for row in (taken, finished):
                await dispatcher._failed(row, "no answer within the ACK timeout", receiver="rx")
            rows = {
                r["id"]: (r["state"], r["lease_owner"], r["last_error"])
                for r in await db_pool.fetch(
                    "SELECT id, state, lease_owner, last_error FROM deliveries"
                )
            }
        finally:
            await registry.close()
            await station.stop()
        assert rows == {
            taken.id: ("pending", "other", None),
            finished.id: ("delivered", None, None),
        }

    async def test_a_late_failure_leaves_a_row_that_changed_hands_meanwhile_alone(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """This engine's lease lapsed while it waited for the receiver. Meanwhile another engine
        claimed one row and handed it back unsent, and this engine claimed the other again. The
        late failure adds nothing to their history, nor moves their retry or the new lease; it
        is logged."""
        registry = ReceiverRegistry([])
        dispatcher = Dispatcher(db_pool, lambda: registry, poll_s=30.0)
        lease = timedelta(seconds=6)
        expire = "UPDATE deliveries SET lease_until = now() - interval '1 second' WHERE id = $1"
        try:
            handed_back = owned_from_record(await _leased(db_pool, dispatcher.owner, "L1", "1", 1))
            claimed_again = owned_from_record(
                await _leased(db_pool, dispatcher.owner, "L2", "2", 2)
            )
            await db_pool.execute(expire, claimed_again.id)
            [again] = await db_pool.fetch(CLAIM_SQL, 10, dispatcher.owner, lease, 32)
            await db_pool.execute(expire, handed_back.id)
            [taken] = await db_pool.fetch(CLAIM_SQL, 10, "engine-b", lease, 32)
            await db_pool.execute(delivery._RELEASE_SQL, [taken["id"]], "engine-b")
            assert (taken["id"], again["id"]) == (handed_back.id, claimed_again.id)
            with capture_logs() as logs:
                for row in (handed_back, claimed_again):
                    await dispatcher._failed(row, "no answer within the ACK timeout", receiver="rx")
            rows = {
                r["id"]: (r["lease_owner"], r["last_error"], r["history"], r["due"])
                for r in await db_pool.fetch(
                    "SELECT id, lease_owner, last_error, failed_attempts IS NOT NULL AS history, "
                    "next_attempt_at <= now() AS due FROM deliveries"
                )
            }
        finally:
            await registry.close()
        assert rows == {
            handed_back.id: (None, None, False, True),
            claimed_again.id: (dispatcher.owner, None, False, True),
        }
        superseded = [e["delivery"] for e in logs if e["event"] == "delivery_failure_superseded"]
        assert superseded == [handed_back.id, claimed_again.id]


async def _leased(db_pool: asyncpg.Pool, owner: str, lane: str, seq: str, signal: int) -> Any:
    """A row of ``lane`` (its station account too) leased to ``owner``, as a commit leases it."""
    return await db_pool.fetchrow(
        """
        INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, priority,
                                event, primary_receiver, seq, received_at, lease_owner, lease_until)
        VALUES ($1, 0, 'A', $2, $2, 0,
                '{"family":"cid","code":"130","qualifier":"1","zone":1,"classification":{"category":"alarms"}}'::jsonb,
                'rx', $3, now(), $4, now() + interval '1 minute')
        RETURNING *
        """,
        signal,
        lane,
        seq,
        owner,
    )


class ReleaseCounting(CountingPool):
    """The dispatcher's pool, also counting the statements that hand rows back to the outbox
    (run on a connection it lends, or on the pool)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.releases = 0

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        if query is delivery._RELEASE_SQL:
            self.releases += 1
        return str(await self._pool.execute(query, *args, **kwargs))

    @contextlib.asynccontextmanager
    async def acquire(self, **kwargs: Any) -> AsyncIterator[Any]:
        async with super().acquire(**kwargs) as conn:
            yield _ReleaseCountingConnection(conn, self)


class _ReleaseCountingConnection:
    """A connection of :class:`ReleaseCounting`, counting the hand-backs it runs."""

    def __init__(self, conn: Any, counter: ReleaseCounting) -> None:
        self._conn = conn
        self._counter = counter

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        if query is delivery._RELEASE_SQL:
            self._counter.releases += 1
        return str(await self._conn.execute(query, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def _until_none_pending(db_pool: asyncpg.Pool, timeout_s: float = 20.0) -> None:
    """Wait until every delivery is delivered or dead."""
    async with asyncio.timeout(timeout_s):
        while await db_pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'pending'"):
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _one_slot(
    db_pool: asyncpg.Pool, delay_ms: int
) -> AsyncIterator[tuple[StationSimulator, Dispatcher]]:
    """A station that ACKs each frame after ``delay_ms``, and a dispatcher with one slot and a
    poll far away (whatever is sent went without a claim)."""
    station = StationSimulator(mode="delay")
    station.delay_ms = delay_ms
    await station.start()
    registry = ReceiverRegistry([ReceiverConfig(name="rx", host="127.0.0.1", port=station.port)])
    dispatcher = Dispatcher(db_pool, lambda: registry, max_in_flight=1, poll_s=30.0)
    dispatcher.start()
    try:
        yield station, dispatcher
    finally:
        await dispatcher.stop()
        await registry.close()
        await station.stop()


class TestLaneOrderInMemory:
    async def test_an_older_row_arriving_late_goes_before_a_head_still_waiting(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Every slot is busy; the lane's newer row arrives first and waits for a slot, then its
        older row (a claim racing a commit). The older one is sent first."""
        async with _one_slot(db_pool, 300) as (station, dispatcher):
            busy = await _leased(db_pool, dispatcher.owner, "ABD", "0001", 1)
            older = await _leased(db_pool, dispatcher.owner, "ABC", "0001", 2)
            newer = await _leased(db_pool, dispatcher.owner, "ABC", "0002", 3)
            dispatcher.adopt([owned_from_record(busy)])  # takes the only slot for 300 ms
            dispatcher.adopt([owned_from_record(newer)])
            dispatcher.adopt([owned_from_record(older)])
            await _until_none_pending(db_pool)
        assert [r.seq for r in station.received if r.account == "ABC"] == ["0001", "0002"]

    async def test_a_head_waiting_for_a_slot_starts_when_one_frees_not_at_the_next_poll(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Every slot is busy and a fire alarm waits for one: it is sent as soon as the busy
        delivery is done. (The finishing delivery still counted itself as busy, so the alarm
        waited for the next claim, here 30 s.)"""
        async with _one_slot(db_pool, 200) as (station, dispatcher):
            busy = await _leased(db_pool, dispatcher.owner, "ABD", "0001", 1)
            fire = await _leased(db_pool, dispatcher.owner, "ABC", "0001", 2)
            dispatcher.adopt([owned_from_record(busy)])
            dispatcher.adopt([owned_from_record(fire)])
            await _until_none_pending(db_pool, timeout_s=10)
        assert [r.account for r in station.received] == ["ABD", "ABC"]

    async def test_rows_the_failure_released_are_not_released_a_second_time(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The head fails: its transaction hands the rows behind it back to the outbox. No
        second release follows (queued behind other failure writes, it could clear the leases
        of those rows once claimed again)."""
        station = StationSimulator(mode="drop")
        await station.start()
        for zone in (1, 2, 3):
            await enqueue(db_pool, "ABC", 0, zone)
        registry = ReceiverRegistry(
            [ReceiverConfig(name="rx", host="127.0.0.1", port=station.port, ack_timeout_s=0.5)]
        )
        counting = ReleaseCounting(db_pool)
        dispatcher = Dispatcher(
            counting,  # type: ignore[arg-type]
            lambda: registry,
            poll_s=0.05,
            retry_base_s=60.0,
        )
        dispatcher.start()
        try:
            async with asyncio.timeout(20):
                while not await db_pool.fetchval(
                    "SELECT bool_and(lease_owner IS NULL) AND bool_or(last_error IS NOT NULL) "
                    "FROM deliveries"
                ):
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)  # a second release would have run by now
        finally:
            await dispatcher.stop()
            await registry.close()
            await station.stop()
        rows = await db_pool.fetch("SELECT attempts, last_error FROM deliveries ORDER BY id")
        assert [r["attempts"] for r in rows] == [1, 0, 0]
        assert rows[0]["last_error"] and rows[1]["last_error"] is None
        assert counting.releases == 0
