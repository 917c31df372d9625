"""Crash & Smash: entry delay → disarm / alarm / silence → what is recorded and what the station gets.

Timer logic runs on a fake clock (signals committed with chosen receive times, the timer asked what
is due at chosen instants); the end-to-end tests use a running engine, real Mosquitto and a
station simulator, and move the engine's timer clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.crash_smash import CrashSmashStage, CrashSmashTimer
from engine.delivery_lane import lane_for
from engine.errors import is_database_unreachable
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import EntryDelay, InboundSignal, SignalKind, Transport
from engine.ingest_writer import IngestWriter
from engine.service import Engine, ingest_stages
from engine.settings import CrashSmashSettings, Settings, SupervisionSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.account_status import account_status
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from protocols.contact_id import parse_cid_block
from protocols.sia_dc03 import parse_sia_block
from protocols.signal import DEFAULT_FORWARDED_CATEGORIES, Category
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.database_outage import DatabaseOutage
from tests.support.dc09_module import Dc09TcpModule
from tests.support.fake_clock import FakeClock
from tests.support.row_holder import HOLD_LANE_SQL, holding

FORWARD = ForwardingSettings(
    mode=ForwardingMode.ALWAYS, station_account="3333", primary_receiver="rx"
)
T0 = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)
ENTRY_CODE = "cid:760"  # a vendor's "entry delay started" code (not a standard Contact ID event)


def entry(
    partition: int = 1, zone: int | None = 3, delay_s: int = 20, *, at: datetime = T0
) -> InboundSignal:
    """An MQTT entry-delay start (armed, door opened) for account 7777."""
    return InboundSignal(
        account="7777",
        transport=Transport.MQTT,
        kind=SignalKind.EVENT,
        received_at=at,
        entry_delay=EntryDelay(partition=partition, zone=zone, entry_delay_s=delay_s),
    )


def cid(block: str, *, at: datetime, account: str = "7777") -> InboundSignal:
    """A Contact ID event from ``account``, e.g. ``cid("1401 02 003", at=…)``."""
    return InboundSignal(
        account=account,
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=at,
        events=parse_cid_block(f"#{account}|{block}"),
    )


class World:
    """The ingest writer with the Crash & Smash stage and timers on one database (fake clock)."""

    def __init__(self, pool: asyncpg.Pool, accounts: list[Account], **stage: Any) -> None:
        self.pool = pool
        self.directory = AccountDirectory()
        self.directory.load(accounts)
        self.forwarding = ForwardingStage(self.directory)
        self.writer = IngestWriter(
            pool,
            duplicate_window_s=600,
            forwarding=self.forwarding,
            crash_smash=CrashSmashStage(
                dialer_delay_s=stage.pop("dialer_delay_s", 30),
                grace_s=stage.pop("grace_s", 30),
                accounts=self.directory,
                **stage,
            ),
        )

    def timer(self, pool: asyncpg.Pool | None = None) -> CrashSmashTimer:
        return CrashSmashTimer(pool or self.pool, self.forwarding, duplicate_window_s=600)

    async def entries(self) -> list[tuple[int, str, str | None, datetime]]:
        rows = await self.pool.fetch(
            "SELECT partition, state, closed_reason, deadline FROM pending_entries ORDER BY partition"
        )
        return [(r["partition"], r["state"], r["closed_reason"], r["deadline"]) for r in rows]

    async def alarms(self) -> list[tuple[str, int | None, int | None, str | None]]:
        """(code, zone, partition, text) of the Crash & Smash alarms committed."""
        rows = await self.pool.fetch(
            "SELECT events FROM signals WHERE transport = 'server' ORDER BY id"
        )
        events = [json.loads(r["events"])[0] for r in rows]
        return [(e["code"], e.get("zone"), e.get("partition"), e.get("text")) for e in events]


@pytest.fixture
async def world(db_pool: asyncpg.Pool) -> World:
    accounts = [Account(account="7777", forwarding=FORWARD)]
    await AccountStore(db_pool).upsert_many(accounts)
    return World(db_pool, accounts, entry_codes=frozenset({ENTRY_CODE}), entry_delay_s=45)


class TestTimer:
    async def test_deadline_is_entry_plus_dialer_plus_grace(self, world: World) -> None:
        """Entry delay 20 s + dialer delay 30 s + grace 30 s (the defaults): nothing before, one
        Crash & Smash alarm at the deadline, none after."""
        await world.writer([entry()])
        deadline = T0 + timedelta(seconds=80)
        assert [e[3] for e in await world.entries()] == [deadline]
        timer = world.timer()
        assert await timer.seconds_to_next(T0) == 80.0
        assert await timer.fire_due(deadline - timedelta(seconds=1)) == 0
        assert await timer.fire_due(deadline) == 1
        assert await timer.fire_due(deadline + timedelta(hours=1)) == 0
        assert await world.alarms() == [("130", 3, 1, "Crash & Smash")]
        assert [e[1] for e in await world.entries()] == ["fired"]
        decision = await world.pool.fetchrow("SELECT category, reason FROM decisions")
        assert decision is not None
        assert (decision["category"], decision["reason"]) == ("crash_smash", "forwarded")

    async def test_an_entry_committed_after_a_termination_raises_nothing(
        self, world: World
    ) -> None:
        """The customer is terminated (its account row deleted, its entries closed) while an
        entry is on its way: the engine, not yet told, opens a timer again. When it falls due
        the entry is closed as 'terminated', no Crash & Smash is raised for an account that no
        longer exists."""
        await world.pool.execute("DELETE FROM accounts WHERE account = '7777'")
        await world.writer([entry()])
        assert await world.timer().fire_due(T0 + timedelta(seconds=80)) == 0
        assert [(s, r) for _, s, r, _ in await world.entries()] == [("closed", "terminated")]
        assert await world.alarms() == []

    async def test_the_fired_entry_names_its_alarm(self, world: World) -> None:
        """The account's state leads from the fired entry to the Crash & Smash alarm it raised."""
        await world.writer([entry()])
        assert await world.timer().fire_due(T0 + timedelta(seconds=80)) == 1
        alarm_id = await world.pool.fetchval("SELECT id FROM signals WHERE transport = 'server'")
        status = await account_status(world.pool, "7777")
        assert status is not None
        assert [(e.state, e.fired_signal_id) for e in status.entries] == [("fired", alarm_id)]

    async def test_the_accounts_dialer_delay_replaces_the_default(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """An account's dialer_delay_s (120 s) is used instead of crash_smash.dialer_delay_s."""
        own = Account(account="7777", forwarding=FORWARD, dialer_delay_s=120)
        await AccountStore(db_pool).upsert_many([own])
        world = World(db_pool, [own], dialer_delay_s=0, grace_s=5)
        await world.writer([entry(delay_s=20)])
        assert [e[3] for e in await world.entries()] == [T0 + timedelta(seconds=145)]

    async def test_disarm_in_time_closes_it_and_nothing_fires(self, world: World) -> None:
        """A disarm (CID 401 Q=1) from the partition before the deadline: recorded, never fired."""
        await world.writer([entry()])
        await world.writer([cid("1401 01 002", at=T0 + timedelta(seconds=15))])
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", "disarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    @pytest.mark.parametrize("code", ["404", "453", "455"])
    async def test_a_schedule_exception_is_not_a_disarm(self, world: World, code: str) -> None:
        """Late to open (404), failed to open (453), auto-arm failed (455), with Q=1: nobody
        disarmed, so the entry stays open and fires (they closed it as a disarm)."""
        await world.writer([entry()])
        await world.writer([cid(f"1{code} 01 002", at=T0 + timedelta(seconds=15))])
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]
        assert await world.timer().fire_due(T0 + timedelta(seconds=80)) == 1

    async def test_an_alarm_from_the_partition_closes_it(self, world: World) -> None:
        """A burglary alarm from the partition: the normal alarm is all that is forwarded."""
        await world.writer([entry()])
        await world.writer([cid("1134 01 003", at=T0 + timedelta(seconds=25))])
        assert [(s, r) for _, s, r, _ in await world.entries()] == [("closed", "alarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        forwarded = await world.pool.fetch("SELECT category FROM decisions WHERE forward")
        assert [r["category"] for r in forwarded] == ["alarms"]

    async def test_timers_are_per_partition(self, world: World) -> None:
        """Entries on partitions 1 and 2; a disarm and an alarm from partition 3 and a disarm from
        partition 2: only partition 1 fires."""
        await world.writer([entry(partition=1, zone=3), entry(partition=2, zone=9)])
        later = T0 + timedelta(seconds=10)
        await world.writer([cid("1401 03 002", at=later), cid("1134 03 004", at=later)])
        await world.writer([cid("1401 02 002", at=later)])
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending"), (2, "closed")]
        assert await world.timer().fire_due(T0 + timedelta(seconds=80)) == 1
        assert await world.alarms() == [("130", 3, 1, "Crash & Smash")]

    async def test_with_crash_smash_off_disarms_still_close_entries_and_none_open(
        self, world: World
    ) -> None:
        """crash_smash.enabled off (this engine, or for a while): an entry opens nothing, and a
        disarm closes the entry opened before, so the timer raises nothing once it runs again
        (the disarm used to be ignored and the entry fired: a disarmed system's Crash & Smash)."""
        off = msgspec.structs.replace(Settings(), crash_smash=CrashSmashSettings(enabled=False))
        _, stage = ingest_stages(off, world.directory)
        writer = IngestWriter(
            world.pool, duplicate_window_s=600, forwarding=world.forwarding, crash_smash=stage
        )
        await world.writer([entry(partition=1)])
        await writer([entry(partition=2), cid("1401 01 002", at=T0 + timedelta(seconds=15))])
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", "disarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_a_disarm_before_the_entry_in_one_batch_does_not_close_it(
        self, world: World
    ) -> None:
        """Disarm, then a new entry, committed together: the entry stays pending."""
        await world.writer([entry()])
        await world.writer(
            [cid("1401 01 002", at=T0 + timedelta(seconds=5)), entry(at=T0 + timedelta(seconds=6))]
        )
        [(_, state, _, deadline)] = await world.entries()
        assert (state, deadline) == ("pending", T0 + timedelta(seconds=86))

    async def test_a_copy_in_the_same_batch_neither_cancels_an_entry_nor_a_disarm(
        self, world: World
    ) -> None:
        """An entry and its resend (same msg_id) committed together open the timer; a disarm and
        its retransmission (same seq) committed together close it. (The copy's position, which
        is not stored, used to replace the original's: the open or the close was dropped, and a
        disarmed system raised Crash & Smash.)"""
        first = msgspec.structs.replace(entry(), dedupe_key="mqtt:S:e1")
        await world.writer(
            [first, msgspec.structs.replace(first, received_at=T0 + timedelta(seconds=1))]
        )
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]
        disarm = msgspec.structs.replace(
            cid("1401 01 002", at=T0 + timedelta(seconds=15)), dedupe_key="dc09:7777:0042"
        )
        await world.writer(
            [disarm, msgspec.structs.replace(disarm, received_at=T0 + timedelta(seconds=16))]
        )
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", "disarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_a_dc09_entry_code_opens_a_timer(self, world: World) -> None:
        """A configured Contact ID code (Q=1) opens the timer with crash_smash.entry_delay_s; its
        restore (Q=3) opens none."""
        await world.writer([cid("3760 01 005", at=T0)])
        assert await world.entries() == []
        await world.writer([cid("1760 02 005", at=T0)])
        [(partition, state, _, deadline)] = await world.entries()
        assert (partition, state, deadline) == (2, "pending", T0 + timedelta(seconds=45 + 60))
        assert await world.timer().fire_due(deadline) == 1
        assert await world.alarms() == [("130", 5, 2, "Crash & Smash")]

    async def test_server_generated_rules_only_mode_and_category(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Rules 1 and 2 only: forwarded in "only if the phone line fails" with a healthy line;
        recorded but not forwarded when the category is deselected."""
        accounts = [
            Account(account="7777", forwarding=msgspec.structs.replace(FORWARD, mode=ForwardingMode.PHONE_LINE_FAILURE, phone_line_connected=True)),
            Account(account="8888", forwarding=msgspec.structs.replace(FORWARD, categories=DEFAULT_FORWARDED_CATEGORIES - {Category.CRASH_SMASH})),
        ]  # fmt: skip
        await AccountStore(db_pool).upsert_many(accounts)
        world = World(db_pool, accounts)
        await world.writer([entry(), msgspec.structs.replace(entry(), account="8888")])
        assert await world.timer().fire_due(T0 + timedelta(seconds=80)) == 2
        rows = await db_pool.fetch(
            "SELECT account, forward, reason FROM decisions ORDER BY account"
        )
        assert [(r["account"], r["forward"], r["reason"]) for r in rows] == [
            ("7777", True, "forwarded"),
            ("8888", False, "category_not_selected"),
        ]


def sent(signal: InboundSignal, at: datetime) -> InboundSignal:
    """``signal`` carrying the module's own time ``at`` (DC-09 timestamp, MQTT ``sent_at``)."""
    return msgspec.structs.replace(signal, sent_at=at)


class TestModuleOrder:
    """Entries and disarms ordered by the module's own times where both carry one: a signal whose
    commit failed comes again after what the panel sent next (an MQTT redelivery, a retry)."""

    async def test_an_entry_committed_after_the_disarm_that_followed_it_opens_nothing(
        self, world: World
    ) -> None:
        """Entry sent at T0 (its commit failed), disarm sent at T0+15 s committed, then the entry
        again at T0+60 s: the system was disarmed in time, no timer, no Crash & Smash. (It used to
        open a timer that fired on a disarmed system.)"""
        before = (
            REGISTRY.get_sample_value(
                "alarmrelay_crash_smash_closed_total", {"reason": "disarmed_before"}
            )
            or 0.0
        )
        disarm_at = T0 + timedelta(seconds=15)
        await world.writer([sent(cid("1401 01 002", at=disarm_at), disarm_at)])
        await world.writer([sent(entry(at=T0 + timedelta(seconds=60)), T0)])
        assert await world.entries() == []
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []
        after = REGISTRY.get_sample_value(
            "alarmrelay_crash_smash_closed_total", {"reason": "disarmed_before"}
        )
        assert after == before + 1

    async def test_a_later_disarm_does_not_hide_the_one_that_ended_the_entry(
        self, world: World
    ) -> None:
        """Entry sent at T0 (its MQTT delivery waits for the engine that took it), disarm at
        T0+15 s; the owner arms and leaves, comes back at T0+30 min (entry, disarm, both
        committed); the first entry arrives at T0+45 min: the disarm at T0+15 s ended it, no
        Crash & Smash. (Only the latest disarm was remembered: the late entry opened a timer that
        fired on a disarmed system.)"""
        first = T0 + timedelta(seconds=15)
        await world.writer([sent(cid("1401 01 002", at=first), first)])
        back = T0 + timedelta(minutes=30)
        await world.writer([sent(entry(at=back), back)])
        await world.writer([sent(cid("1401 01 002", at=back + timedelta(seconds=10)), back)])
        await world.writer([sent(entry(at=T0 + timedelta(minutes=45)), T0)])
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", "disarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_disarms_a_day_older_than_the_latest_are_forgotten(self, world: World) -> None:
        """Each disarm is a row; one a day after another removes it (about a day is kept)."""
        for at in (T0, T0 + timedelta(hours=1), T0 + timedelta(days=1, hours=1)):
            await world.writer([sent(cid("1401 01 002", at=at), at)])
        kept = await world.pool.fetch("SELECT sent_at FROM entry_disarms ORDER BY sent_at")
        assert [r["sent_at"] for r in kept] == [
            T0 + timedelta(hours=1),
            T0 + timedelta(days=1, hours=1),
        ]

    async def test_a_disarm_without_a_partition_covers_every_partition(self, world: World) -> None:
        """SIA OP with no area (every partition) sent after a partition 2 entry: not opened."""
        disarm_at = T0 + timedelta(seconds=15)
        disarm = InboundSignal(
            account="7777",
            transport=Transport.TCP,
            kind=SignalKind.EVENT,
            received_at=disarm_at,
            sent_at=disarm_at,
            events=parse_sia_block("#7777|NOP0001"),
        )
        await world.writer([disarm])
        await world.writer([sent(entry(partition=2, at=T0 + timedelta(seconds=60)), T0)])
        assert await world.entries() == []

    async def test_an_old_disarm_committed_after_a_new_entry_does_not_close_it(
        self, world: World
    ) -> None:
        """A disarm sent at T0+15 s committed late, after an entry sent at T0+100 s: the entry
        stays pending and fires (the late disarm used to close it: a break-in raised nothing)."""
        entry_at = T0 + timedelta(seconds=100)
        await world.writer([sent(entry(at=entry_at), entry_at)])
        await world.writer(
            [sent(cid("1401 01 002", at=T0 + timedelta(seconds=110)), T0 + timedelta(seconds=15))]
        )
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]
        assert await world.timer().fire_due(entry_at + timedelta(seconds=80)) == 1
        assert await world.alarms() == [("130", 3, 1, "Crash & Smash")]

    async def test_the_same_orders_hold_within_one_batch(self, world: World) -> None:
        """Disarm (T0+15) then the late entry (T0) in one batch: nothing opens. A new entry
        (T0+100) then a late copy of an old disarm (T0+20) in one batch: the entry opens."""
        disarm_at = T0 + timedelta(seconds=15)
        await world.writer(
            [
                sent(cid("1401 01 002", at=disarm_at), disarm_at),
                sent(entry(at=T0 + timedelta(seconds=16)), T0),
            ]
        )
        assert await world.entries() == []
        entry_at = T0 + timedelta(seconds=100)
        await world.writer(
            [
                sent(entry(at=entry_at), entry_at),
                sent(cid("1401 01 002", at=entry_at), T0 + timedelta(seconds=20)),
            ]
        )
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]

    async def test_a_late_copy_of_an_old_disarm_does_not_hide_a_new_one_in_its_batch(
        self, world: World
    ) -> None:
        """A pending entry (sent T0); one batch holds a disarm sent after it (T0+10) and then a
        late copy of a disarm sent before it (T0-60): the entry is closed and nothing fires.
        The batch kept only the partition's last close in batch order, the old one, which closes
        nothing: the panel's real disarm was lost and a Crash & Smash alarm went out."""
        await world.writer([sent(entry(at=T0), T0)])
        await world.writer(
            [
                sent(cid("1401 01 002", at=T0 + timedelta(seconds=11)), T0 + timedelta(seconds=10)),
                sent(cid("1401 01 002", at=T0 + timedelta(seconds=12)), T0 - timedelta(seconds=60)),
            ]
        )
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "closed")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_a_disarm_long_after_the_entry_by_the_panel_clock_does_not_cancel_it(
        self, world: World
    ) -> None:
        """The panel's clock was reset (power loss) and stamps the entry 2000-01-01, after a
        disarm stamped with the real time: the disarm is not evidence that the entry ended in time,
        so the entry opens and fires (a missed Crash & Smash is worse than a late one)."""
        disarm_at = T0 + timedelta(seconds=15)
        await world.writer([sent(cid("1401 01 002", at=disarm_at), disarm_at)])
        await world.writer(
            [sent(entry(at=T0 + timedelta(seconds=60)), datetime(2000, 1, 1, tzinfo=UTC))]
        )
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]
        assert await world.timer().fire_due(T0 + timedelta(seconds=140)) == 1

    async def test_a_disarm_after_the_entry_timer_ran_out_does_not_cancel_it(
        self, world: World
    ) -> None:
        """Entry sent at T0 with 20 s + 30 s + 30 s; a disarm sent at T0+80 s (too late: in order,
        Crash & Smash would have fired at T0+80 s) committed first: the entry still opens."""
        disarm_at = T0 + timedelta(seconds=80)
        await world.writer([sent(cid("1401 01 002", at=disarm_at), disarm_at)])
        await world.writer([sent(entry(at=T0 + timedelta(seconds=90)), T0)])
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]

    async def test_an_entry_sent_at_the_end_of_time_opens_as_without_a_time(
        self, world: World
    ) -> None:
        """An MQTT module whose clock says 9999-12-31T23:59:59Z: its entry's timer window cannot
        be written, the batch still commits and the entry opens (by the commit order)."""
        end = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
        await world.writer([sent(cid("1401 01 002", at=T0), end)])
        await world.writer([sent(entry(at=T0 + timedelta(seconds=60)), end)])
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]

    async def test_without_module_times_the_commit_order_decides(self, world: World) -> None:
        """Neither signal carries the module's time: nothing says the entry is old, so it opens
        (the documented limit; docs/forwarding.md)."""
        await world.writer([cid("1401 01 002", at=T0 + timedelta(seconds=15))])
        await world.writer([entry(at=T0 + timedelta(seconds=60))])
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "pending")]


