"""Supervision: Panel Not Responding and its restore, durable and single-fire (real PostgreSQL).

Timer logic runs on a fake clock: contacts are committed with chosen receive times and the timer
is asked what is due at chosen instants, so nothing here waits for a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine import supervision
from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.deadline_timer import Clock, utc_now
from engine.delivery_lane import lane_for
from engine.errors import is_database_unreachable
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, IngestResult, SignalKind, Transport
from engine.ingest_writer import IngestWriter
from engine.service import ingest_stages
from engine.settings import Settings, SupervisionSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.account_status import account_status
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from engine.supervision import SupervisionStage, SupervisionTimer
from protocols.contact_id import parse_cid_block
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.database_outage import DatabaseOutage
from tests.support.dc09_module import Dc09TcpModule
from tests.support.engine_process import EngineProcess, write_config
from tests.support.fake_clock import FakeClock
from tests.support.row_holder import HOLD_LANE_SQL, holding, lane_lock_waited_for

FORWARD = ForwardingSettings(
    mode=ForwardingMode.ALWAYS, station_account="4444", primary_receiver="rx"
)
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
DAY, SIX_HOURS = 86_400, 6 * 3600


def contact(
    account: str,
    at: datetime,
    kind: SignalKind = SignalKind.LINK_TEST,
    transport: Transport = Transport.TCP,
) -> InboundSignal:
    """One contact from ``account`` received at ``at``."""
    events = parse_cid_block(f"#{account}|1130 01 003") if kind is SignalKind.EVENT else ()
    return InboundSignal(
        account=account,
        transport=transport,
        kind=kind,
        received_at=at,
        events=events,
        reject_reason="bad json" if kind is SignalKind.REJECTED else None,
    )


class World:
    """The ingest writer with its supervision stage, and timers, on one database and directory."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        accounts: list[Account],
        *,
        grace_s: int = 0,
        clock: Clock = utc_now,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.directory = AccountDirectory()
        self.directory.load(accounts)
        self.forwarding = ForwardingStage(self.directory)
        self.writer = IngestWriter(
            pool,
            duplicate_window_s=600,
            forwarding=self.forwarding,
            supervision=SupervisionStage(self.directory, grace_s=grace_s),
            clock=clock,
        )

    def timer(self, pool: asyncpg.Pool | None = None, batch: int = 500) -> SupervisionTimer:
        return SupervisionTimer(
            pool or self.pool,
            self.forwarding,
            duplicate_window_s=600,
            batch=batch,
            clock=self.clock,
        )

    async def deadline(self, account: str) -> datetime | None:
        value: datetime | None = await self.pool.fetchval(
            "SELECT deadline FROM supervision WHERE account = $1", account
        )
        return value

    async def server_signals(self) -> list[tuple[str, str, str]]:
        """(account, code, qualifier) of every server-generated signal, in commit order."""
        rows = await self.pool.fetch(
            "SELECT account, events->0->>'code' AS code, events->0->>'qualifier' AS q "
            "FROM signals WHERE transport = 'server' ORDER BY id"
        )
        return [(r["account"], r["code"], r["q"]) for r in rows]


@pytest.fixture
async def world(db_pool: asyncpg.Pool) -> World:
    accounts = [
        Account(account="1234", forwarding=FORWARD),
        Account(account="6666", supervision_interval_s=SIX_HOURS, forwarding=FORWARD),
        Account(account="200", supervision_interval_s=200, forwarding=FORWARD),
    ]
    await AccountStore(db_pool).upsert_many(accounts)
    return World(db_pool, accounts)


