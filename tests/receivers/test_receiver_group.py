"""Primary/backup receiver groups (failover, fail-back) and the receiver registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine.station_model import ReceiverConfig
from engine.station_sim import StationSimulator
from protocols.categories import classify
from protocols.signal import Event, Family
from receivers.dc09_client import Dc09ReceiverClient, Dc09ReceiverPool
from receivers.receiver_group import ReceiverGroup
from receivers.registry import ReceiverRegistry, UnknownReceiverError

WAIT_S = 10  # upper bound for anything awaited; never a pass/fail timing criterion

_names = iter(range(1_000_000))


def burglary(zone: int) -> Event:
    return Event(
        family=Family.CID,
        code="130",
        qualifier="1",
        zone=zone,
        partition=1,
        classification=classify(Family.CID, "130", "1"),
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Pair:
    """A primary and a backup station simulator with a client for each."""

    def __init__(self) -> None:
        n = next(_names)
        self.primary_sim = StationSimulator()
        self.backup_sim = StationSimulator()
        self.primary_name, self.backup_name = f"p-{n}", f"b-{n}"
        self.primary: Dc09ReceiverClient
        self.backup: Dc09ReceiverClient

    async def start(self) -> None:
        p_port, b_port = await self.primary_sim.start(), await self.backup_sim.start()
        self.primary = Dc09ReceiverClient(
            ReceiverConfig(
                name=self.primary_name,
                host="127.0.0.1",
                port=p_port,
                ack_timeout_s=0.2,
                null_poll_interval_s=0.1,
            )
        )
        self.backup = Dc09ReceiverClient(
            ReceiverConfig(name=self.backup_name, host="127.0.0.1", port=b_port)
        )

    async def close(self) -> None:
        await self.primary.close()
        await self.backup.close()
        await self.primary_sim.stop()
        await self.backup_sim.stop()


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    await p.start()
    yield p
    await p.close()


async def deliver(group: ReceiverGroup, zone: int) -> tuple[str, str]:
    attempt = await group.deliver(account="1", event=burglary(zone), seq=f"{zone:04d}")
    return attempt.receiver, attempt.outcome


class TestFailover:
    async def test_fails_over_after_n_consecutive_failures(self, pair: Pair) -> None:
        """The Nth consecutive failure sends the event to the backup at once; later ones go there too."""
        pair.primary_sim.set_mode("drop")
        group = ReceiverGroup(pair.primary, pair.backup, failover_after=2)
        before = sample("alarmrelay_receiver_failovers_total", primary=pair.primary_name)
        results = [await deliver(group, z) for z in (1, 2, 3)]
        assert results == [
            (pair.primary_name, "failed"),
            (pair.backup_name, "acked"),
            (pair.backup_name, "acked"),
        ]
        assert group.failed_over
        assert [r.seq for r in pair.backup_sim.received] == ["0002", "0003"]
        assert (
            sample("alarmrelay_receiver_failovers_total", primary=pair.primary_name) == before + 1
        )

    async def test_non_consecutive_failures_do_not_fail_over(self, pair: Pair) -> None:
        """A success in between resets the count: fail, ACK, fail stays on the primary."""
        group = ReceiverGroup(pair.primary, pair.backup, failover_after=2)
        pair.primary_sim.set_mode("drop")
        first = await deliver(group, 1)
        pair.primary_sim.set_mode("ack")
        second = await deliver(group, 2)
        pair.primary_sim.set_mode("drop")
        third = await deliver(group, 3)
        assert [first, second, third] == [
            (pair.primary_name, "failed"),
            (pair.primary_name, "acked"),
            (pair.primary_name, "failed"),
        ]
        assert not group.failed_over
        assert pair.backup_sim.received == []

    async def test_a_frame_the_primary_refuses_goes_to_the_backup_without_failover(
        self, pair: Pair
    ) -> None:
        """DUH is a refusal by a working receiver (say an account only the backup has): the
        backup gets that frame in the same delivery, the group does not fail over, and the
        next delivery tries the primary again."""
        pair.primary_sim.set_mode("duh")
        group = ReceiverGroup(pair.primary, pair.backup, failover_after=1)
        attempt = await group.deliver(account="1", event=burglary(1), seq="0001")
        assert (attempt.receiver, attempt.outcome) == (pair.backup_name, "acked")
        assert attempt.failed_over_from is not None
        assert (attempt.failed_over_from.receiver, attempt.failed_over_from.outcome) == (
            pair.primary_name,
            "duh",
        )
        assert not group.failed_over
        pair.primary_sim.set_mode("ack")
        assert await deliver(group, 2) == (pair.primary_name, "acked")
        assert [r.seq for r in pair.primary_sim.received] == ["0001", "0002"]
        assert [r.seq for r in pair.backup_sim.received] == ["0001"]

    async def test_a_frame_both_refuse_is_refused(self, pair: Pair) -> None:
        """Primary and backup both DUH: the delivery is refused (the caller dead-letters it),
        still without failover."""
        pair.primary_sim.set_mode("duh")
        pair.backup_sim.set_mode("duh")
        group = ReceiverGroup(pair.primary, pair.backup, failover_after=1)
        assert await deliver(group, 1) == (pair.backup_name, "duh")
        assert not group.failed_over

    async def test_without_backup_a_duh_is_returned(self, pair: Pair) -> None:
        pair.primary_sim.set_mode("duh")
        group = ReceiverGroup(pair.primary, None, failover_after=1)
        assert [await deliver(group, z) for z in (1, 2)] == [(pair.primary_name, "duh")] * 2
        assert not group.failed_over

    async def test_without_backup_failures_are_returned(self, pair: Pair) -> None:
        """With no backup the failures go back to the caller, which retries with the same seq."""
        pair.primary_sim.set_mode("drop")
        group = ReceiverGroup(pair.primary, None, failover_after=1)
        results = [await deliver(group, z) for z in (1, 2)]
        assert results == [(pair.primary_name, "failed"), (pair.primary_name, "failed")]
        assert not group.failed_over

    async def test_fails_back_when_primary_polls_healthy(self, pair: Pair) -> None:
        """Once the primary answers NULL polls again, the next delivery goes to the primary."""
        pair.primary_sim.set_mode("drop")
        group = ReceiverGroup(pair.primary, pair.backup, failover_after=1)
        assert await deliver(group, 1) == (pair.backup_name, "acked")
        was_failed_over = group.failed_over
        before = sample("alarmrelay_receiver_failbacks_total", primary=pair.primary_name)
        pair.primary.start()
        pair.primary_sim.set_mode("ack")
        async with asyncio.timeout(WAIT_S):
            await pair.primary.wait_for_link(True)
        assert await deliver(group, 2) == (pair.primary_name, "acked")
        assert (was_failed_over, group.failed_over) == (True, False)
        assert [r.seq for r in pair.primary_sim.received] == ["0001", "0002"]
        assert (
            sample("alarmrelay_receiver_failbacks_total", primary=pair.primary_name) == before + 1
        )

    async def test_stays_on_backup_while_primary_down(self, pair: Pair) -> None:
        """While the primary's polls still fail, deliveries keep going to the backup."""
        pair.primary_sim.set_mode("drop")
        group = ReceiverGroup(pair.primary, pair.backup, failover_after=1)
        assert await deliver(group, 1) == (pair.backup_name, "acked")
        pair.primary.start()
        await pair.primary_sim.wait_for_polls(2, WAIT_S)  # the station gets polls, drops them
        assert await deliver(group, 2) == (pair.backup_name, "acked")
        assert group.failed_over