class TestMetrics:
    async def test_pending_opened_closed_fired_and_lag(self, world: World) -> None:
        """Two entries: the gauge shows 2 pending; a disarm counts a close, the other fired 2 s
        late a fired timer and 2 s of lag."""

        def sample(name: str, **labels: str) -> float:
            return REGISTRY.get_sample_value(name, labels) or 0.0

        names = (
            ("alarmrelay_crash_smash_opened_total", {}),
            ("alarmrelay_crash_smash_closed_total", {"reason": "disarm"}),
            ("alarmrelay_crash_smash_fired_total", {}),
            ("alarmrelay_timers_fired_total", {"timer": "crash_smash"}),
            ("alarmrelay_timer_lag_seconds_count", {"timer": "crash_smash"}),
            ("alarmrelay_timer_lag_seconds_sum", {"timer": "crash_smash"}),
        )
        before = [sample(n, **labels) for n, labels in names]
        await world.writer([entry(partition=1), entry(partition=2)])
        timer = world.timer()
        await timer.seconds_to_next(T0)
        assert sample("alarmrelay_crash_smash_pending") == 2
        await world.writer([cid("1401 02 002", at=T0 + timedelta(seconds=5))])
        assert await timer.fire_due(T0 + timedelta(seconds=82)) == 1
        await timer.seconds_to_next(T0 + timedelta(seconds=82))
        assert sample("alarmrelay_crash_smash_pending") == 0
        after = [sample(n, **labels) for n, labels in names]
        assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1, 1, 1, 2.0]


