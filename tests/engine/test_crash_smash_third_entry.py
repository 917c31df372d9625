"""Crash & Smash: a third entry of a partition while its first is overdue and a second waits.

The first entry is past its deadline, not fired yet (the timer settling after a start, or not
run); the second waits behind it (``pending_entries.next_*``, migration 0540). What a third entry
does depends on the second, by the same rule as between the first two: received before the
second's deadline, it replaces the second (nothing was due yet); received after it, the second
keeps its deadline and the third waits behind it, so each overdue entry raises its own Crash &
Smash, in order.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
import pytest
from prometheus_client import REGISTRY

from engine.account_model import Account
from engine.store.account_status import account_status
from engine.store.accounts import AccountStore
from tests.engine.test_crash_smash import ENTRY_CODE, FORWARD, T0, World, cid, entry, sent

# every entry: 20 s entry delay + 30 s dialer delay + 30 s grace
PERIOD = timedelta(seconds=80)


@pytest.fixture
async def world(db_pool: asyncpg.Pool) -> World:
    accounts = [Account(account="7777", forwarding=FORWARD)]
    await AccountStore(db_pool).upsert_many(accounts)
    return World(db_pool, accounts, entry_codes=frozenset({ENTRY_CODE}), entry_delay_s=45)


class TestThirdEntry:
    async def test_one_received_before_the_second_entrys_deadline_replaces_it(
        self, world: World
    ) -> None:
        """First entry (zone 3) overdue, second (zone 4) waiting, third (zone 5) received 30 s
        after the second, before its deadline: the first fires, then the third on its own
        deadline; the second raises nothing (replaced in time, as a pending entry would be)."""
        await world.writer([entry()])
        second = T0 + timedelta(minutes=10)
        await world.writer([entry(zone=4, at=second)])
        third = second + timedelta(seconds=30)
        await world.writer([entry(zone=5, at=third)])
        timer = world.timer()
        assert await timer.fire_due(third) == 1
        assert await world.entries() == [(1, "pending", None, third + PERIOD)]
        assert await timer.fire_due(third + PERIOD - timedelta(seconds=1)) == 0
        assert await timer.fire_due(third + PERIOD) == 1
        assert await world.alarms() == [
            ("130", 3, 1, "Crash & Smash"),
            ("130", 5, 1, "Crash & Smash"),
        ]

    async def test_one_received_after_the_second_entrys_deadline_waits_behind_it(
        self, world: World
    ) -> None:
        """First entry (zone 3) overdue, second (zone 4) waiting, third (zone 5) received after
        the second's deadline, the timer still not run: each raises its Crash & Smash, the first
        two at once, the third on its own deadline. (The third replaced the second, whose
        Crash & Smash was never raised.)"""
        await world.writer([entry()])
        second = T0 + timedelta(minutes=10)
        await world.writer([entry(zone=4, at=second)])
        third = second + PERIOD + timedelta(seconds=5)
        await world.writer([entry(zone=5, at=third)])
        timer = world.timer()
        assert await timer.fire_due(third) == 1
        assert await timer.fire_due(third) == 1
        assert await world.entries() == [(1, "pending", None, third + PERIOD)]
        assert await timer.fire_due(third + PERIOD) == 1
        assert await world.alarms() == [
            ("130", 3, 1, "Crash & Smash"),
            ("130", 4, 1, "Crash & Smash"),
            ("130", 5, 1, "Crash & Smash"),
        ]
        assert [e[1] for e in await world.entries()] == ["fired"]


async def a_line_of_three(world: World) -> tuple[datetime, datetime]:
    """Entries sent (and received) at T0 (zone 3), T0+10 min (zone 4) and T0+20 min (zone 5), each
    after the one before it was due, no timer run: one entry and two waiting. Returns the second
    and third entries' times."""
    await world.writer([sent(entry(), T0)])
    second = T0 + timedelta(minutes=10)
    await world.writer([sent(entry(zone=4, at=second), second)])
    third = T0 + timedelta(minutes=20)
    await world.writer([sent(entry(zone=5, at=third), third)])
    return second, third