class TestDeadlines:
    @pytest.mark.parametrize(
        ("kind", "transport"),
        [
            (SignalKind.LINK_TEST, Transport.TCP),  # DC-09 NULL
            (SignalKind.EVENT, Transport.UDP),  # any valid signal
            (SignalKind.CHECKIN, Transport.MQTT),  # MQTT check-in
            (SignalKind.CHECKIN, Transport.VIRTUAL),  # a virtual module's check-in
        ],
    )
    async def test_every_valid_contact_resets_the_deadline(
        self, world: World, kind: SignalKind, transport: Transport
    ) -> None:
        """A NULL, an event, an MQTT or virtual check-in each move the deadline to contact + interval."""
        await world.writer([contact("1234", T0)])
        later = T0 + timedelta(hours=5)
        await world.writer([contact("1234", later, kind, transport)])
        assert await world.deadline("1234") == later + timedelta(seconds=DAY)

    async def test_rejected_payloads_and_server_signals_do_not_reset_it(self, world: World) -> None:
        """A malformed MQTT payload is no proof of life, nor is the engine's own signal."""
        await world.writer([contact("1234", T0)])
        await world.writer(
            [contact("1234", T0 + timedelta(hours=1), SignalKind.REJECTED, Transport.MQTT)]
        )
        server = msgspec.structs.replace(
            contact("1234", T0 + timedelta(hours=2), SignalKind.EVENT), transport=Transport.SERVER
        )
        await world.writer([server])
        assert await world.deadline("1234") == T0 + timedelta(seconds=DAY)

    async def test_panel_not_responding_leaves_the_last_contact_alone(self, world: World) -> None:
        """The miss the engine commits is not a contact from the module: the account's last
        contact stays the module's own (it showed the time of the Panel Not Responding)."""
        await world.writer([contact("200", T0)])
        assert await world.timer().fire_due(T0 + timedelta(seconds=200)) == 1
        assert await world.server_signals() == [("200", "356", "1")]
        last = await world.pool.fetchval(
            "SELECT last_contact_at FROM accounts WHERE account = '200'"
        )
        assert last == T0

    async def test_each_module_has_its_own_interval(self, world: World) -> None:
        """24 h standard, 6 h with the add-on, 200 s (UL's shortest) per account."""
        await world.writer([contact(a, T0) for a in ("1234", "6666", "200")])
        assert [await world.deadline(a) for a in ("1234", "6666", "200")] == [
            T0 + timedelta(seconds=DAY),
            T0 + timedelta(seconds=SIX_HOURS),
            T0 + timedelta(seconds=200),
        ]

    async def test_grace_is_added(self, db_pool: asyncpg.Pool) -> None:
        """supervision.grace_s is added to every interval."""
        account = Account(account="1234", supervision_interval_s=200)
        await AccountStore(db_pool).upsert_many([account])
        await World(db_pool, [account], grace_s=75).writer([contact("1234", T0)])
        assert await db_pool.fetchval("SELECT deadline FROM supervision") == T0 + timedelta(
            seconds=275
        )

    async def test_an_older_contact_committed_late_does_not_pull_it_back(
        self, world: World
    ) -> None:
        """Batches from several writers may commit out of order: the latest contact wins."""
        await world.writer([contact("1234", T0 + timedelta(minutes=10))])
        await world.writer([contact("1234", T0)])
        assert await world.deadline("1234") == T0 + timedelta(minutes=10, seconds=DAY)

    async def test_a_contact_raced_with_an_interval_change_does_not_stick(
        self, world: World, db_pool: asyncpg.Pool
    ) -> None:
        """24 h → 6 h while an engine still holds 24 h (its NOTIFY not yet read): the contact it
        commits gets a 24 h deadline, but the next contact, once it knows 6 h, brings the deadline
        back to 6 h after that contact (the later of the two deadlines would keep the 24 h one)."""
        await world.writer([contact("1234", T0)])
        shorter = Account(account="1234", supervision_interval_s=SIX_HOURS, forwarding=FORWARD)
        await AccountStore(db_pool).upsert_many([shorter])  # the trigger: T0 + 6 h
        await world.writer([contact("1234", T0 + timedelta(minutes=1))])  # stale directory: 24 h
        assert await world.deadline("1234") == T0 + timedelta(minutes=1, seconds=DAY)
        world.directory.upsert(shorter)  # the NOTIFY arrives
        await world.writer([contact("1234", T0 + timedelta(minutes=5))])
        assert await world.deadline("1234") == T0 + timedelta(minutes=5, seconds=SIX_HOURS)

    async def test_changing_the_interval_moves_the_pending_deadline(
        self, world: World, db_pool: asyncpg.Pool
    ) -> None:
        """An interval change (import, package API) moves the deadline at once, before any contact."""
        await world.writer([contact("1234", T0)])
        shorter = Account(account="1234", supervision_interval_s=SIX_HOURS, forwarding=FORWARD)
        await AccountStore(db_pool).upsert_many([shorter])
        assert await world.deadline("1234") == T0 + timedelta(seconds=SIX_HOURS)
        await AccountStore(db_pool).upsert_many([shorter])  # unchanged interval: no move
        assert await world.deadline("1234") == T0 + timedelta(seconds=SIX_HOURS)
        world.directory.upsert(shorter)
        timer = world.timer()
        assert await timer.fire_due(T0 + timedelta(seconds=SIX_HOURS)) == 1

    async def test_a_deadline_written_after_a_termination_raises_nothing(
        self, world: World
    ) -> None:
        """The customer is terminated (its account and supervision rows deleted) while a contact
        is on its way: the engine, not yet told, writes a deadline again. When it falls due the
        row is dropped, no Panel Not Responding (it was raised for an account that no longer
        exists); the other account's miss is raised as usual."""
        await world.writer([contact("200", T0), contact("6666", T0)])
        await world.pool.execute("DELETE FROM accounts WHERE account = '200'")
        await world.pool.execute("DELETE FROM supervision WHERE account = '200'")
        await world.writer([contact("200", T0 + timedelta(seconds=5))])
        assert await world.deadline("200") is not None
        assert await world.timer().fire_due(T0 + timedelta(days=1)) == 1
        assert await world.deadline("200") is None
        assert await world.server_signals() == [("6666", "356", "1")]

    async def test_contacts_move_deadlines_while_the_timer_is_off(self, world: World) -> None:
        """With supervision.enabled off (this engine, or for a while) contacts still move the
        deadline: a module heard meanwhile raises no miss once a timer runs (its deadline was
        still the one of its contact before, and it was raised at once)."""
        off = msgspec.structs.replace(
            Settings(), supervision=SupervisionSettings(enabled=False, grace_s=0)
        )
        supervision, _ = ingest_stages(off, world.directory)
        writer = IngestWriter(
            world.pool, duplicate_window_s=600, forwarding=world.forwarding, supervision=supervision
        )
        await world.writer([contact("200", T0)])
        heard = T0 + timedelta(seconds=150)
        await writer([contact("200", heard)])
        assert await world.deadline("200") == heard + timedelta(seconds=200)
        assert await world.timer().fire_due(T0 + timedelta(seconds=300)) == 0
        assert await world.timer().fire_due(heard + timedelta(seconds=200)) == 1