def _rows_held() -> float:
    """alarmrelay_timer_rows_held_total of the Crash & Smash timer."""
    return (
        REGISTRY.get_sample_value("alarmrelay_timer_rows_held_total", {"timer": "crash_smash"})
        or 0.0
    )


class TestHeldRows:
    """An account's pending entry held by another transaction (an operator's transaction left
    open in psql, a stuck admin call) holds back neither the other accounts' Crash & Smash nor
    the timer: it is raised once free, once."""

    HELD_SQL = "SELECT 1 FROM pending_entries WHERE account = $1 FOR UPDATE"

    @pytest.fixture
    async def two(self, db_pool: asyncpg.Pool) -> World:
        accounts = [Account(account=a, forwarding=FORWARD) for a in ("7777", "8888")]
        await AccountStore(db_pool).upsert_many(accounts)
        world = World(db_pool, accounts)
        await world.writer([entry(), msgspec.structs.replace(entry(), account="8888")])
        return world

    @staticmethod
    async def raised(world: World) -> list[str]:
        """The accounts of the Crash & Smash alarms committed, sorted."""
        rows = await world.pool.fetch(
            "SELECT account FROM signals WHERE transport = 'server' ORDER BY account"
        )
        return [r["account"] for r in rows]

    async def test_the_others_fire_in_the_round_and_the_held_one_once_free(
        self, two: World
    ) -> None:
        timer = two.timer()
        due = T0 + timedelta(seconds=80)
        async with holding(two.pool, self.HELD_SQL, "7777"):
            assert await timer.fire_due(due) == 1
            assert await self.raised(two) == ["8888"]
            # the held entry's passed deadline is not woken for (the loop would spin): it is
            # looked at again after max_sleep_s
            assert await timer.seconds_to_next(due) == 1.0
            assert await timer.fire_due(due + timedelta(seconds=1)) == 0
        assert await timer.fire_due(due + timedelta(seconds=2)) == 1
        assert await timer.fire_due(due + timedelta(seconds=3)) == 0
        assert await self.raised(two) == ["7777", "8888"]

    async def test_an_alarm_whose_delivery_lane_is_held_does_not_hold_back_the_others(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A lane's lock held elsewhere (a dispatcher recording a failure while it waits for a
        row): the round's commit fails past its lock timeout; the round is tried again without
        the alarm going to that lane, which is raised once the lane is free."""
        other = ForwardingSettings(
            mode=ForwardingMode.ALWAYS, station_account="3334", primary_receiver="rx"
        )
        accounts = [
            Account(account="7777", forwarding=FORWARD),
            Account(account="8888", forwarding=other),
        ]
        await AccountStore(db_pool).upsert_many(accounts)
        world = World(db_pool, accounts)
        await world.writer([entry(), msgspec.structs.replace(entry(), account="8888")])
        timer = world.timer()
        due = T0 + timedelta(seconds=80)
        lane = lane_for("3333", "rx")
        with capture_logs() as logs:
            async with holding(db_pool, HOLD_LANE_SQL, lane):
                assert await timer.fire_due(due) == 1
                assert await self.raised(world) == ["8888"]
                assert await timer.seconds_to_next(due) == 1.0
                assert await timer.fire_due(due + timedelta(seconds=1)) == 0
            assert await timer.fire_due(due + timedelta(seconds=2)) == 1
        assert await self.raised(world) == ["7777", "8888"]
        held = [e for e in logs if e["event"] == "crash_smash_row_held"]
        assert [(e["account"], e["partition"], e["lock"], e["lane"]) for e in held] == [
            ("7777", 1, "lane", lane)
        ]
        lanes = await db_pool.fetch("SELECT lane FROM deliveries ORDER BY lane")
        assert [r["lane"] for r in lanes] == [lane, lane_for("3334", "rx")]

    async def test_a_hold_is_logged_and_counted_once(self, two: World) -> None:
        """Reported when a second round finds it still held (an entry locked for a moment, by
        another engine's timer firing it, is not), released when found free."""
        timer = two.timer()
        due = T0 + timedelta(seconds=80)
        before = _rows_held()
        with capture_logs() as logs:
            async with holding(two.pool, self.HELD_SQL, "7777"):
                for n in range(3):
                    await timer.fire_due(due + timedelta(seconds=n))
            await timer.fire_due(due + timedelta(seconds=3))
        events = [
            (e["event"], e.get("account"), e.get("partition"))
            for e in logs
            if "_row_" in e["event"]
        ]
        assert events == [
            ("crash_smash_row_held", "7777", 1),
            ("crash_smash_row_released", "7777", 1),
        ]
        after = _rows_held()
        assert after == before + 1

    async def test_a_row_held_for_a_moment_is_not_reported(self, two: World) -> None:
        """A round that fired something is followed at once by another (the timer's loop): an
        entry locked for a moment (another engine's timer firing it, a commit of its account)
        is still locked then. Found held by two rounds a few milliseconds apart, it was logged
        and counted as held; a hold is reported only once it lasted ``max_sleep_s``."""
        timer = two.timer()
        due = T0 + timedelta(seconds=80)
        before = _rows_held()
        with capture_logs() as logs:
            async with holding(two.pool, self.HELD_SQL, "7777"):
                assert await timer.fire_due(due) == 1
                assert await timer.fire_due(due + timedelta(milliseconds=10)) == 0
            assert await timer.fire_due(due + timedelta(seconds=1)) == 1
        assert [e["event"] for e in logs if "_row_" in e["event"]] == []
        after = _rows_held()
        assert after == before
        assert await self.raised(two) == ["7777", "8888"]


class TestSingleFire:
    async def test_a_restarted_engine_fires_a_passed_deadline_once(
        self, world: World, database_url: str
    ) -> None:
        """The deadline passes while no engine runs: the next timer fires it once, a later one not."""
        await world.writer([entry()])
        for expected in (1, 0):
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            try:
                assert await world.timer(pool).fire_due(T0 + timedelta(hours=2)) == expected
            finally:
                await pool.close()
        assert len(await world.alarms()) == 1

    async def test_two_timers_fire_each_entry_once(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Two timers on their own pools (as two engines) racing over 40 expired entries: 40 alarms."""
        accounts = [Account(account=f"{0xE00 + i:X}", forwarding=FORWARD) for i in range(40)]
        await AccountStore(db_pool).upsert_many(accounts)
        world = World(db_pool, accounts)
        await world.writer([msgspec.structs.replace(entry(), account=a.account) for a in accounts])
        pools = [await asyncpg.create_pool(database_url, min_size=2, max_size=2) for _ in range(2)]
        try:
            timers = [
                CrashSmashTimer(p, world.forwarding, duplicate_window_s=600, batch=3) for p in pools
            ]
            for _ in range(10):
                await asyncio.gather(*(t.fire_due(T0 + timedelta(minutes=5)) for t in timers))
        finally:
            for pool in pools:
                await pool.close()
        assert sum(t.fired for t in timers) == 40
        assert all(t.fired > 0 for t in timers)
        assert len(await world.alarms()) == 40


# -- end to end: MQTT module → engine → station simulator ------------------------------------


@pytest.fixture
async def setup(
    db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
) -> AsyncIterator[tuple[Engine, StationSimulator, str, FakeClock]]:
    async with station_and_engine(db_pool, database_url) as running:
        yield running


@contextlib.asynccontextmanager
async def station_and_engine(
    db_pool: asyncpg.Pool, database_url: str, *, grace_s: int = 0
) -> AsyncIterator[tuple[Engine, StationSimulator, str, FakeClock]]:
    """A station simulator and an engine with Crash & Smash (dialer delay 0, ``grace_s``)."""
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
            Account(account="7777", module_serial="CS-1", forwarding=FORWARD),
            Account(
                account="7778",
                forwarding=msgspec.structs.replace(
                    FORWARD, station_account="3334", primary_receiver="rx-sia"
                ),
            ),
        ]
    )
    prefix = f"cs-{secrets.token_hex(3)}/v1"
    settings = msgspec.structs.replace(
        settings_for(database_url, mqtt=True, prefix=prefix, client_id=f"cs-{secrets.token_hex(3)}"),
        crash_smash=CrashSmashSettings(dialer_delay_s=0, grace_s=grace_s, entry_codes=(ENTRY_CODE,), entry_delay_s=30),
        supervision=SupervisionSettings(enabled=False),
    )  # fmt: skip
    clock = FakeClock(ticking=True)
    try:
        async with running_engine(settings, clock=clock) as engine:
            await asyncio.wait_for(engine._mqtt.subscribed.wait(), 10)
            yield engine, sim, prefix, clock
    finally:
        await sim.stop()


async def publish(prefix: str, messages: list[dict[str, Any]]) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", 1883, identifier=f"mod-{secrets.token_hex(3)}"
    ) as client:
        await client.subscribe(f"{prefix}/modules/CS-1/ack", qos=1)
        for body in messages:
            await client.publish(f"{prefix}/modules/CS-1/events", json.dumps(body), qos=1)
            async with asyncio.timeout(10):
                async for _ in client.messages:
                    break  # wait for the commit ack of this message before the next


async def expire(engine: Engine, clock: FakeClock, seconds: float = 60) -> int:
    """Move the timer clock past the entry deadline; return what the timer fires at that instant
    (0 when the entry was closed). Anything due is fired by the call or by the timer's own loop."""
    assert engine.crash_smash_timer is not None
    clock.advance(seconds)
    fired = await engine.crash_smash_timer.fire_due(clock())
    engine.crash_smash_timer.wake()
    return fired


ENTRY = {"v": 1, "msg_id": "entry", "entry_delay": {"partition": 1, "zone": 3, "entry_delay_s": 20}}


class TestAtTheStation:
    async def test_no_disarm_raises_crash_and_smash(
        self, setup: tuple[Engine, StationSimulator, str, FakeClock], db_pool: asyncpg.Pool
    ) -> None:
        """Entry delay and then silence: a burglary alarm (CID 130) on the entry zone reaches the station."""
        engine, sim, prefix, clock = setup
        await publish(prefix, [ENTRY])
        await expire(engine, clock)
        [got] = await sim.wait_for(1, timeout_s=15)
        assert got.account == "3333"
        event = got.events[0]
        assert (event.code, event.qualifier, event.zone, event.partition) == ("130", "1", 3, 1)
        row = await db_pool.fetchrow("SELECT category, reason FROM decisions")
        assert row is not None
        assert (row["category"], row["reason"]) == ("crash_smash", "forwarded")
        assert await db_pool.fetchval("SELECT state FROM pending_entries") == "fired"

    async def test_sia_receiver_gets_ba_with_the_text(
        self, setup: tuple[Engine, StationSimulator, str, FakeClock]
    ) -> None:
        """Over DC-09 with a configured entry code, to a SIA-only receiver: BA on the entry zone
        with the text "Crash & Smash"."""
        engine, sim, _, clock = setup
        assert engine.dc09 is not None
        module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="7778")
        await module.connect()
        assert await module.send("ADM-CID", "#7778|1760 01 004") is not None
        await module.close()
        await expire(engine, clock)
        [got] = await sim.wait_for(1, timeout_s=15)
        event = got.events[0]
        assert (got.account, event.family, event.code, event.zone, event.text) == (
            "3334",
            "sia",
            "BA",
            4,
            "Crash & Smash",
        )

    async def test_disarm_in_time_is_only_recorded(
        self, setup: tuple[Engine, StationSimulator, str, FakeClock], db_pool: asyncpg.Pool
    ) -> None:
        """Entry delay then disarm: no Crash & Smash; the entry is recorded as closed by the disarm."""
        engine, sim, prefix, clock = setup
        disarm = {"v": 1, "msg_id": "open", "events": [{"family": "cid", "code": "401", "qualifier": "1", "user": 2, "partition": 1}]}  # fmt: skip
        await publish(prefix, [ENTRY, disarm])
        await sim.wait_for(1, timeout_s=10)  # the opening itself is forwarded (Arming)
        assert await expire(engine, clock) == 0
        assert engine.crash_smash_timer is not None and engine.crash_smash_timer.fired == 0
        assert [r.events[0].code for r in sim.received] == ["401"]
        row = await db_pool.fetchrow("SELECT state, closed_reason FROM pending_entries")
        assert row is not None
        assert (row["state"], row["closed_reason"]) == ("closed", "disarm")
        assert await db_pool.fetchval("SELECT count(*) FROM signals WHERE transport = 'mqtt'") == 2

    async def test_alarm_before_expiry_is_the_normal_alarm_only(
        self, setup: tuple[Engine, StationSimulator, str, FakeClock], db_pool: asyncpg.Pool
    ) -> None:
        """Entry delay then a burglary alarm: only that alarm reaches the station."""
        engine, sim, prefix, clock = setup
        alarm = {"v": 1, "msg_id": "alarm", "events": [{"family": "cid", "code": "134", "qualifier": "1", "zone": 3, "partition": 1}]}  # fmt: skip
        await publish(prefix, [ENTRY, alarm])
        await sim.wait_for(1, timeout_s=10)
        assert await expire(engine, clock) == 0
        assert engine.crash_smash_timer is not None and engine.crash_smash_timer.fired == 0
        assert [r.events[0].code for r in sim.received] == ["134"]
        assert await db_pool.fetchval("SELECT closed_reason FROM pending_entries") == "alarm"


class TestSettling:
    """An entry whose deadline passed while its disarm could not be committed (no engine ran, or
    the database was out of reach) waits crash_smash.grace_s for the module to send it again."""

    async def test_a_started_timer_gives_disarms_the_grace_to_arrive(self, world: World) -> None:
        """Two entries expired while no engine ran: nothing fires for 30 s after the start; the
        partition disarmed meanwhile raises nothing, the other its Crash & Smash once."""
        await world.writer([entry(partition=1), entry(partition=2)])
        start = T0 + timedelta(minutes=10)
        timer = CrashSmashTimer(world.pool, world.forwarding, duplicate_window_s=600, settle_s=30)
        assert await timer.fire_due(start) == 0
        assert await timer.seconds_to_next(start) == 30.0
        await world.writer([cid("1401 02 002", at=start + timedelta(seconds=5))])
        assert await timer.fire_due(start + timedelta(seconds=29)) == 0
        assert await timer.fire_due(start + timedelta(seconds=30)) == 1
        assert [(p, state) for p, state, _, _ in await world.entries()] == [
            (1, "fired"),
            (2, "closed"),
        ]
        assert await world.alarms() == [("130", 3, 1, "Crash & Smash")]

    async def test_after_the_database_was_out_of_reach_it_settles_again(
        self, world: World, database_url: str
    ) -> None:
        """The timer's connection is cut: an entry that expired meanwhile waits 30 s after the
        database answers again."""
        async with DatabaseOutage(database_url) as outage:
            timer = CrashSmashTimer(
                outage.pool, world.forwarding, duplicate_window_s=600, settle_s=30
            )
            assert await timer.fire_due(T0) == 0  # settling from the start
            assert await timer.fire_due(T0 + timedelta(seconds=30)) == 0  # settled, nothing due
            await world.writer([entry(at=T0 + timedelta(seconds=30))])  # due at T0 + 110 s
            await outage.cut(world.pool)
            with pytest.raises(Exception) as lost:
                await timer.fire_due(T0 + timedelta(seconds=60))
            assert is_database_unreachable(lost.value), lost.value
            outage.restore()
            back = T0 + timedelta(seconds=200)
            assert await timer.fire_due(back) == 0
            assert await timer.fire_due(back + timedelta(seconds=30)) == 1

    async def test_an_engine_started_after_the_deadline_takes_the_disarm_first(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """The engine went down during an entry delay; the panel's disarm waits for it. When it
        runs again the disarm arrives within crash_smash.grace_s: no Crash & Smash reaches the
        station (it fired at once, before the disarm could be committed)."""
        async with station_and_engine(db_pool, database_url, grace_s=30) as running:
            engine, sim, prefix, clock = running
            timer = engine.crash_smash_timer
            assert timer is not None
            before = clock() - timedelta(minutes=5)  # committed before the engine stopped
            await World(db_pool, [Account(account="7777", forwarding=FORWARD)]).writer(
                [entry(at=before)]
            )
            assert await timer.fire_due(clock()) == 0
            disarm = {"v": 1, "msg_id": "open", "events": [{"family": "cid", "code": "401", "qualifier": "1", "user": 2, "partition": 1}]}  # fmt: skip
            await publish(prefix, [disarm])
            await sim.wait_for(1, timeout_s=10)
            assert await expire(engine, clock) == 0
            assert timer.fired == 0
            assert [r.events[0].code for r in sim.received] == ["401"]
            assert await db_pool.fetchval("SELECT closed_reason FROM pending_entries") == "disarm"


class TestOverdueEntry:
    """An entry past its deadline but not fired yet (the timer settling after a start, or not yet
    run) keeps its deadline when the partition's next entry arrives; that one waits behind it."""

    def held(self) -> float:
        return REGISTRY.get_sample_value("alarmrelay_crash_smash_held_total") or 0.0

    async def test_a_second_entry_in_the_settle_window_does_not_delay_the_first(
        self, world: World
    ) -> None:
        """Entry at T0 (due T0+80 s) expired while no engine ran; 5 s after the start the panel
        sends a new entry (zone 4): Crash & Smash for the first entry at the end of the settle
        window, the second its own at its deadline. (The new entry's deadline replaced the
        first one's: the first Crash & Smash came a whole entry period late.)"""
        before = self.held()
        await world.writer([entry()])
        start = T0 + timedelta(minutes=10)
        timer = CrashSmashTimer(world.pool, world.forwarding, duplicate_window_s=600, settle_s=30)
        assert await timer.fire_due(start) == 0
        again = start + timedelta(seconds=5)
        await world.writer([entry(zone=4, at=again)])
        assert await timer.fire_due(start + timedelta(seconds=30)) == 1
        assert await world.alarms() == [("130", 3, 1, "Crash & Smash")]
        assert self.held() == before + 1
        assert await world.entries() == [(1, "pending", None, again + timedelta(seconds=80))]
        assert await timer.fire_due(again + timedelta(seconds=79)) == 0
        assert await timer.fire_due(again + timedelta(seconds=80)) == 1
        assert await world.alarms() == [
            ("130", 3, 1, "Crash & Smash"),
            ("130", 4, 1, "Crash & Smash"),
        ]
        assert [e[1] for e in await world.entries()] == ["fired"]

    async def test_an_entry_after_the_deadline_before_the_timer_ran(self, world: World) -> None:
        """Entry at T0 (due T0+80 s); the next entry is received at T0+80 s, before the timer's
        round: the first still fires at T0+80 s on its own zone."""
        await world.writer([entry()])
        await world.writer([entry(zone=4, at=T0 + timedelta(seconds=80))])
        assert await world.timer().fire_due(T0 + timedelta(seconds=80)) == 1
        assert await world.alarms() == [("130", 3, 1, "Crash & Smash")]

    async def test_an_entry_before_the_deadline_still_replaces_it(self, world: World) -> None:
        """An entry received before the pending one's deadline replaces it, as before (nothing
        was due yet)."""
        before = self.held()
        await world.writer([entry()])
        await world.writer([entry(zone=4, at=T0 + timedelta(seconds=79))])
        assert await world.entries() == [(1, "pending", None, T0 + timedelta(seconds=159))]
        assert self.held() == before

    async def test_a_disarm_sent_between_the_entries_closes_only_the_first(
        self, world: World
    ) -> None:
        """Entries sent at T0 and T0+10 min (the first overdue); a disarm the panel sent between
        them arrives after both: the first is closed, the second stays pending on its own
        deadline and zone."""
        await world.writer([sent(entry(), T0)])
        again = T0 + timedelta(minutes=10)
        await world.writer([sent(entry(zone=4, at=again), again)])
        disarm_at = T0 + timedelta(seconds=15)
        await world.writer([sent(cid("1401 01 002", at=again + timedelta(seconds=2)), disarm_at)])
        assert await world.entries() == [(1, "pending", None, again + timedelta(seconds=80))]
        assert await world.timer().fire_due(again + timedelta(seconds=80)) == 1
        assert await world.alarms() == [("130", 4, 1, "Crash & Smash")]

    async def test_a_disarm_after_both_entries_closes_both(self, world: World) -> None:
        """A disarm sent after the second entry (or one without the module's time) ends both:
        nothing fires."""
        await world.writer([sent(entry(), T0)])
        again = T0 + timedelta(minutes=10)
        await world.writer([sent(entry(zone=4, at=again), again)])
        await world.writer([cid("1401 01 002", at=again + timedelta(seconds=2))])
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", "disarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_a_disarm_after_both_entries_ends_both_with_an_older_one_in_its_batch(
        self, world: World
    ) -> None:
        """The overdue entry (T0) and one waiting behind it (T0+10 min); one batch holds a disarm
        sent after both and then a late copy of a disarm sent between them: both end, nothing
        fires (the batch kept the older one, which ended only the first)."""
        await world.writer([sent(entry(), T0)])
        again = T0 + timedelta(minutes=10)
        await world.writer([sent(entry(zone=4, at=again), again)])
        late = again + timedelta(seconds=2)
        await world.writer(
            [
                sent(cid("1401 01 002", at=late), again + timedelta(seconds=1)),
                sent(cid("1401 01 002", at=late), T0 + timedelta(seconds=15)),
            ]
        )
        assert [(p, s) for p, s, _, _ in await world.entries()] == [(1, "closed")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_an_older_copy_of_an_entry_moves_nothing(self, world: World) -> None:
        """The overdue entry sent at T0+10 s; a copy of an entry the module sent before it arrives
        late: neither the deadline nor the waiting entry changes."""
        await world.writer([sent(entry(), T0 + timedelta(seconds=10))])
        await world.writer([sent(entry(zone=4, at=T0 + timedelta(minutes=10)), T0)])
        assert await world.entries() == [(1, "pending", None, T0 + timedelta(seconds=80))]
        assert await world.timer().fire_due(T0 + timedelta(minutes=10)) == 1
        assert await world.entries() == [(1, "fired", None, T0 + timedelta(seconds=80))]

    async def test_the_account_state_shows_the_waiting_entry(self, world: World) -> None:
        """The live state (API, ``alarmrelay state``) shows the entry waiting behind the overdue
        one, with its zone and deadline, until it takes the row's place."""
        await world.writer([entry()])
        again = T0 + timedelta(minutes=10)
        await world.writer([entry(zone=4, at=again)])
        status = await account_status(world.pool, "7777")
        assert status is not None
        [shown] = status.entries
        assert (shown.zone, shown.deadline, shown.state) == (
            3,
            T0 + timedelta(seconds=80),
            "pending",
        )
        assert [(w.zone, w.deadline) for w in shown.waiting] == [(4, again + timedelta(seconds=80))]
        assert await world.timer().fire_due(again) == 1
        status = await account_status(world.pool, "7777")
        assert status is not None
        assert [(e.zone, e.deadline, e.waiting) for e in status.entries] == [
            (4, again + timedelta(seconds=80), ())
        ]