class TestALineOfEntries:
    async def test_the_live_state_shows_the_line_in_order(self, world: World) -> None:
        """The account's state shows the overdue entry and both waiting behind it, in order."""
        second, third = await a_line_of_three(world)
        status = await account_status(world.pool, "7777")
        assert status is not None
        [shown] = status.entries
        assert (shown.zone, shown.deadline) == (3, T0 + PERIOD)
        assert [(w.zone, w.deadline) for w in shown.waiting] == [
            (4, second + PERIOD),
            (5, third + PERIOD),
        ]

    async def test_a_fourth_entry_in_time_replaces_only_the_last(self, world: World) -> None:
        """A fourth entry (zone 6) received before the third's deadline replaces the third; the
        first two still raise theirs."""
        _, third = await a_line_of_three(world)
        fourth = third + timedelta(seconds=30)
        await world.writer([sent(entry(zone=6, at=fourth), fourth)])
        timer = world.timer()
        while await timer.fire_due(fourth + PERIOD):
            pass
        assert [a[1] for a in await world.alarms()] == [3, 4, 6]

    async def test_a_disarm_sent_inside_the_line_ends_the_entries_before_it(
        self, world: World
    ) -> None:
        """A disarm sent between the second and third entries, received after all three: the
        first two end, the third takes the row's place on its own deadline and zone. One close
        is counted."""
        before = REGISTRY.get_sample_value(
            "alarmrelay_crash_smash_closed_total", {"reason": "disarm"}
        )
        second, third = await a_line_of_three(world)
        disarm_sent = second + timedelta(seconds=15)
        await world.writer([sent(cid("1401 01 002", at=third + timedelta(seconds=1)), disarm_sent)])
        assert await world.entries() == [(1, "pending", None, third + PERIOD)]
        status = await account_status(world.pool, "7777")
        assert status is not None and status.entries[0].waiting == ()
        assert await world.timer().fire_due(third + PERIOD) == 1
        assert await world.alarms() == [("130", 5, 1, "Crash & Smash")]
        after = REGISTRY.get_sample_value(
            "alarmrelay_crash_smash_closed_total", {"reason": "disarm"}
        )
        assert after == (before or 0.0) + 1

    async def test_a_disarm_sent_after_the_first_ends_only_the_first(self, world: World) -> None:
        """A disarm sent between the first and second entries: the second takes the row's place,
        the third still waits behind it; both raise their Crash & Smash."""
        second, third = await a_line_of_three(world)
        disarm_sent = T0 + timedelta(seconds=15)
        await world.writer([sent(cid("1401 01 002", at=third + timedelta(seconds=1)), disarm_sent)])
        status = await account_status(world.pool, "7777")
        assert status is not None
        [shown] = status.entries
        assert (shown.zone, shown.deadline, [w.zone for w in shown.waiting]) == (
            4,
            second + PERIOD,
            [5],
        )
        timer = world.timer()
        assert await timer.fire_due(third + PERIOD) == 1
        assert await timer.fire_due(third + PERIOD) == 1
        assert [a[1] for a in await world.alarms()] == [4, 5]

    @pytest.mark.parametrize("with_module_time", [True, False])
    async def test_a_disarm_after_the_whole_line_ends_it(
        self, world: World, with_module_time: bool
    ) -> None:
        """A disarm sent after the third entry, or one without a module time: all three end,
        nothing fires."""
        _, third = await a_line_of_three(world)
        disarm = cid("1401 01 002", at=third + timedelta(seconds=2))
        if with_module_time:
            disarm = sent(disarm, third + timedelta(seconds=1))
        await world.writer([disarm])
        assert [(p, s, r) for p, s, r, _ in await world.entries()] == [(1, "closed", "disarm")]
        assert await world.timer().fire_due(T0 + timedelta(hours=1)) == 0
        assert await world.alarms() == []

    async def test_a_closed_line_leaves_nothing_for_the_next_entry(self, world: World) -> None:
        """After the line was closed, the partition's next entry opens alone: only its own
        Crash & Smash is raised."""
        _, third = await a_line_of_three(world)
        await world.writer([cid("1401 01 002", at=third + timedelta(seconds=2))])
        again = T0 + timedelta(hours=1)
        await world.writer([sent(entry(zone=7, at=again), again)])
        timer = world.timer()
        assert await timer.fire_due(again + PERIOD) == 1
        assert await timer.fire_due(again + PERIOD) == 0
        assert await world.alarms() == [("130", 7, 1, "Crash & Smash")]