class TestTimer:
    async def test_fires_at_the_deadline_not_before(self, world: World) -> None:
        """Nothing is due a second before; at the deadline one Panel Not Responding (356 Q=1) is
        committed with its decision and its outbox row."""
        await world.writer([contact("200", T0)])
        timer = world.timer()
        deadline = T0 + timedelta(seconds=200)
        assert await timer.seconds_to_next(T0) == 200.0
        assert await timer.fire_due(deadline - timedelta(seconds=1)) == 0
        assert await timer.fire_due(deadline) == 1
        assert await timer.fire_due(deadline + timedelta(hours=1)) == 0
        assert await world.server_signals() == [("200", "356", "1")]
        decision = await world.pool.fetchrow("SELECT category, reason FROM decisions")
        assert decision is not None
        assert (decision["category"], decision["reason"]) == ("panel_not_responding", "forwarded")
        delivery = await world.pool.fetchrow("SELECT station_account, priority FROM deliveries")
        assert delivery is not None and (delivery["station_account"], delivery["priority"]) == (
            "4444",
            0,
        )

    async def test_next_contact_commits_the_restore(self, world: World) -> None:
        """After a miss the next contact commits 356 Q=3 (after that contact), once; the miss is
        over and the deadline follows the contacts again."""
        await world.writer([contact("200", T0)])
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 1
        back = T0 + timedelta(hours=2)
        results = await world.writer([contact("200", back, SignalKind.EVENT)])
        assert results == [IngestResult.ACCEPTED]
        await world.writer([contact("200", back + timedelta(seconds=1))])
        assert await world.server_signals() == [("200", "356", "1"), ("200", "356", "3")]
        order = await world.pool.fetch("SELECT transport FROM signals ORDER BY id")
        assert [r["transport"] for r in order] == ["server", "tcp", "server"]
        assert await world.pool.fetchval("SELECT missed FROM supervision") is False
        assert await world.deadline("200") == back + timedelta(seconds=201)

    async def test_a_restore_that_fails_leaves_the_contact_stored_and_the_miss(
        self, world: World
    ) -> None:
        """The restore cannot be written (here every engine signal is refused): the contact that
        came back is still committed and answered ACCEPTED, the miss stays, and the next
        contact restores it. (The failure used to fail the whole committed batch: no ACK, or
        the batch written again.)"""
        await world.writer([contact("200", T0)])
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 1
        await world.pool.execute(
            """
            CREATE FUNCTION test_refuse_server() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'test: engine signals refused'; END $$;
            CREATE TRIGGER test_refuse_server BEFORE INSERT ON signals FOR EACH ROW
            WHEN (NEW.transport = 'server') EXECUTE FUNCTION test_refuse_server();
            """
        )
        back = T0 + timedelta(hours=2)
        try:
            results = await world.writer([contact("200", back, SignalKind.EVENT)])
        finally:
            await world.pool.execute(
                "DROP TRIGGER test_refuse_server ON signals; DROP FUNCTION test_refuse_server()"
            )
        assert results == [IngestResult.ACCEPTED]
        stored = await world.pool.fetch("SELECT received_at FROM signals WHERE transport = 'tcp'")
        assert [r["received_at"] for r in stored] == [back]  # the event that came back
        assert await world.pool.fetchval("SELECT missed FROM supervision") is True
        await world.writer([contact("200", back + timedelta(seconds=1))])
        assert await world.server_signals() == [("200", "356", "1"), ("200", "356", "3")]
        assert await world.pool.fetchval("SELECT missed FROM supervision") is False

    async def test_the_restore_is_stamped_by_the_supervision_clock(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The restore is received at the injected clock's time, like the miss (not the host's)."""
        account = Account(account="200", supervision_interval_s=200, forwarding=FORWARD)
        await AccountStore(db_pool).upsert_many([account])
        clock = FakeClock(T0)
        world = World(db_pool, [account], clock=clock)
        await world.writer([contact("200", T0)])
        missed_at = clock.advance(3600)
        assert await world.timer().fire_due(missed_at) == 1
        restored_at = clock.advance(60)
        await world.writer([contact("200", restored_at - timedelta(seconds=1))])
        rows = await db_pool.fetch(
            "SELECT events->0->>'qualifier' AS q, received_at FROM signals "
            "WHERE transport = 'server' ORDER BY id"
        )
        assert [(r["q"], r["received_at"]) for r in rows] == [("1", missed_at), ("3", restored_at)]
        decided = await db_pool.fetch("SELECT received_at FROM decisions ORDER BY signal_id")
        assert [r["received_at"] for r in decided] == [missed_at, restored_at]

    async def test_the_account_state_follows_the_miss_and_its_restore(self, world: World) -> None:
        """The account's state shows Panel Not Responding from the miss until the restore, read
        from the one table that records it (account_state keeps no copy that could disagree)."""
        await world.writer([contact("200", T0)])
        status = await account_status(world.pool, "200")
        assert status is not None and not status.panel_not_responding
        missed_at = T0 + timedelta(seconds=200)
        assert await world.timer().fire_due(missed_at) == 1
        status = await account_status(world.pool, "200")
        assert status is not None
        assert (status.panel_not_responding, status.panel_not_responding_since) == (True, missed_at)
        await world.writer([contact("200", missed_at + timedelta(minutes=5))])
        status = await account_status(world.pool, "200")
        assert status is not None
        assert (status.panel_not_responding, status.panel_not_responding_since) == (False, None)
        columns = await world.pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'account_state'"
        )
        assert "panel_not_responding" not in {c["column_name"] for c in columns}

    async def test_a_restarted_engine_fires_a_passed_deadline_once(
        self, world: World, database_url: str
    ) -> None:
        """The deadline passes while no timer runs: the next engine's timer fires it once, the one
        after that (another restart) finds nothing."""
        await world.writer([contact("200", T0)])
        late = T0 + timedelta(hours=3)
        for expected in (1, 0):
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            try:
                assert await world.timer(pool).fire_due(late) == expected
            finally:
                await pool.close()
        assert await world.server_signals() == [("200", "356", "1")]

    async def test_two_timers_fire_each_deadline_once(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Two timers on their own pools (as two engines) racing over 60 due deadlines raise 60 misses."""
        accounts = [
            Account(account=f"{0xC00 + i:X}", supervision_interval_s=200) for i in range(60)
        ]
        await AccountStore(db_pool).upsert_many(accounts)
        one = World(db_pool, accounts)
        await one.writer([contact(a.account, T0) for a in accounts])
        pools = [await asyncpg.create_pool(database_url, min_size=2, max_size=2) for _ in range(2)]
        try:
            timers = [one.timer(pool, batch=7) for pool in pools]
            now = T0 + timedelta(seconds=200)
            for _ in range(12):
                await asyncio.gather(*(t.fire_due(now) for t in timers))
        finally:
            for pool in pools:
                await pool.close()
        assert sum(t.fired for t in timers) == 60
        assert all(t.fired > 0 for t in timers)
        server = await one.server_signals()
        assert sorted(a for a, _, _ in server) == sorted(a.account for a in accounts)
        assert await db_pool.fetchval("SELECT count(*) FROM supervision WHERE missed") == 60


