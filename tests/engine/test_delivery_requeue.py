"""``alarmrelay deliveries requeue``: dead-lettered and waiting deliveries sent again once their
cause is fixed (real PostgreSQL, a running engine, station-sim)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import asyncpg
import pytest

from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.delivery import _FAILED_SQL, _RELEASE_LANE_SQL
from engine.station_model import Station
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.store.delivery_requeue import requeue_deliveries
from engine.store.stations import StationStore
from tests.engine.test_accounts_cli import cli
from tests.engine.test_forwarding_e2e import (
    burglary_alarms,
    dead_receiver_port,
    receiver,
    wait_state,
)
from tests.engine.test_ingest_e2e import running_engine, settings_for


def forwarding(primary: str, station_account: str = "9876") -> ForwardingSettings:
    return ForwardingSettings(
        mode=ForwardingMode.ALWAYS, station_account=station_account, primary_receiver=primary
    )


async def provision(pool: asyncpg.Pool, settings: ForwardingSettings) -> None:
    await AccountStore(pool).upsert_many([Account(account="1234", forwarding=settings)])


class TestRequeue:
    async def test_a_dead_lettered_alarm_is_delivered_once_the_station_takes_it(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """The station DUHed the alarm (its account not created there yet): dead-lettered.
        Once the station takes it, a requeue sends it again, with the same seq, and it is
        delivered; the history keeps the refusal."""
        station.set_mode("duh")
        await StationStore(db_pool).upsert(
            [Station(name="central", receivers=(receiver("rx-primary", station.port),))]
        )
        await provision(db_pool, forwarding("rx-primary"))
        async with running_engine(settings_for(database_url)) as engine:
            assert engine.dc09 is not None
            await burglary_alarms(engine, [21])
            await wait_state(db_pool, "SELECT state FROM deliveries", "dead")
            station.set_mode("ack")
            report = await requeue_deliveries(db_pool, states=("dead",))
            await wait_state(db_pool, "SELECT state FROM deliveries", "delivered")
        assert (report.requeued, report.rerouted, report.in_flight) == (1, 0, 0)
        assert report.deliveries[0].was == "dead"
        assert [(r.seq, r.events[0].zone) for r in station.received] == [
            (station.received[0].seq, 21)
        ] * 2
        row = await db_pool.fetchrow("SELECT receiver_used, failed_attempts FROM deliveries")
        assert row is not None and row["receiver_used"] == "rx-primary"

    async def test_waiting_deliveries_follow_the_accounts_new_receiver(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """The account's receiver is dead; the dealer moves the account to a working one. The
        alarms already queued kept retrying the dead receiver; requeued, they go to the new
        receiver (their lane follows), in order."""
        dead_port = await dead_receiver_port()
        await StationStore(db_pool).upsert(
            [
                Station(
                    name="central",
                    receivers=(receiver("rx-dead", dead_port), receiver("rx-new", station.port)),
                )
            ]
        )
        await provision(db_pool, forwarding("rx-dead"))
        async with running_engine(settings_for(database_url)) as engine:
            assert engine.dc09 is not None
            for zone in (31, 32):
                await burglary_alarms(engine, [zone])
            await wait_state(
                db_pool, "SELECT count(*) FROM deliveries WHERE last_error IS NOT NULL", 1
            )
            await provision(db_pool, forwarding("rx-new", station_account="ABCD"))
            dry = await requeue_deliveries(db_pool, states=("pending",), dry_run=True)
            assert dry.dry_run and dry.requeued + dry.in_flight == 2
            assert (
                await db_pool.fetchval(
                    "SELECT count(*) FROM deliveries WHERE primary_receiver = 'rx-dead'"
                )
                == 2
            )  # a dry run changes nothing
            requeued = 0
            for _ in range(50):  # a row being retried right now is left alone: ask again
                report = await requeue_deliveries(db_pool, states=("pending",))
                requeued += report.requeued
                if requeued == 2:
                    break
            await wait_state(
                db_pool, "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 2, 30
            )
            received = await station.wait_for(2, timeout_s=30)
        assert requeued == 2
        assert [(r.account, r.events[0].zone) for r in received] == [("ABCD", 31), ("ABCD", 32)]
        lanes = await db_pool.fetch("SELECT DISTINCT lane, receiver_used FROM deliveries")
        assert [(r["lane"], r["receiver_used"]) for r in lanes] == [("ABCD@rx-new", "rx-new")]

    async def test_a_delivery_being_sent_is_left_alone(self, db_pool: asyncpg.Pool) -> None:
        """A pending row an engine holds (leased) is reported in flight and not touched."""
        await db_pool.execute(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at,
                                    lease_owner, lease_until)
            VALUES (1, 0, '1234', '9876@rx', '9876', 0, '{}'::jsonb, 'rx', '0001', now(),
                    'engine-1', now() + interval '1 minute')
            """
        )
        report = await requeue_deliveries(db_pool, states=("pending", "dead"))
        assert (report.requeued, report.in_flight) == (0, 1)
        assert await db_pool.fetchval("SELECT lease_owner FROM deliveries") == "engine-1"

    async def test_an_earlier_customers_delivery_keeps_its_own_route(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The number was a terminated customer's, and a new customer's module has it now (its
        own station account): that customer's dead letter goes to its own station account, not
        to the new customer's (another premises, maybe another dealer's station)."""
        await db_pool.execute(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at, state,
                                    last_error)
            VALUES (1, 0, '1234', '9876@rx', '9876', 0, '{}'::jsonb, 'rx', '0001',
                    now() - interval '1 day', 'dead', 'DUH')
            """
        )
        await provision(db_pool, forwarding("rx-2", station_account="C55"))  # the new customer
        report = await requeue_deliveries(db_pool, states=("dead",))
        assert (report.requeued, report.rerouted) == (1, 0)
        row = await db_pool.fetchrow("SELECT state, lane, station_account FROM deliveries")
        assert row is not None
        assert (row["state"], row["lane"], row["station_account"]) == ("pending", "9876@rx", "9876")