class TestReceiverRegistry:
    def test_unknown_receiver_is_a_clear_error(self) -> None:
        """Asking for a receiver that is not configured names it and the known ones."""
        registry = ReceiverRegistry([ReceiverConfig(name="main", host="127.0.0.1", port=1)])
        with pytest.raises(UnknownReceiverError) as info:
            registry.group("mian", None)
        assert str(info.value) == (
            "no IP receiver named 'mian' (known: main; phone receivers cannot be delivered to)"
        )
        with pytest.raises(KeyError):  # callers catching KeyError keep working
            registry.group("mian", "nope")

    def test_a_pair_with_one_unknown_receiver_uses_the_other_alone(self) -> None:
        """A backup not added yet (or deleted) must not hold back alarms its primary can take;
        a primary that is gone leaves the backup. Said once per pair in the log."""
        registry = ReceiverRegistry([ReceiverConfig(name="main", host="127.0.0.1", port=1)])
        main = registry.client("main")
        with capture_logs() as logs:
            no_backup = registry.group("main", "central-2")
            assert registry.group("main", "central-2") is no_backup
            no_primary = registry.group("gone", "main")
        assert (no_backup.primary, no_backup.backup) == (main, None)
        assert (no_primary.primary, no_primary.backup) == (main, None)
        assert [(e["event"], e["missing"]) for e in logs] == [
            ("receiver_group_incomplete", ["central-2"]),
            ("receiver_group_incomplete", ["gone"]),
        ]

    def test_phone_receivers_are_not_clients(self) -> None:
        """Phone receivers are left out: a group naming one fails clearly."""
        registry = ReceiverRegistry(
            [
                ReceiverConfig(name="ip", host="127.0.0.1", port=1),
                ReceiverConfig(name="tel", kind="phone", phone_number="+15550100"),
            ]
        )
        assert registry.names == ["ip"]
        with pytest.raises(UnknownReceiverError, match="'tel'"):
            registry.group("tel", None)

    async def test_each_receiver_gets_its_own_connection_count(self) -> None:
        """A receiver's ``connections`` sets its pool size; the registry argument overrides it."""
        receivers = [
            ReceiverConfig(name="wide", host="127.0.0.1", port=1, connections=9),
            ReceiverConfig(name="default", host="127.0.0.1", port=2),
        ]
        registry = ReceiverRegistry(receivers)
        overridden = ReceiverRegistry(receivers, connections=2)
        try:
            assert len(registry.client("wide").connections) == 9
            assert len(registry.client("default").connections) == 4
            assert len(overridden.client("wide").connections) == 2
        finally:
            await registry.close()
            await overridden.close()

    async def test_groups_are_cached_per_pair(self) -> None:
        """The same primary/backup pair gives the same group (shared failover state)."""
        registry = ReceiverRegistry(
            [
                ReceiverConfig(name="a", host="127.0.0.1", port=1),
                ReceiverConfig(name="b", host="127.0.0.1", port=2),
            ]
        )
        try:
            assert registry.group("a", "b") is registry.group("a", "b")
            assert registry.group("a", None) is not registry.group("a", "b")
            assert registry.group("a", "b").primary is registry.group("a", None).primary
        finally:
            await registry.close()

    async def test_started_registry_delivers_and_polls(self) -> None:
        """A started registry's group delivers to the station, and its polls bring the link up."""
        sim = StationSimulator()
        port = await sim.start()
        name = f"reg-{next(_names)}"
        registry = ReceiverRegistry(
            [ReceiverConfig(name=name, host="127.0.0.1", port=port, null_poll_interval_s=0.1)],
            connections=2,
        )
        registry.start()
        try:
            attempt = await registry.group(name, None).deliver(account="9", event=burglary(1))
            await sim.wait_for_polls(1, WAIT_S)
        finally:
            await registry.close()
            await sim.stop()
        assert attempt.outcome == "acked"
        assert sim.polls >= 1

    async def test_a_removed_receiver_leaves_no_link_gauge_behind(self) -> None:
        """A receiver deleted from its station drops out of ``alarmrelay_receiver_link_up`` when
        its connections close: a last value of 0 would keep AlarmrelayReceiverDown firing for a
        receiver that no longer exists. Receivers still configured keep their sample, a changed
        one (new connections, same name) too."""
        sim = StationSimulator()
        port = await sim.start()
        n = next(_names)
        gone, stays, changed = f"gone-{n}", f"stays-{n}", f"changed-{n}"

        def rx(name: str, **extra: float) -> ReceiverConfig:
            return ReceiverConfig(
                name=name, host="127.0.0.1", port=port, null_poll_interval_s=0.1, **extra
            )  # type: ignore[arg-type]

        old = ReceiverRegistry([rx(gone), rx(stays), rx(changed)], connections=1)
        old.start()
        new: ReceiverRegistry | None = None
        try:
            async with asyncio.timeout(WAIT_S):
                for name in (gone, stays, changed):
                    await old.client(name).connections[0].wait_for_link(True)
            sim.set_mode("drop")  # the removed receiver was down when it was deleted
            async with asyncio.timeout(WAIT_S):
                await old.client(gone).connections[0].wait_for_link(False)
            assert REGISTRY.get_sample_value("alarmrelay_receiver_link_up", {"receiver": gone}) == 0
            sim.set_mode("ack")
            new = ReceiverRegistry(
                [rx(stays), rx(changed, ack_timeout_s=2.0)], connections=1, previous=old
            )
            new.start()
            await old.close(keep=new.pools())
            async with asyncio.timeout(WAIT_S):
                await new.client(changed).connections[0].wait_for_link(True)
            assert (
                REGISTRY.get_sample_value("alarmrelay_receiver_link_up", {"receiver": gone}) is None
            )
            assert sample("alarmrelay_receiver_link_up", receiver=stays) == 1
            assert sample("alarmrelay_receiver_link_up", receiver=changed) == 1
        finally:
            await old.close()
            if new is not None:
                await new.close()
            await sim.stop()

    async def test_failed_over_is_reported_until_the_primary_is_back_not_until_traffic(
        self,
    ) -> None:
        """The station status's ``failed_over`` says where the next delivery goes: once the
        primary's polls bring its link up again, it is no longer failed over, even if no
        delivery has come since (on a quiet night it would otherwise read "failed over" for
        hours after the primary recovered)."""
        backup_sim = StationSimulator()
        backup_port = await backup_sim.start()
        primary_sim = StationSimulator()
        primary_port = await primary_sim.start()
        await primary_sim.stop()  # down
        n = next(_names)
        primary, backup = f"p-{n}", f"b-{n}"
        registry = ReceiverRegistry(
            [
                ReceiverConfig(
                    name=primary,
                    host="127.0.0.1",
                    port=primary_port,
                    ack_timeout_s=0.5,
                    null_poll_interval_s=0.2,
                ),
                ReceiverConfig(name=backup, host="127.0.0.1", port=backup_port),
            ],
            failover_after=1,
            connections=1,
        )
        registry.start()
        back = StationSimulator(port=primary_port)
        try:
            attempt = await registry.group(primary, backup).deliver(account="9", event=burglary(1))
            assert attempt.receiver == backup
            assert registry.link_states()[primary].failed_over
            await back.start()
            async with asyncio.timeout(WAIT_S):
                await registry.client(primary).connections[0].wait_for_link(True)
            assert not registry.link_states()[primary].failed_over
        finally:
            await registry.close()
            await back.stop()
            await backup_sim.stop()