class TestHeldRows:
    """An account's supervision row held by another transaction (an operator's transaction left
    open in psql, a stuck admin call) holds back neither the other accounts' Panel Not
    Responding nor the timer: it is fired once free, once."""

    HELD_SQL = "SELECT 1 FROM supervision WHERE account = $1 FOR UPDATE"

    @pytest.fixture
    async def two(self, db_pool: asyncpg.Pool) -> World:
        accounts = [
            Account(account=a, supervision_interval_s=200, forwarding=FORWARD)
            for a in ("201", "202")
        ]
        await AccountStore(db_pool).upsert_many(accounts)
        world = World(db_pool, accounts)
        await world.writer([contact("201", T0), contact("202", T0)])
        return world

    async def test_the_others_fire_in_the_round_and_the_held_one_once_free(
        self, two: World
    ) -> None:
        timer = two.timer()
        due = T0 + timedelta(seconds=200)
        async with holding(two.pool, self.HELD_SQL, "201"):
            assert await timer.fire_due(due) == 1
            assert await two.server_signals() == [("202", "356", "1")]
            # the held row's passed deadline is not woken for (the loop would spin): it is
            # looked at again after max_sleep_s
            assert await timer.seconds_to_next(due) == 5.0
            assert await timer.fire_due(due + timedelta(seconds=5)) == 0
        assert await timer.fire_due(due + timedelta(seconds=10)) == 1
        assert await timer.fire_due(due + timedelta(seconds=15)) == 0
        assert sorted(await two.server_signals()) == [("201", "356", "1"), ("202", "356", "1")]

    async def test_a_miss_whose_delivery_lane_is_held_does_not_hold_back_the_others(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A lane's lock held elsewhere (a dispatcher recording a failure while it waits for a
        row): the round's commit fails past its lock timeout; the round is tried again without
        the miss going to that lane, which fires once the lane is free."""
        other = ForwardingSettings(
            mode=ForwardingMode.ALWAYS, station_account="4445", primary_receiver="rx"
        )
        accounts = [
            Account(account="201", supervision_interval_s=200, forwarding=FORWARD),
            Account(account="202", supervision_interval_s=200, forwarding=other),
        ]
        await AccountStore(db_pool).upsert_many(accounts)
        world = World(db_pool, accounts)
        await world.writer([contact("201", T0), contact("202", T0)])
        timer = world.timer()
        due = T0 + timedelta(seconds=200)
        lane = lane_for("4444", "rx")
        with capture_logs() as logs:
            async with holding(db_pool, HOLD_LANE_SQL, lane):
                assert await timer.fire_due(due) == 1
                assert await world.server_signals() == [("202", "356", "1")]
                assert await timer.seconds_to_next(due) == 5.0
                assert await timer.fire_due(due + timedelta(seconds=5)) == 0
            assert await timer.fire_due(due + timedelta(seconds=10)) == 1
        assert sorted(await world.server_signals()) == [("201", "356", "1"), ("202", "356", "1")]
        held = [e for e in logs if e["event"] == "supervision_row_held"]
        assert [(e["account"], e["lock"], e["lane"]) for e in held] == [("201", "lane", lane)]
        lanes = await db_pool.fetch("SELECT lane FROM deliveries ORDER BY lane")
        assert [r["lane"] for r in lanes] == [lane, lane_for("4445", "rx")]

    async def test_a_lane_found_held_is_not_waited_for_again_by_the_next_rounds(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Once a round found a due miss's lane held, the next rounds look at the lanes without
        waiting. Each round first tried its commit as usual: it waited the lock timeout (500 ms)
        for the held lane, every max_sleep_s (and after every round that fired) for as long as
        the lane was held, with every due row of the round locked meanwhile (a contact of one
        of those modules, and the group commit holding it, waited with it); the miss falling due
        meanwhile (203) waited too."""
        other = ForwardingSettings(
            mode=ForwardingMode.ALWAYS, station_account="4445", primary_receiver="rx"
        )
        accounts = [
            Account(account="201", supervision_interval_s=200, forwarding=FORWARD),
            Account(account="202", supervision_interval_s=200, forwarding=other),
            Account(account="203", supervision_interval_s=205, forwarding=other),
        ]
        await AccountStore(db_pool).upsert_many(accounts)
        world = World(db_pool, accounts)
        await world.writer([contact(a.account, T0) for a in accounts])
        timer = world.timer()
        due = T0 + timedelta(seconds=200)
        async with holding(db_pool, HOLD_LANE_SQL, lane_for("4444", "rx")):
            assert await timer.fire_due(due) == 1  # the round that finds the lane held
            later = asyncio.create_task(timer.fire_due(due + timedelta(seconds=5)))
            assert not await lane_lock_waited_for(db_pool, later)
            assert await later == 1
            assert sorted(await world.server_signals()) == [
                ("202", "356", "1"),
                ("203", "356", "1"),
            ]
        assert await timer.fire_due(due + timedelta(seconds=10)) == 1
        assert await timer.fire_due(due + timedelta(seconds=15)) == 0

    async def test_a_hold_is_logged_and_counted_once(self, two: World) -> None:
        """Reported when a second round finds it still held (a row locked for a moment, by
        another engine's timer firing it, is not), released when found free."""
        timer = two.timer()
        due = T0 + timedelta(seconds=200)
        before = sample("alarmrelay_timer_rows_held_total", timer="supervision")
        with capture_logs() as logs:
            async with holding(two.pool, self.HELD_SQL, "201"):
                for n in range(3):
                    await timer.fire_due(due + timedelta(seconds=5 * n))
            await timer.fire_due(due + timedelta(seconds=15))
        events = [(e["event"], e.get("account")) for e in logs if "_row_" in e["event"]]
        assert events == [("supervision_row_held", "201"), ("supervision_row_released", "201")]
        assert sample("alarmrelay_timer_rows_held_total", timer="supervision") == before + 1


