"""Crash & Smash: a close of every partition and a close of one partition in the same batch.

Both match that partition's pending entry; the one the module sent last counts, as between two
closes of one partition (engine/crash_smash.py, ``CrashSmashStage.plan``): the later module time,
or on a tie the later event (in batch order, then in the signal); a close without a module time
counts over any with one, the first of those in that order. PostgreSQL applied one of the two at
random (an UPDATE … FROM with two source rows for one target row), and the account-wide close,
written first, won every time in practice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import msgspec
import pytest

from engine.account_model import Account
from engine.ingest_types import InboundSignal, SignalKind, Transport
from engine.store.accounts import AccountStore
from protocols.contact_id import parse_cid_block
from protocols.sia_dc03 import parse_sia_block
from tests.engine.test_crash_smash import ENTRY_CODE, FORWARD, T0, World, cid, entry, sent

DISARM_ALL = "NOP0001"  # SIA opening without an area: every partition ("disarm")
ALARM_P1 = "1130 01 003"  # Contact ID burglary on partition 1 ("alarm")


@pytest.fixture
async def world(db_pool: asyncpg.Pool) -> World:
    accounts = [Account(account="7777", forwarding=FORWARD)]
    await AccountStore(db_pool).upsert_many(accounts)
    return World(db_pool, accounts, entry_codes=frozenset({ENTRY_CODE}), entry_delay_s=45)


def disarm_all(*, at: datetime, sent_at: datetime | None) -> InboundSignal:
    return InboundSignal(
        account="7777",
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=at,
        sent_at=sent_at,
        events=parse_sia_block(f"#7777|{DISARM_ALL}"),
    )


def alarm_p1(*, at: datetime, sent_at: datetime | None) -> InboundSignal:
    return msgspec.structs.replace(cid(ALARM_P1, at=at), sent_at=sent_at)


def both_in_one_signal(order: str, *, at: datetime, sent_at: datetime) -> InboundSignal:
    """One signal carrying the account-wide disarm and the partition 1 alarm, in ``order``."""
    disarm = parse_sia_block(f"#7777|{DISARM_ALL}")
    alarm = parse_cid_block(f"#7777|{ALARM_P1}")
    events = (*disarm, *alarm) if order == "disarm_all, alarm_p1" else (*alarm, *disarm)
    return InboundSignal(
        account="7777",
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=at,
        sent_at=sent_at,
        events=events,
    )


S10, S20 = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
AT = T0 + timedelta(seconds=30)


class TestTheCloseSentLastCounts:
    @pytest.mark.parametrize(
        ("batch", "reason"),
        [
            pytest.param(
                [disarm_all(at=AT, sent_at=S10), alarm_p1(at=AT, sent_at=S20)],
                "alarm",
                id="partition-close-sent-last",
            ),
            pytest.param(
                [alarm_p1(at=AT, sent_at=S10), disarm_all(at=AT, sent_at=S20)],
                "disarm",
                id="account-wide-close-sent-last",
            ),
            pytest.param(
                [alarm_p1(at=AT, sent_at=S20), disarm_all(at=AT, sent_at=S10)],
                "alarm",
                id="partition-close-sent-last-committed-first",
            ),
            pytest.param(
                [alarm_p1(at=AT, sent_at=S20), disarm_all(at=AT, sent_at=S20)],
                "disarm",
                id="same-module-time-account-wide-later-in-batch",
            ),
            pytest.param(
                [disarm_all(at=AT, sent_at=S20), alarm_p1(at=AT, sent_at=S20)],
                "alarm",
                id="same-module-time-partition-later-in-batch",
            ),
            pytest.param(
                [both_in_one_signal("disarm_all, alarm_p1", at=AT, sent_at=S10)],
                "alarm",
                id="one-signal-partition-event-last",
            ),
            pytest.param(
                [both_in_one_signal("alarm_p1, disarm_all", at=AT, sent_at=S10)],
                "disarm",
                id="one-signal-account-wide-event-last",
            ),
            pytest.param(
                [disarm_all(at=AT, sent_at=S20), alarm_p1(at=AT, sent_at=None)],
                "alarm",
                id="partition-close-without-module-time",
            ),
            pytest.param(
                [alarm_p1(at=AT, sent_at=S20), disarm_all(at=AT, sent_at=None)],
                "disarm",
                id="account-wide-close-without-module-time",
            ),
        ],
    )
    async def test_of_the_two_the_close_sent_last_is_written(
        self, world: World, batch: list[InboundSignal], reason: str
    ) -> None:
        """A pending entry (sent at T0) and a batch with both closes: the entry is closed with
        the reason of the one the module sent last, whatever PostgreSQL's join order."""
        await world.writer([sent(entry(), T0)])
        await world.writer(batch)
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", reason)]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0

    async def test_a_partition_disarm_after_both_entries_ends_both(self, world: World) -> None:
        """The overdue entry (sent T0) and one waiting behind it (T0+10 min); one batch holds a
        disarm of every partition sent between the two and a partition 1 disarm sent after both:
        the later one counts, both entries end, nothing fires. (The account-wide one was applied:
        it ended only the first, and the second raised Crash & Smash on a disarmed system.)"""
        await world.writer([sent(entry(), T0)])
        again = T0 + timedelta(minutes=10)
        await world.writer([sent(entry(zone=4, at=again), again)])
        late = again + timedelta(seconds=2)
        await world.writer(
            [
                disarm_all(at=late, sent_at=T0 + timedelta(seconds=15)),
                sent(cid("1401 01 002", at=late), again + timedelta(seconds=1)),
            ]
        )
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", "disarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_an_account_wide_disarm_between_the_entries_ends_only_the_first(
        self, world: World
    ) -> None:
        """The same entries; the batch's disarm of every partition is sent last, between the two,
        after a partition 1 alarm sent before the first entry: the waiting entry takes the row's
        place and fires on its own deadline and zone."""
        await world.writer([sent(entry(), T0)])
        again = T0 + timedelta(minutes=10)
        await world.writer([sent(entry(zone=4, at=again), again)])
        late = again + timedelta(seconds=2)
        await world.writer(
            [
                disarm_all(at=late, sent_at=T0 + timedelta(seconds=15)),
                alarm_p1(at=late, sent_at=T0 - timedelta(seconds=5)),
            ]
        )
        assert await world.entries() == [(1, "pending", None, again + timedelta(seconds=80))]
        assert await world.timer().fire_due(again + timedelta(seconds=80)) == 1
        assert await world.alarms() == [("130", 4, 1, "Crash & Smash")]