class TestCommand:
    async def test_dry_run_prints_what_would_be_requeued(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        await provision(db_pool, forwarding("rx-2", station_account="C55"))
        await db_pool.execute(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at, state,
                                    last_error)
            VALUES (1, 0, '1234', '9876@rx', '9876', 0, '{}'::jsonb, 'rx', '0001', now(),
                    'dead', 'DUH')
            """
        )
        status, out, err = await cli(
            database_url, "deliveries", "requeue", "--dead", "--receiver", "rx", "--dry-run"
        )
        assert status == 0, err
        report = json.loads(out)
        assert (report["dry_run"], report["requeued"], report["rerouted"]) == (True, 1, 1)
        assert report["deliveries"][0]["lane"] == "C55@rx-2"
        assert report["deliveries"][0]["last_error"] == "DUH"
        assert await db_pool.fetchval("SELECT state FROM deliveries") == "dead"
        status, out, err = await cli(database_url, "deliveries", "requeue", "--dead")
        assert status == 0, err
        row = await db_pool.fetchrow("SELECT state, lane, last_error FROM deliveries")
        assert row is not None
        assert (row["state"], row["lane"]) == ("pending", "C55@rx-2")
        assert row["last_error"] == "requeued by an operator; before: DUH"
        # the operator's action is in the audit log (the dry run is not: it changed nothing)
        audited = await db_pool.fetch("SELECT role, action, resource, after FROM audit_log")
        assert [(a["role"], a["action"], a["resource"]) for a in audited] == [
            ("command-line", "requeue", "deliveries")
        ]
        assert '"count": 1' in audited[0]["after"] and '"states": ["dead"]' in audited[0]["after"]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ((), "say which deliveries: --dead, --pending or both"),
            (("--dead", "--since", "yesterday"), "'yesterday' is not an ISO 8601 time"),
        ],
    )
    async def test_bad_requests_are_one_clear_line(
        self, database_url: str, args: tuple[str, ...], message: str
    ) -> None:
        status, out, err = await cli(database_url, "deliveries", "requeue", *args)
        assert status == 2
        assert message in err
        assert "Traceback" not in err and out == ""


_LOCK_LANE = "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))"


async def _until_a_lane_lock_is_awaited(pool: asyncpg.Pool) -> None:
    for _ in range(250):
        if await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the requeue never waited for a lane's lock")


class TestConcurrency:
    async def test_a_failure_write_of_the_lane_does_not_deadlock_with_a_requeue(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """An engine records its in-flight head's failure (lane lock, then the row) while a
        requeue takes the waiting rows of that lane: neither is aborted as a deadlock (the
        requeue used to lock the in-flight row too, then wait for the lane's lock)."""
        head = await db_pool.fetchval(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at,
                                    lease_owner, lease_until, attempts)
            VALUES (1, 0, '1234', '9876@rx', '9876', 0, '{}'::jsonb, 'rx', '0001', now(),
                    'engine-1', now() + interval '1 minute', 1)
            RETURNING id
            """
        )
        await db_pool.execute(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at,
                                    next_attempt_at)
            VALUES (2, 0, '1234', '9876@rx', '9876', 0, '{}'::jsonb, 'rx', '0002', now(),
                    now() + interval '1 minute')
            """
        )
        engine = await asyncpg.connect(database_url)
        try:
            async with engine.transaction():
                await engine.execute(_LOCK_LANE, "9876@rx")
                requeue = asyncio.create_task(requeue_deliveries(db_pool, states=("pending",)))
                await _until_a_lane_lock_is_awaited(db_pool)
                await engine.execute(
                    _FAILED_SQL, head, "no answer", "rx", timedelta(seconds=1), None,
                    None, None, None, "engine-1", 1,
                )  # fmt: skip
                await engine.fetch(_RELEASE_LANE_SQL, "9876@rx", "engine-1", head)
            report = await asyncio.wait_for(requeue, 10)
        finally:
            await engine.close()
        assert (report.requeued, report.in_flight) == (1, 1)
        assert (
            await db_pool.fetchval("SELECT lease_owner FROM deliveries WHERE id = $1", head) is None
        )

    async def test_lanes_are_locked_in_the_order_an_ingest_commit_locks_them(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """An ingest commit locks its lanes in the order of their keys; a requeue of two lanes
        whose names sort the other way round does not deadlock with it."""
        first, second = await db_pool.fetchrow(
            """
            SELECT a.l AS first, b.l AS second
            FROM (SELECT format('%s@rx', 1000 + i) AS l FROM generate_series(0, 20) i) a,
                 (SELECT format('%s@rx', 1000 + i) AS l FROM generate_series(0, 20) i) b
            WHERE hashtextextended(a.l, 0) < hashtextextended(b.l, 0) AND b.l < a.l
            LIMIT 1
            """
        )  # the ingest commit locks `first`, then `second`; `second` sorts first by name
        for n, lane in enumerate((first, second)):
            await db_pool.execute(
                """
                INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                        priority, event, primary_receiver, seq, received_at,
                                        state, last_error)
                VALUES ($1, 0, '1234', $2, split_part($2, '@', 1), 0, '{}'::jsonb, 'rx', '0001',
                        now(), 'dead', 'DUH')
                """,
                n + 1,
                lane,
            )
        ingest = await asyncpg.connect(database_url)
        try:
            async with ingest.transaction():
                await ingest.execute(_LOCK_LANE, first)
                requeue = asyncio.create_task(requeue_deliveries(db_pool, states=("dead",)))
                await _until_a_lane_lock_is_awaited(db_pool)
                await ingest.execute(_LOCK_LANE, second)
            report = await asyncio.wait_for(requeue, 10)
        finally:
            await ingest.close()
        assert report.requeued == 2

    async def test_a_station_wide_refusal_is_requeued_whatever_its_number_of_lanes(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A station refused every account's alarms (one lane each): requeued, the lanes' locks
        used to fill PostgreSQL's shared lock table ('out of shared memory': nothing requeued,
        and the engines' commits failing meanwhile)."""
        await db_pool.execute(
            """
            INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                    priority, event, primary_receiver, seq, received_at, state,
                                    last_error)
            SELECT i, 0, 'A' || i, i || '@rx', i::text, 0, '{}'::jsonb, 'rx', '0001', now(),
                   'dead', 'DUH'
            FROM generate_series(100000, 129999) i
            """
        )
        report = await requeue_deliveries(db_pool, states=("dead",))
        assert (report.requeued, report.in_flight) == (30_000, 0)
        assert await db_pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'dead'") == 0