class TestSettling:
    """A deadline that passed while the engine could not hear the modules (it was not running, or
    its database was out of reach) is the engine's silence: modules get supervision.grace_s to
    come back before a miss is raised for them."""

    async def test_a_started_engine_gives_modules_the_grace_to_come_back(
        self, world: World
    ) -> None:
        """Both deadlines passed while no engine ran: nothing is raised for 120 s after the start;
        the module heard meanwhile raises nothing, the silent one its miss once."""
        await world.writer([contact("200", T0), contact("6666", T0)])
        start = T0 + timedelta(hours=7)  # both deadlines lie behind
        timer = SupervisionTimer(world.pool, world.forwarding, duplicate_window_s=600, settle_s=120)
        assert await timer.fire_due(start) == 0
        assert await timer.seconds_to_next(start) == 120.0
        await world.writer([contact("6666", start + timedelta(seconds=30))])  # back
        assert await timer.fire_due(start + timedelta(seconds=119)) == 0
        assert await timer.fire_due(start + timedelta(seconds=120)) == 1
        assert await world.server_signals() == [("200", "356", "1")]
        # settled: a deadline is raised when it passes, as always
        deadline = start + timedelta(seconds=30 + SIX_HOURS)
        assert (
            await timer.seconds_to_next(start + timedelta(seconds=120))
            == (deadline - start - timedelta(seconds=120)).total_seconds()
        )
        assert await timer.fire_due(deadline) == 1

    async def test_after_the_database_was_out_of_reach_it_settles_again(
        self, world: World, database_url: str
    ) -> None:
        """The timer's connection is cut (no contact could be committed either): deadlines that
        passed meanwhile wait 120 s after the database answers again."""
        await world.writer([contact("200", T0)])
        async with DatabaseOutage(database_url) as outage:
            timer = SupervisionTimer(
                outage.pool, world.forwarding, duplicate_window_s=600, settle_s=120
            )
            assert await timer.fire_due(T0) == 0  # settling from the start
            assert await timer.fire_due(T0 + timedelta(seconds=120)) == 0  # settled, nothing due
            await outage.cut(world.pool)
            away = T0 + timedelta(seconds=150)
            with pytest.raises(Exception) as lost:  # whichever asyncpg raises for a lost backend
                await timer.fire_due(away)
            assert is_database_unreachable(lost.value), lost.value
            outage.restore()
            back = T0 + timedelta(seconds=300)  # the deadline (T0 + 200 s) passed meanwhile
            assert await timer.fire_due(back) == 0
            assert await timer.fire_due(back + timedelta(seconds=120)) == 1