class TestPriority:
    async def test_an_alarm_waiting_for_a_connection_goes_before_routine_signals(
        self,
    ) -> None:
        """Every connection to the receiver busy (a backlog draining after an outage): an
        alarm (priority 0) that has to wait for a connection is sent on the first one free,
        before the routine signals (priority 1) that were waiting longer, not after them all."""
        sim = StationSimulator()
        port = await sim.start()
        sim.set_mode("delay", delay_ms=50)
        pool = Dc09ReceiverPool(
            ReceiverConfig(name=f"prio-{next(_names)}", host="127.0.0.1", port=port),
            connections=1,
        )
        group = ReceiverGroup(pool, None)
        try:
            routine = [
                asyncio.create_task(
                    group.deliver(account="1", event=burglary(z), seq=f"{z:04d}", priority=1)
                )
                for z in range(1, 6)
            ]
            await asyncio.sleep(0.01)  # all five sent or waiting, in that order
            alarm = asyncio.create_task(
                group.deliver(account="2", event=burglary(9), seq="0009", priority=0)
            )
            attempts = await asyncio.wait_for(asyncio.gather(*routine, alarm), WAIT_S)
        finally:
            await pool.close()
            await sim.stop()
        assert [a.outcome for a in attempts] == ["acked"] * 6
        assert [r.events[0].zone for r in sim.received] == [1, 9, 2, 3, 4, 5]