def sample(name: str, **labels: str) -> float:
    """The current value of one exported metric sample (0 before its first use)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestMetrics:
    async def test_misses_restores_fired_and_lag(self, world: World) -> None:
        """A miss fired 5 s late counts a miss, a fired supervision timer and 5 s of lag; the
        restore counts a restore; the gauge counts the modules with a pending deadline."""
        names = (
            ("alarmrelay_supervision_misses_total", {}),
            ("alarmrelay_supervision_restores_total", {}),
            ("alarmrelay_timers_fired_total", {"timer": "supervision"}),
            ("alarmrelay_timer_lag_seconds_count", {"timer": "supervision"}),
            ("alarmrelay_timer_lag_seconds_sum", {"timer": "supervision"}),
        )
        before = [sample(n, **labels) for n, labels in names]
        await world.writer([contact("200", T0), contact("1234", T0)])
        timer = world.timer()
        await timer.seconds_to_next(T0)
        assert sample("alarmrelay_supervised_modules") == 2
        assert await timer.fire_due(T0 + timedelta(seconds=205)) == 1
        await world.writer([contact("200", T0 + timedelta(seconds=300))])
        after = [sample(n, **labels) for n, labels in names]
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1, 5.0]


class TestNoScans:
    async def test_the_timer_reads_only_the_due_index(self, db_pool: asyncpg.Pool) -> None:
        """With 50,000 supervised modules the timer's queries use the partial due index, never a
        sequential scan of the table."""
        await db_pool.execute(
            "INSERT INTO supervision (account, deadline) "
            "SELECT to_hex(i), now() + i * interval '1 second' FROM generate_series(1, 50000) i"
        )
        await db_pool.execute("ANALYZE supervision")
        plans = []
        now = datetime.now(UTC)
        for sql, args in (
            (supervision.NEXT_SQL, (now,)),
            (supervision.NEXT_SQL, (datetime.min.replace(tzinfo=UTC),)),
            (supervision.DUE_SQL, (500, now)),
        ):
            rows = await db_pool.fetch(f"EXPLAIN {sql}", *args)
            plans.append("\n".join(r[0] for r in rows))
        for plan in plans:
            assert "supervision_due" in plan, plan
            assert "Seq Scan" not in plan, plan


# -- end to end: a running engine, DC-09 modules and a station simulator ----------------------


def fast(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, supervision=SupervisionSettings(grace_s=0, max_sleep_s=0.1)
    )


@pytest.fixture
async def station(db_pool: asyncpg.Pool) -> AsyncIterator[StationSimulator]:
    sim = StationSimulator()
    port = await sim.start()
    await StationStore(db_pool).upsert(
        [
            Station(
                name="s",
                receivers=(
                    ReceiverConfig(name="rx", host="127.0.0.1", port=port),
                    ReceiverConfig(name="rx-sia", host="127.0.0.1", port=port, families="sia"),
                ),
            )
        ]
    )
    await AccountStore(db_pool).upsert_many(
        [
            Account(account="1234", supervision_interval_s=3600, forwarding=FORWARD),
            Account(
                account="5678",
                supervision_interval_s=3600,
                forwarding=msgspec.structs.replace(
                    FORWARD, station_account="5555", primary_receiver="rx-sia"
                ),
            ),
        ]
    )
    yield sim
    await sim.stop()


async def null_from(port: int, account: str = "1234") -> None:
    module = Dc09TcpModule("127.0.0.1", port, account=account)
    await module.connect()
    assert await module.send("NULL", "") is not None
    await module.close()


def pnr(sim: StationSimulator) -> list[tuple[str | None, str, str, str | None]]:
    """(station account, family, code, qualifier) of the supervision frames the station got."""
    return [
        (r.account, r.events[0].family, r.events[0].code, r.events[0].qualifier)
        for r in sim.received
        if r.events and r.events[0].code in {"356", "YC", "YK"}
    ]


class TestAtTheStation:
    async def test_miss_then_restore_reach_the_station(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """A silent module raises CID 356 Q=1 at the station (SIA YC at a SIA-only receiver); its
        next contact sends the restore (356 Q=3 / YK)."""
        clock = FakeClock(ticking=True)
        async with running_engine(fast(settings_for(database_url)), clock=clock) as engine:
            assert engine.dc09 is not None and engine.supervision_timer is not None
            await null_from(engine.dc09.port, "1234")
            await null_from(engine.dc09.port, "5678")
            clock.advance(3600 + 1)
            engine.supervision_timer.wake()
            await station.wait_for(2, timeout_s=10)
            assert sorted(pnr(station)) == [
                ("4444", "cid", "356", "1"),
                ("5555", "sia", "YC", None),
            ]
            # The listeners stamp contacts with the real clock: back in step with it, so the new
            # deadlines (contact + 1 h) lie ahead of the timer's clock again.
            clock.advance(-(3600 + 1))
            await null_from(engine.dc09.port, "1234")
            await null_from(engine.dc09.port, "5678")
            await station.wait_for(4, timeout_s=10)
        assert sorted(pnr(station)[2:]) == [
            ("4444", "cid", "356", "3"),
            ("5555", "sia", "YK", None),
        ]
        assert await db_pool.fetchval("SELECT count(*) FROM supervision WHERE missed") == 0
        reasons = await db_pool.fetch("SELECT category, reason FROM decisions")
        assert [(r["category"], r["reason"]) for r in reasons] == [
            ("panel_not_responding", "forwarded")
        ] * 4

    async def test_restart_between_deadline_and_firing_fires_once(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """The deadline passes while no engine runs: the next engine fires it once; a later
        restart does not fire it again."""
        clock = FakeClock(ticking=True)
        async with running_engine(fast(settings_for(database_url)), clock=clock) as engine:
            assert engine.dc09 is not None
            await null_from(engine.dc09.port)
        clock.advance(3600 + 1)  # while no engine runs
        async with running_engine(fast(settings_for(database_url)), clock=clock) as engine:
            await station.wait_for(1, timeout_s=10)
            assert engine.supervision_timer is not None and engine.supervision_timer.fired == 1
        async with running_engine(fast(settings_for(database_url)), clock=clock) as engine:
            assert engine.supervision_timer is not None
            assert await engine.supervision_timer.fire_due(clock()) == 0  # nothing due any more
            assert engine.supervision_timer.fired == 0
        assert pnr(station) == [("4444", "cid", "356", "1")]
        assert (
            await db_pool.fetchval("SELECT count(*) FROM signals WHERE transport = 'server'") == 1
        )


@pytest.mark.slow
class TestTwoEngineProcesses:
    async def test_two_serve_processes_fire_each_miss_once(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """Two `alarmrelay serve` processes on one database, running when 1,200 deadlines pass at
        once: the station gets each account's Panel Not Responding exactly once."""
        accounts = [f"{0xA000 + i:X}" for i in range(1200)]
        sim = StationSimulator()
        port = await sim.start()
        await StationStore(db_pool).upsert(
            [Station(name="s", receivers=(ReceiverConfig(name="rx", host="127.0.0.1", port=port),))]
        )
        await AccountStore(db_pool).upsert_many(
            [Account(account=a, forwarding=msgspec.structs.replace(FORWARD, station_account=a)) for a in accounts]
        )  # fmt: skip
        await db_pool.execute(
            "INSERT INTO supervision (account, deadline) "
            "SELECT account, now() + interval '1 hour' FROM accounts"
        )
        # grace_s 0: the deadlines are set to pass just after the start, not settled for 120 s
        extra = "[mqtt]\nenabled = false\n[supervision]\nmax_sleep_s = 0.2\ngrace_s = 0\n[virtual]\nenabled = false\n"
        engines = [
            EngineProcess(
                write_config(
                    tmp_path / f"engine{n}.toml", database_url=database_url, data_dir=tmp_path, extra=extra
                )
            )
            for n in range(2)
        ]  # fmt: skip
        try:
            await asyncio.gather(*(asyncio.to_thread(e.start) for e in engines))
            await db_pool.execute("UPDATE supervision SET deadline = now() - interval '1 second'")
            await sim.wait_for(1200, timeout_s=90)
            await asyncio.sleep(1.0)  # room for a second copy to show up, if there were one
            async with httpx.AsyncClient(timeout=5) as client:
                scraped = [
                    (await client.get(f"http://127.0.0.1:{e.http_port}/metrics")).text
                    for e in engines
                ]
            fired = [len(e.events("panel_not_responding")) for e in engines]
        finally:
            for engine in engines:
                await asyncio.to_thread(engine.terminate)
            await sim.stop()
        # Each account's Panel Not Responding reached the station as one delivery: one seq per
        # account (a second miss, or a second delivery of it, would carry another). The same
        # frame again with its seq (an ACK that came after the timeout on a loaded machine, or a
        # lease taken over) is a documented retransmission the station deduplicates.
        seqs: dict[str, set[str]] = {}
        for r in sim.received:
            seqs.setdefault(r.account or "", set()).add(r.seq)
        assert sorted(seqs) == sorted(accounts)
        assert {a: s for a, s in seqs.items() if len(s) != 1} == {}
        assert sum(fired) == 1200, fired
        totals = [
            float(line.split()[-1])
            for text in scraped
            for line in text.splitlines()
            if line.startswith('alarmrelay_timers_fired_total{timer="supervision"}')
        ]
        assert sum(totals) == 1200
