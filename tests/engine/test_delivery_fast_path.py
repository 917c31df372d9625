"""The delivery fast path against the real PostgreSQL.

A forwarded signal's outbox row is inserted leased to the committing engine when its lane is
clear, and that engine's dispatcher sends it without a claim query; a busy lane (a retry waiting,
another engine's row) leaves the row to the claim loop; two engines committing one lane at once
serialise on the lane lock; a failed head hands the rows behind it back to the claim loop, which
then sends the lane in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.delivery import Dispatcher
from engine.errors import is_database_unreachable
from engine.forwarding_stage import ForwardingStage, Handover, OwnedDelivery, delivery_seq
from engine.ingest_types import InboundSignal, SignalKind, Transport
from engine.ingest_writer import IngestWriter
from engine.store.accounts import AccountStore
from engine.store.ingest_batch import BatchDone, BatchWrite, write_batch
from engine.store.signals import SignalRows
from engine.supervision import SupervisionStage
from engine.voice_session import VoiceReceiver
from protocols.signal import Category, Classification, Event, Family
from tests.support.row_holder import holding
from tests.support.tcp_proxy import TcpProxy, proxied_database

WINDOW_S = 600


def alarm(zone: int) -> Event:
    return Event(
        family=Family.CID,
        code="130",
        qualifier="1",
        zone=zone,
        partition=1,
        classification=Classification(category=Category.ALARMS),
    )


def signal(account: str, seq: int) -> InboundSignal:
    return InboundSignal(
        account=account,
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=datetime.now(UTC),
        events=(alarm(seq),),
        token="ADM-CID",
        seq=f"{seq:04d}",
        dedupe_key=f"{account}:{seq}",
    )


def forwarding_account(number: str, station_account: str) -> Account:
    return Account(
        account=number,
        forwarding=ForwardingSettings(
            mode=ForwardingMode.ALWAYS, station_account=station_account, primary_receiver="rx"
        ),
    )


async def directory_with(pool: asyncpg.Pool, *accounts: Account) -> AccountDirectory:
    await AccountStore(pool).upsert_many(accounts)
    directory = AccountDirectory()
    directory.load(accounts)
    return directory


async def commit(
    conn: asyncpg.Connection,
    stage: ForwardingStage,
    signals: Sequence[InboundSignal],
    handover: Handover | None = None,
) -> BatchDone:
    """One batch through the fast path's write, as the ingest writer does it."""
    rows = SignalRows(signals)
    plan = stage.plan(signals, rows.sent)
    done = await write_batch(
        conn,
        BatchWrite(
            signals=rows,
            decisions=plan.decisions,
            outbox=plan.outbox,
            owner=stage.owner,
            lease_s=stage.lease_s,
        ),
        duplicate_window_s=WINDOW_S,
    )
    stage.finish(plan, done, handover)
    return done


class TestLeasedAtInsert:
    async def test_clear_lane_row_is_leased_to_the_committing_engine(
        self, db_pool: asyncpg.Pool
    ) -> None:
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        stage = ForwardingStage(directory, owner="engine-a")
        handover = Handover()
        async with db_pool.acquire() as conn:
            done = await commit(conn, stage, [signal("A1", 1)], handover)
        [delivered] = done.deliveries
        assert delivered.leased
        row = await db_pool.fetchrow("SELECT * FROM deliveries WHERE id = $1", delivered.id)
        assert row is not None
        assert (row["lease_owner"], row["attempts"], row["state"]) == ("engine-a", 1, "pending")
        assert row["seq"] == delivery_seq(delivered.id)
        assert row["lease_until"] > datetime.now(UTC)
        [owned] = handover.leased
        assert (owned.id, owned.lane, owned.station_account, owned.seq) == (
            delivered.id,
            "9001@rx",
            "9001",
            row["seq"],
        )
        assert owned.signal_id == row["signal_id"]
        assert handover.unleased_lanes == set()

    async def test_lane_with_a_row_nobody_holds_is_left_to_the_claim_loop(
        self, db_pool: asyncpg.Pool
    ) -> None:
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        stage = ForwardingStage(directory, owner="engine-a")
        async with db_pool.acquire() as conn:
            first = await commit(conn, stage, [signal("A1", 1)])
            # the first delivery failed: waiting for its retry, unleased
            await conn.execute(
                "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE id = $1",
                first.deliveries[0].id,
            )
            handover = Handover()
            second = await commit(conn, stage, [signal("A1", 2)], handover)
        [delivered] = second.deliveries
        assert not delivered.leased
        assert handover.leased == []
        assert handover.unleased_lanes == {"9001@rx"}
        owner = await db_pool.fetchval(
            "SELECT lease_owner FROM deliveries WHERE id = $1", delivered.id
        )
        assert owner is None

    async def test_own_pending_rows_keep_the_lane_clear_for_the_same_engine_only(
        self, db_pool: asyncpg.Pool
    ) -> None:
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        mine = ForwardingStage(directory, owner="engine-a")
        other = ForwardingStage(directory, owner="engine-b")
        async with db_pool.acquire() as conn:
            await commit(conn, mine, [signal("A1", 1)])
            again = await commit(conn, mine, [signal("A1", 2)])
            elsewhere = await commit(conn, other, [signal("A1", 3)])
        assert again.deliveries[0].leased
        assert not elsewhere.deliveries[0].leased

    async def test_one_batch_leases_every_row_of_a_clear_lane_in_order(
        self, db_pool: asyncpg.Pool
    ) -> None:
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        stage = ForwardingStage(directory, owner="engine-a")
        handover = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", n) for n in (1, 2, 3)], handover)
        assert [r.event.zone for r in handover.leased] == [1, 2, 3]
        ids = [r.id for r in handover.leased]
        assert ids == sorted(ids)

    async def test_a_duplicate_gets_no_second_decision_or_delivery(
        self, db_pool: asyncpg.Pool
    ) -> None:
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        stage = ForwardingStage(directory, owner="engine-a")
        original = signal("A1", 1)
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [original])
            resent = await commit(conn, stage, [msgspec.structs.replace(original)])
        assert resent.deliveries == []
        assert resent.kept == {}
        assert await db_pool.fetchval("SELECT count(*) FROM decisions") == 1
        assert await db_pool.fetchval("SELECT count(*) FROM deliveries") == 1

    async def test_two_engines_committing_one_lane_serialise(self, db_pool: asyncpg.Pool) -> None:
        """The second commit waits for the first one's lane lock, then sees its row: unleased."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        engine_a = ForwardingStage(directory, owner="engine-a")
        engine_b = ForwardingStage(directory, owner="engine-b")
        async with db_pool.acquire() as conn_a, db_pool.acquire() as conn_b:
            tx = conn_a.transaction()
            await tx.start()
            first = await commit(conn_a, engine_a, [signal("A1", 1)])
            second = asyncio.create_task(commit(conn_b, engine_b, [signal("A1", 2)]))
            await asyncio.sleep(0.3)
            assert not second.done(), "the second engine must wait for the lane lock"
            await tx.commit()
            done_b = await asyncio.wait_for(second, 10)
        assert first.deliveries[0].leased
        assert not done_b.deliveries[0].leased


class FakeGroup:
    """A receiver group that records what it was asked to send (one station, in memory)."""

    def __init__(self, station: FakeStation) -> None:
        self.station = station

    async def deliver(
        self, *, account: str, event: Event, seq: str | None = None, priority: int = 0
    ) -> Any:
        self.station.priorities.append((event.code, priority))
        return await self.station.receive(account, event)


class Attempt(msgspec.Struct):
    outcome: str
    receiver: str = "rx"
    seq: str = "0001"
    error: str | None = None
    family_sent: str | None = "cid"
    acked_at: datetime | None = None


class FakeStation:
    def __init__(self, *, fail_zones: set[int] | None = None) -> None:
        self.received: list[tuple[str, int | None]] = []
        self.fail_zones = set(fail_zones or ())
        self.in_flight: dict[str, int] = {}
        self.max_in_flight_per_account = 0
        self.priorities: list[tuple[str, int]] = []  # (code, priority) per delivery asked for

    async def receive(self, account: str, event: Event) -> Attempt:
        self.in_flight[account] = self.in_flight.get(account, 0) + 1
        self.max_in_flight_per_account = max(
            self.max_in_flight_per_account, self.in_flight[account]
        )
        try:
            await asyncio.sleep(0.01)
            if event.zone in self.fail_zones:
                self.fail_zones.discard(event.zone)  # fails once, then the retry goes through
                return Attempt(outcome="failed", error="no answer")
            self.received.append((account, event.zone))
            return Attempt(outcome="acked", acked_at=datetime.now(UTC))
        finally:
            self.in_flight[account] -= 1


class FakeRegistry:
    def __init__(self, station: FakeStation) -> None:
        self._group = FakeGroup(station)

    def group(self, primary: str, backup: str | None) -> FakeGroup:
        return self._group

    def client(self, name: str) -> VoiceReceiver:
        raise KeyError(name)  # no two-way voice here


async def _done(value: bool) -> bool:
    return value


async def _done_async(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def wait_until_delivered(pool: asyncpg.Pool, n: int, timeout: float = 10.0) -> None:
    """Wait until ``n`` deliveries are recorded delivered."""

    async def delivered() -> bool:
        found = await pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'delivered'")
        return bool(found == n)

    await wait_until(delivered, timeout)


async def wait_until_leased_to(pool: asyncpg.Pool, owner: str) -> None:
    """Wait until the (one) delivery is leased to ``owner``: its claim is committed."""

    async def leased() -> bool:
        return bool(await pool.fetchval("SELECT lease_owner FROM deliveries") == owner)

    await wait_until(leased)


async def wait_until_renewed_past(
    pool: asyncpg.Pool,
    owner: str,
    since: datetime,
    seconds: int,
    *,
    row_id: int | None = None,
    timeout: float = 15,
) -> None:
    """Wait until the delivery (the one, or ``row_id``) is leased to ``owner`` until more than
    ``seconds`` after ``since`` (a database time): its lease was renewed that far."""

    async def renewed() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT lease_until > $1::timestamptz + make_interval(secs => $2) "
                "AND lease_owner = $3 FROM deliveries WHERE $4::bigint IS NULL OR id = $4",
                since,
                seconds,
                owner,
                row_id,
            )
        )

    await wait_until(renewed, timeout=timeout)


async def writer_noting_uncertain_lanes(
    pool: asyncpg.Pool, *, supervised: bool = False
) -> tuple[IngestWriter, list[set[str]]]:
    """An ingest writer of engine-x for account A1 (lane 9001@rx), with the module supervised
    or not, and the list each set of lanes it reports uncertain is appended to."""
    directory = await directory_with(pool, forwarding_account("A1", "9001"))
    uncertain: list[set[str]] = []
    writer = IngestWriter(
        pool,
        duplicate_window_s=WINDOW_S,
        forwarding=ForwardingStage(directory, owner="engine-x", lease_s=6.0),
        supervision=SupervisionStage(directory, grace_s=0) if supervised else None,
        on_leased=lambda rows: None,
        on_uncertain=lambda lanes: uncertain.append(set(lanes)),
    )
    return writer, uncertain


async def terminate_the_commit_waiting_for_a_lock(pool: asyncpg.Pool) -> None:
    """Once the ingest writer's commit statement waits for a lock the test holds, end its
    connection while the statement runs."""

    async def waiting() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND query LIKE '%ingest_batch%'"
            )
        )

    await wait_until(waiting)
    await pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND query LIKE '%ingest_batch%'"
    )


class TestDispatcherHoldsLanes:
    async def test_adopted_rows_go_out_in_lane_order_without_a_claim(
        self, db_pool: asyncpg.Pool
    ) -> None:
        directory = await directory_with(
            db_pool, forwarding_account("A1", "9001"), forwarding_account("A2", "9002")
        )
        station = FakeStation()
        # A poll far away: anything delivered here went through the fast path.
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=3600)
        stage = ForwardingStage(directory, owner=dispatcher.owner)
        handover = Handover()
        async with db_pool.acquire() as conn:
            await commit(
                conn,
                stage,
                [signal("A1", 1), signal("A2", 7), signal("A1", 2), signal("A1", 3)],
                handover,
            )
        dispatcher.start()
        try:
            dispatcher.wake()  # the claim loop's first round finds nothing it may claim
            await asyncio.sleep(0.05)
            dispatcher.adopt(handover.leased)

            await wait_until_delivered(db_pool, 4)
        finally:
            await dispatcher.stop()
        assert [z for a, z in station.received if a == "9001"] == [1, 2, 3]
        assert ("9002", 7) in station.received
        assert station.max_in_flight_per_account == 1
        rows = await db_pool.fetch("SELECT lease_owner, acked_at FROM deliveries")
        assert all(r["lease_owner"] is None and r["acked_at"] is not None for r in rows)

    async def test_the_rows_priority_goes_with_it_to_the_receiver(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The receivers order deliveries waiting for a connection by it: an alarm 0, an
        opening (routine) 1."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=3600)
        stage = ForwardingStage(directory, owner=dispatcher.owner)
        handover = Handover()
        opening = Event(
            family=Family.CID,
            code="401",
            qualifier="1",
            zone=1,
            partition=1,
            classification=Classification(category=Category.ARMING),
        )
        async with db_pool.acquire() as conn:
            await commit(
                conn,
                stage,
                [signal("A1", 1), msgspec.structs.replace(signal("A1", 2), events=(opening,))],
                handover,
            )
        dispatcher.start()
        try:
            dispatcher.adopt(handover.leased)
            await wait_until(lambda: _done(len(station.received) == 2))
        finally:
            await dispatcher.stop()
        assert station.priorities == [("130", 0), ("401", 1)]

    async def test_a_failed_head_hands_its_lane_back_and_order_holds(
        self, db_pool: asyncpg.Pool
    ) -> None:
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation(fail_zones={1})
        dispatcher = Dispatcher(
            db_pool, lambda: FakeRegistry(station), poll_s=0.2, retry_base_s=0.3
        )
        stage = ForwardingStage(directory, owner=dispatcher.owner)
        handover = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", n) for n in (1, 2, 3)], handover)
        dispatcher.start()
        try:
            dispatcher.adopt(handover.leased)

            async def behind_released() -> bool:
                rows = await db_pool.fetch(
                    "SELECT lease_owner, attempts FROM deliveries ORDER BY id"
                )
                return rows[0]["attempts"] == 1 and all(r["lease_owner"] is None for r in rows)

            await wait_until(behind_released)
            assert station.received == []  # nothing overtook the failed head

            await wait_until_delivered(db_pool, 3)
        finally:
            await dispatcher.stop()
        assert station.received == [("9001", 1), ("9001", 2), ("9001", 3)]
        attempts = [
            r["attempts"]
            for r in await db_pool.fetch("SELECT attempts FROM deliveries ORDER BY id")
        ]
        assert attempts == [2, 1, 1]  # the head was sent twice; the rows behind it once each

    async def test_stop_hands_rows_not_yet_sent_back(self, db_pool: asyncpg.Pool) -> None:
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=3600)
        stage = ForwardingStage(directory, owner=dispatcher.owner)
        handover = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", n) for n in range(1, 21)], handover)
        owned: list[OwnedDelivery] = handover.leased
        dispatcher.adopt(owned)  # not started: only the head goes (one per lane)
        await asyncio.sleep(0.001)
        await dispatcher.stop()
        rows = await db_pool.fetch("SELECT state, lease_owner FROM deliveries ORDER BY id")
        assert rows[-1]["lease_owner"] is None
        assert all(r["lease_owner"] is None for r in rows if r["state"] == "pending")

    async def test_stop_hands_back_rows_leased_to_it_it_never_got(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A commit whose reply was lost leased the engine a row it never got (the lane waits
        for that lease). Stopping, the engine hands it back too: another engine sends it at once,
        not once its lease has run out."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=3600)
        stage = ForwardingStage(directory, owner=dispatcher.owner)
        handover = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", 1)], handover)  # its reply "lost"
        dispatcher.uncertain({r.lane for r in handover.leased})
        dispatcher.start()
        await dispatcher.stop()
        row = await db_pool.fetchrow("SELECT state, lease_owner, attempts FROM deliveries")
        assert row is not None
        assert (row["state"], row["lease_owner"], row["attempts"]) == ("pending", None, 0)
        assert station.received == []


class TestFailureUnderTheLaneLock:
    async def test_a_row_leased_while_the_head_fails_is_handed_back_not_sent(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A commit saw the lane clear (its head ours) just before the head failed: the failure
        waits for that commit's lane lock, releases its row too, and the late handover is
        ignored, so nothing goes out before the head's retry."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(FakeStation()), poll_s=3600)
        stage = ForwardingStage(directory, owner=dispatcher.owner)
        first = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", 1)], first)
        [head] = first.leased
        dispatcher._lanes[head.lane] = deque([head])  # held, as adopt() leaves it mid-send
        dispatcher._held.add(head.id)
        late = Handover()
        async with db_pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await commit(conn, stage, [signal("A1", 2)], late)
            assert [r.event.zone for r in late.leased] == [2]  # the lane looked clear
            failing = asyncio.create_task(dispatcher._failed(head, "no answer", receiver="rx"))
            await asyncio.sleep(0.3)
            assert not failing.done(), "the failure must wait for the lane lock"
            await tx.commit()
        await asyncio.wait_for(failing, 10)
        rows = await db_pool.fetch("SELECT id, lease_owner, last_error FROM deliveries ORDER BY id")
        assert [(r["lease_owner"], r["last_error"]) for r in rows] == [
            (None, "no answer"),
            (None, None),
        ]
        dispatcher._lanes.clear()
        dispatcher._held.clear()
        dispatcher.adopt(late.leased)  # the late handover
        assert dispatcher._lanes == {}
        # and the next commit sees a lane nobody holds
        again = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", 3)], again)
        assert again.leased == [] and again.unleased_lanes == {"9001@rx"}


class TestUncertainCommit:
    async def test_rows_a_lost_commit_may_have_leased_us_are_delivered_first(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A commit leased us a lane's row, but its reply was lost (the connection went after
        COMMIT), so the dispatcher never got the row. The writer reports the lane uncertain;
        the lane's next row, leased to us by the next commit, goes back to the outbox, and the
        claim loop sends the lane in order once the unknown row's lease is over."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=1.0)
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        dispatcher.start()
        try:
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)])  # its handover is lost
                dispatcher.uncertain({"9001@rx"})
                handover = Handover()
                await commit(conn, stage, [signal("A1", 2)], handover)
            assert [r.lane for r in handover.leased] == ["9001@rx"]  # leased: the lane looked ours
            dispatcher.adopt(handover.leased)

            await wait_until_delivered(db_pool, 2)
        finally:
            await dispatcher.stop()
        assert station.received == [("9001", 1), ("9001", 2)]

    async def test_the_writer_reports_the_lanes_of_a_commit_whose_connection_went(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The connection of a commit is terminated while the statement runs: the batch fails
        as not committed, and the writer names the lanes it would have leased rows on."""
        writer, uncertain = await writer_noting_uncertain_lanes(db_pool)
        async with db_pool.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            # The commit updates the account's last contact: it waits for this row lock.
            await holder.execute("SELECT 1 FROM accounts WHERE account = 'A1' FOR UPDATE")
            write = asyncio.create_task(writer([signal("A1", 1)]))
            await terminate_the_commit_waiting_for_a_lock(db_pool)
            with pytest.raises(Exception) as caught:
                await asyncio.wait_for(write, 10)
            await tx.rollback()
        assert is_database_unreachable(caught.value), repr(caught.value)
        assert uncertain == [{"9001@rx"}]

    async def test_the_writer_reports_the_lane_of_a_restore_whose_connection_went(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A contact from an account in a Panel Not Responding miss commits its restore in a
        transaction of its own, which leases its outbox row to us too. When that connection
        goes during the restore, the row may be committed, leased to us and never handed over:
        the writer names its lane as for the batch itself, or the account's next signal would
        be leased to us and reach the station before the restore."""
        writer, uncertain = await writer_noting_uncertain_lanes(db_pool, supervised=True)
        link_test = msgspec.structs.replace(
            signal("A1", 1), kind=SignalKind.LINK_TEST, events=(), dedupe_key=None
        )
        await writer([link_test])
        await db_pool.execute("UPDATE supervision SET missed = true, missed_at = now()")
        async with db_pool.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            # The restore's outbox row takes its lane's lock: it waits for this one.
            await holder.execute("SELECT pg_advisory_xact_lock(hashtextextended('9001@rx', 0))")
            write = asyncio.create_task(
                writer([msgspec.structs.replace(link_test, received_at=datetime.now(UTC))])
            )
            await terminate_the_commit_waiting_for_a_lock(db_pool)
            await asyncio.wait_for(write, 10)  # the contact itself is committed
            await tx.rollback()
        assert uncertain == [{"9001@rx"}]

    async def test_two_lost_commits_on_a_lane_keep_the_lane_waiting_for_both(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Two commits of one lane each leased us a row and lost their reply (a flapping
        connection): the dispatcher knows neither row. The first one's lease ends first and the
        claim loop sends it; the lane must still wait for the second one (its lease runs on),
        so a row the next commit leases us goes back to the outbox instead of overtaking it."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=3.0)
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        dispatcher.start()
        try:
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)])  # its handover is lost
                dispatcher.uncertain({"9001@rx"})
                await asyncio.sleep(1.5)
                second = await commit(conn, stage, [signal("A1", 2)])  # lost too
                assert second.deliveries[0].leased
                dispatcher.uncertain({"9001@rx"})
            # the first unknown row's lease ends: the claim loop sends it
            await wait_until(lambda: _done(station.received == [("9001", 1)]), timeout=10)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 3)], handover)
            # leased to us: the lane's last pending row (the second unknown one) is ours
            assert [r.event.zone for r in handover.leased] == [3]
            dispatcher.adopt(handover.leased)

            await wait_until_delivered(db_pool, 3, timeout=15)
        finally:
            await dispatcher.stop()
        assert station.received == [("9001", 1), ("9001", 2), ("9001", 3)]


class StallingStation(FakeStation):
    """Holds the first delivery of ``zone`` until ``gate`` is set (a station slow to answer)."""

    def __init__(self, zone: int, *, fail_zones: set[int] | None = None) -> None:
        super().__init__(fail_zones=fail_zones)
        self.zone = zone
        self.stalled = asyncio.Event()
        self.gate = asyncio.Event()

    async def receive(self, account: str, event: Event) -> Attempt:
        if event.zone == self.zone and not self.stalled.is_set():
            self.stalled.set()
            await self.gate.wait()
        return await super().receive(account, event)


async def waiting_on(pool: asyncpg.Pool, statement: str) -> int:
    """How many statements containing ``statement`` wait for a lock."""
    n = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
        statement,
    )
    return int(n)


class TestLateRelease:
    async def test_a_release_that_comes_after_the_row_was_claimed_again_leaves_its_lease(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A row is handed back to the outbox (here: leased by a commit while its lane waits
        for a lost commit's row), but its release waits behind failure writes (two heads that
        failed, each waiting for its lane's lock) longer than its lease. The claim loop takes
        the row again and sends it; the late release must not end that new lease, or another
        engine claims the row and the station gets it twice."""
        directory = await directory_with(
            db_pool,
            forwarding_account("A1", "9001"),
            forwarding_account("A2", "9002"),
            forwarding_account("A3", "9003"),
            forwarding_account("A4", "9004"),
        )
        station = StallingStation(1, fail_zones={20, 30})
        settings: dict[str, Any] = {"poll_s": 0.05, "lease_s": 1.0, "retry_base_s": 30.0}
        pool_a = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
        pool_b = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
        engine_a = Dispatcher(pool_a, lambda: FakeRegistry(station), **settings)
        engine_b = Dispatcher(pool_b, lambda: FakeRegistry(station), **settings)
        stage = ForwardingStage(directory, owner=engine_a.owner, lease_s=engine_a.lease_s)
        heads = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A2", 20), signal("A3", 30)], heads)
        engine_a.start()
        lane_locks = await asyncpg.connect(database_url)
        row_lock = await asyncpg.connect(database_url)
        lane_tx, row_tx = lane_locks.transaction(), row_lock.transaction()
        try:
            await lane_tx.start()
            for lane in ("9002@rx", "9003@rx"):
                await lane_locks.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", lane
                )
            engine_a.adopt(heads.leased)  # both fail: both failure-write slots wait
            await wait_until(lambda: _done_async(waiting_on(db_pool, "pg_advisory_xact_lock"), 2))
            engine_a.uncertain({"9001@rx"})
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)], handover)
            assert [r.event.zone for r in handover.leased] == [1]
            engine_a.adopt(handover.leased)  # handed back: its release waits for a slot
            await asyncio.wait_for(station.stalled.wait(), 10)  # claimed again, being sent
            # Engine A's next claim waits on a row lock for a while (a lane whose second row
            # is locked), so that engine B's claim loop is the first to see the row released.
            async with db_pool.acquire() as conn:
                await commit(conn, ForwardingStage(directory), [signal("A4", 40), signal("A4", 41)])
            await row_tx.start()
            await row_lock.execute(
                "SELECT 1 FROM deliveries WHERE station_account = '9004' "
                "ORDER BY id DESC LIMIT 1 FOR UPDATE"
            )
            await wait_until(lambda: _done_async(waiting_on(db_pool, "WITH heads AS"), 1))
            engine_b.start()
            await lane_tx.rollback()  # the failures are written, then the queued release

            async def failures_recorded() -> bool:
                n = await db_pool.fetchval(
                    "SELECT count(*) FROM deliveries WHERE last_error IS NOT NULL"
                )
                return bool(n == 2)

            await wait_until(failures_recorded)
            await asyncio.sleep(1.0)  # engine B's claim loop polls meanwhile
            station.gate.set()

            async def delivered() -> bool:
                return bool(
                    await db_pool.fetchval(
                        "SELECT state = 'delivered' FROM deliveries WHERE station_account = '9001'"
                    )
                )

            await wait_until(delivered)
        finally:
            station.gate.set()
            for tx in (lane_tx, row_tx):
                with contextlib.suppress(asyncpg.InterfaceError):
                    await tx.rollback()
            await lane_locks.close()
            await row_lock.close()
            await engine_a.stop()
            await engine_b.stop()
            await pool_a.close()
            await pool_b.close()
        assert [zone for account, zone in station.received if account == "9001"] == [1]

    async def test_a_row_handed_back_keeps_its_lane_waiting_until_it_is_released(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A commit leased us a row on a lane waiting for a lost commit's row, and the row went
        back to the outbox; its release waits behind failure writes while the lane's wait runs
        out. The row is still leased to us, so the lane looks ours to the next commit, whose
        row must not go before it."""
        directory = await directory_with(
            db_pool,
            forwarding_account("A1", "9001"),
            forwarding_account("A2", "9002"),
            forwarding_account("A3", "9003"),
        )
        station = FakeStation(fail_zones={20, 30})
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
        dispatcher = Dispatcher(
            pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=2.0, retry_base_s=30.0
        )
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        heads = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A2", 20), signal("A3", 30)], heads)
        dispatcher.start()
        lane_locks = await asyncpg.connect(database_url)
        lane_tx = lane_locks.transaction()
        try:
            await lane_tx.start()
            for lane in ("9002@rx", "9003@rx"):
                await lane_locks.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))", lane
                )
            dispatcher.adopt(heads.leased)  # both fail: both failure-write slots wait
            await wait_until(lambda: _done_async(waiting_on(db_pool, "pg_advisory_xact_lock"), 2))
            dispatcher.uncertain({"9001@rx"})
            waits_until = asyncio.get_running_loop().time() + dispatcher.lease_s
            await asyncio.sleep(1.2)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)], handover)
            assert [r.event.zone for r in handover.leased] == [1]
            dispatcher.adopt(handover.leased)  # handed back: its release waits for a slot
            await asyncio.sleep(waits_until + 0.2 - asyncio.get_running_loop().time())
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 2)], handover)
            assert [r.event.zone for r in handover.leased] == [2]  # zone 1's lease runs on
            dispatcher.adopt(handover.leased)
            await asyncio.sleep(0.3)
            await lane_tx.rollback()  # the failures are written, then the queued releases

            async def both_delivered() -> bool:
                n = await db_pool.fetchval(
                    "SELECT count(*) FROM deliveries "
                    "WHERE station_account = '9001' AND state = 'delivered'"
                )
                return bool(n == 2)

            await wait_until(both_delivered)
        finally:
            with contextlib.suppress(asyncpg.InterfaceError):
                await lane_tx.rollback()
            await lane_locks.close()
            await dispatcher.stop()
            await pool.close()
        assert [zone for account, zone in station.received if account == "9001"] == [1, 2]

    async def test_a_row_that_could_not_be_handed_back_keeps_its_lane_waiting_for_its_lease(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """As above, but the release fails (the dispatcher's database connections cut, five
        tries): the row stays leased to us until its lease ends, so the lane waits that long,
        and the next commit's row, leased to us meanwhile, goes back to the outbox too."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        async with proxied_database(database_url) as (proxy, proxied_url):
            pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
            dispatcher = Dispatcher(pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=5.0)
            stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
            dispatcher.start()
            try:
                dispatcher.uncertain({"9001@rx"})
                await asyncio.sleep(3.0)
                handover = Handover()
                async with db_pool.acquire() as conn:
                    await commit(conn, stage, [signal("A1", 1)], handover)
                assert [r.event.zone for r in handover.leased] == [1]
                proxy.cut()
                dispatcher.adopt(handover.leased)  # handed back: the release fails
                await asyncio.sleep(3.5)  # five tries; the lane's first wait is over
                proxy.restore()
                handover = Handover()
                async with db_pool.acquire() as conn:
                    await commit(conn, stage, [signal("A1", 2)], handover)
                assert [r.event.zone for r in handover.leased] == [2]  # zone 1's lease runs on
                dispatcher.adopt(handover.leased)

                await wait_until_delivered(db_pool, 2, timeout=20)
            finally:
                await dispatcher.stop()
                await pool.close()
        assert station.received == [("9001", 1), ("9001", 2)]


@contextlib.asynccontextmanager
async def a_hand_back_held(
    db_pool: asyncpg.Pool, database_url: str, directory: AccountDirectory, station: FakeStation
) -> AsyncIterator[tuple[Dispatcher, ForwardingStage]]:
    """A row a commit leased the dispatcher (lane A1, zone 1) on a lane it is unsure of (a lost
    commit's): handed back to the outbox, and the hand-back's reply held at the proxy (that of
    its statement's preparation or of its run, as the packets fall) until the block ends.
    Yields the dispatcher and its forwarding stage."""
    async with proxied_database(database_url) as (proxy, proxied_url):
        pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
        dispatcher = Dispatcher(pool, lambda: FakeRegistry(station), poll_s=0.05)
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        dispatcher.start()
        go = proxy.hold_reply_after(b"attempts = greatest(attempts - 1, 0)\nWHERE id = ANY")
        try:
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)], handover)
            dispatcher.uncertain({r.lane for r in handover.leased})
            dispatcher.adopt(handover.leased)  # handed back: its reply is held
            yield dispatcher, stage
        finally:
            go.set()
            await dispatcher.stop()
            await pool.close()


class TestHungRelease:
    async def test_a_hand_back_that_is_never_answered_does_not_stop_the_claim_loop(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Rows handed back to the outbox (here a row a commit leased us on a lane waiting for
        a lost commit's row) get no answer, ever (a half-open connection). The hand-back holds
        the claim loop's lock: bounded (2 s a try), that try fails, the next one, on another
        connection, releases the row, and the claim loop sends it (it waited forever)."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        async with a_hand_back_held(db_pool, database_url, directory, station):
            # its reply never comes
            await wait_until_delivered(db_pool, 1, timeout=15)
        assert station.received == [("9001", 1)]


class TestHungFailureRecord:
    async def test_a_failure_record_that_is_never_answered_does_not_hold_its_lane(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The head failed; the transaction recording its retry gets no answer, ever (a
        half-open connection). It held the lane (its row leased and renewed, never retried)
        and one of the two failure-write slots for good. Bounded (2 s a try), that try fails,
        the next one, on another connection, records the failure once, and the retry goes."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation(fail_zones={1})
        async with proxied_database(database_url) as (proxy, proxied_url):
            pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
            dispatcher = Dispatcher(pool, lambda: FakeRegistry(station), poll_s=0.05)
            stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
            dispatcher.start()
            go = proxy.hold_reply_after(b"SET last_error = $2, receiver_used = $3")
            timeouts = _timeouts("failure_record")
            try:
                handover = Handover()
                async with db_pool.acquire() as conn:
                    await commit(conn, stage, [signal("A1", 1)], handover)
                dispatcher.adopt(handover.leased)  # fails; its failure record is never answered

                await wait_until_delivered(db_pool, 1, timeout=15)
            finally:
                go.set()
                await dispatcher.stop()
                await pool.close()
        assert station.received == [("9001", 1)]
        failures = await db_pool.fetchval(
            "SELECT jsonb_array_length(failed_attempts) FROM deliveries"
        )
        assert failures == 1  # the try cut short did not commit; the next one recorded it
        assert _timeouts("failure_record") == timeouts + 1


class TestHungStop:
    async def test_a_stop_whose_hand_back_is_never_answered_still_ends(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Stopping, the engine hands every row still leased to it back to the outbox (here one
        a lost commit leased it); that statement's reply never comes (a half-open connection).
        The stop waited for it for good; bounded (2 s a try), it ends, a second try, on another
        connection, answered."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        async with proxied_database(database_url) as (proxy, proxied_url):
            pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
            dispatcher = Dispatcher(pool, lambda: FakeRegistry(station), poll_s=3600)
            stage = ForwardingStage(directory, owner=dispatcher.owner)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)], handover)  # its reply "lost"
            dispatcher.uncertain({r.lane for r in handover.leased})
            go = proxy.hold_reply_after(b"WHERE lease_owner = $1 AND state = 'pending'")
            timeouts = _timeouts("stop_hand_back")
            stopping = asyncio.create_task(dispatcher.stop())
            try:
                stopped, _ = await asyncio.wait({stopping}, timeout=15)
            finally:
                go.set()
                await stopping
                await pool.close()
        assert stopped, "the stop still waited for its hand-back's reply"
        row = await db_pool.fetchrow("SELECT state, lease_owner, attempts FROM deliveries")
        assert row is not None
        assert (row["state"], row["lease_owner"], row["attempts"]) == ("pending", None, 0)
        assert _timeouts("stop_hand_back") == timeouts + 1


class TestHungLeaseRenewal:
    async def test_a_lease_renewal_never_answered_does_not_end_the_renewals(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A row is being sent (its station slow to answer) and its lease renewed; a renewal's
        reply never comes (a half-open connection). The renewals stopped for good, and the
        lease lapsed while the row was still being sent (another engine would have sent it
        too). Bounded (a twelfth of a lease), that round is given up and tried again at once,
        before the lease ends: renewed, not claimed again."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = StallingStation(1)
        async with proxied_database(database_url) as (proxy, proxied_url):
            pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
            dispatcher = Dispatcher(pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=2.0)
            stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)], handover)
            go = proxy.hold_reply_after(b"SET lease_until = now() + $3::interval")
            timeouts = _timeouts("lease_renewal")
            dispatcher.start()
            try:
                dispatcher.adopt(handover.leased)
                await asyncio.wait_for(station.stalled.wait(), 10)
                started = await db_pool.fetchval("SELECT now()")

                await wait_until_renewed_past(db_pool, dispatcher.owner, started, 6)
                # Renewed, not claimed again once lapsed (a claim counts an attempt).
                attempts = await db_pool.fetchval("SELECT attempts FROM deliveries")
                assert attempts == 1, "the lease lapsed while the row was being sent"
                station.gate.set()
                await wait_until_delivered(db_pool, 1)
            finally:
                station.gate.set()
                go.set()
                await dispatcher.stop()
                await pool.close()
        assert station.received == [("9001", 1)]
        assert _timeouts("lease_renewal") == timeouts + 1


class StallingEveryDelivery(FakeStation):
    """Holds every delivery until ``gate`` is set (a station slow to answer them all)."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = 0
        self.gate = asyncio.Event()

    async def receive(self, account: str, event: Event) -> Attempt:
        self.stalled += 1
        await self.gate.wait()
        return await super().receive(account, event)


class TestLeaseRenewalBesideALockedRow:
    async def test_a_held_row_locked_elsewhere_does_not_stop_the_other_rows_renewals(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Two rows of two lanes are being sent; one of them is locked by another transaction
        (a failure record or an outcome of it under a loaded server, an operator in psql). The
        renewal round, one statement for every held row, waited for that lock: cut at its
        bound, tried again at once, waiting again, so the other row's lease was never renewed
        and lapsed while it was still being sent (another engine would have sent it too). The
        round renews the rows it can lock now; the locked one waits for a later round."""
        directory = await directory_with(
            db_pool, forwarding_account("A1", "9001"), forwarding_account("A2", "9002")
        )
        station = StallingEveryDelivery()
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=2.0)
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        handover = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", 1), signal("A2", 2)], handover)
        ids = {row.account: row.id for row in handover.leased}
        dispatcher.start()
        try:
            dispatcher.adopt(handover.leased)
            await wait_until(lambda: _done(station.stalled == 2))
            lock = "SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE"
            async with holding(db_pool, lock, ids["A2"]):
                started = await db_pool.fetchval("SELECT now()")

                await wait_until_renewed_past(
                    db_pool, dispatcher.owner, started, 6, row_id=ids["A1"]
                )
                attempts = await db_pool.fetchval(
                    "SELECT attempts FROM deliveries WHERE id = $1", ids["A1"]
                )
                assert attempts == 1, "the lease lapsed while the row was being sent"
            station.gate.set()
            await wait_until_delivered(db_pool, 2)
        finally:
            station.gate.set()
            await dispatcher.stop()
        assert sorted(station.received) == [("9001", 1), ("9002", 2)]


# A renewal of a lease (the row's lease_until pushed on, nothing else of the lease changed) that
# the server takes 0.7 s to run: a loaded host (both cores busy, fsync), not a connection gone.
_SLOW_RENEWALS = """
CREATE FUNCTION slow_lease_renewal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.7); RETURN NEW; END $$;
CREATE TRIGGER slow_lease_renewal BEFORE UPDATE ON deliveries FOR EACH ROW
WHEN (OLD.attempts = NEW.attempts AND OLD.lease_owner = NEW.lease_owner
      AND NEW.lease_until > OLD.lease_until)
EXECUTE FUNCTION slow_lease_renewal();
"""


class TestSlowLeaseRenewal:
    async def test_a_renewal_the_loaded_server_runs_in_700_ms_renews_the_lease(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A row is being sent (its station slow to answer); the server, loaded, takes 0.7 s
        to renew its lease. Cut at a twelfth of a lease (0.5 s) and tried again, just as slow,
        the renewal never went through and the lease lapsed mid-send (the claim loop, here or
        in another engine, took the row again). A round answered within a sixth of a lease
        is not given up."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = StallingStation(1)
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=0.05)
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        handover = Handover()
        async with db_pool.acquire() as conn:
            await commit(conn, stage, [signal("A1", 1)], handover)
        await db_pool.execute(_SLOW_RENEWALS)
        timeouts = _timeouts("lease_renewal")
        dispatcher.start()
        try:
            dispatcher.adopt(handover.leased)
            await asyncio.wait_for(station.stalled.wait(), 10)
            started = await db_pool.fetchval("SELECT now()")

            await wait_until_renewed_past(db_pool, dispatcher.owner, started, 9, timeout=20)
            attempts = await db_pool.fetchval("SELECT attempts FROM deliveries")
            assert attempts == 1, "the lease lapsed while the row was being sent"
            assert _timeouts("lease_renewal") == timeouts
        finally:
            station.gate.set()
            await dispatcher.stop()
            await db_pool.execute(
                "DROP TRIGGER slow_lease_renewal ON deliveries; DROP FUNCTION slow_lease_renewal()"
            )
        await wait_until_delivered(db_pool, 1)
        assert station.received == [("9001", 1)]


def _timeouts(work: str) -> float:
    """``alarmrelay_delivery_database_timeouts_total{work}`` so far."""
    value = REGISTRY.get_sample_value("alarmrelay_delivery_database_timeouts_total", {"work": work})
    return value or 0.0


class TestFailureReplyLost:
    async def test_a_failure_whose_commit_reply_was_lost_is_recorded_once(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The head failed; the transaction recording it committed, but the connection went
        before its reply. The retry must not record the failure a second time (the history
        would show two failed attempts for one, and the retry wait would start over)."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation(fail_zones={1})
        async with proxied_database(database_url) as (proxy, proxied_url):
            pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
            dispatcher = Dispatcher(
                pool, lambda: FakeRegistry(station), poll_s=0.05, retry_base_s=30.0
            )
            stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 1)], handover)
            dispatcher.start()
            try:
                proxy.lose_reply_after(b"COMMIT")  # only the failure's transaction commits so
                dispatcher.adopt(handover.leased)

                async def failure_recorded() -> bool:
                    return bool(
                        await db_pool.fetchval("SELECT last_error IS NOT NULL FROM deliveries")
                    )

                await wait_until(failure_recorded)
                await asyncio.sleep(1.0)  # the failure's retry
            finally:
                await dispatcher.stop()
                await pool.close()
        row = await db_pool.fetchrow(
            "SELECT jsonb_array_length(failed_attempts) AS n, lease_owner, "
            "next_attempt_at > now() + interval '20 seconds' AS waits FROM deliveries"
        )
        assert row is not None
        assert (row["n"], row["lease_owner"], row["waits"]) == (1, None, True)


class ClaimRace(NamedTuple):
    proxy: TcpProxy
    dispatcher: Dispatcher
    stage: ForwardingStage
    go: asyncio.Event  # lets the held claim reply through


@contextlib.asynccontextmanager
async def a_commit_racing_a_held_claim(
    db_pool: asyncpg.Pool, database_url: str, station: FakeStation, **dispatcher_options: Any
) -> AsyncIterator[ClaimRace]:
    """Lane A1's row 1 is committed unleased; the claim loop leases it to the dispatcher, but
    the claim's reply is held at the proxy. Meanwhile a commit sees the lane ours (its last
    pending row is leased to us), leases us row 2, and the dispatcher adopts it."""
    directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
    async with proxied_database(database_url) as (proxy, proxied_url):
        pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
        dispatcher = Dispatcher(
            pool, lambda: FakeRegistry(station), poll_s=0.05, **dispatcher_options
        )
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        async with db_pool.acquire() as conn:
            await commit(conn, ForwardingStage(directory), [signal("A1", 1)])  # unleased
        go = proxy.hold_reply_after(b"WITH heads AS")
        dispatcher.start()
        try:
            # the claim is committed; its reply is held
            await wait_until_leased_to(db_pool, dispatcher.owner)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A1", 2)], handover)
            assert [r.event.zone for r in handover.leased] == [2]  # the lane looked ours
            dispatcher.adopt(handover.leased)
            yield ClaimRace(proxy, dispatcher, stage, go)
        finally:
            go.set()
            await dispatcher.stop()
            await pool.close()


class TestClaimRacingACommit:
    async def test_a_commits_row_waits_for_a_claim_whose_reply_is_on_its_way(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The claim loop leased us a lane's head (a retry, or a row committed unleased), but
        its reply is slow to come back. Meanwhile a commit sees the lane ours (its last pending
        row is leased to us) and leases us the lane's next row. That row must not go before the
        claimed one, which the dispatcher does not know yet."""
        station = FakeStation()
        async with a_commit_racing_a_held_claim(db_pool, database_url, station) as race:
            await asyncio.sleep(0.3)
            race.go.set()

            await wait_until_delivered(db_pool, 2)
        assert station.received == [("9001", 1), ("9001", 2)]

    async def test_a_claim_whose_reply_is_lost_keeps_a_commits_row_behind_the_claimed_one(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """As above, but the claim's connection goes before its reply comes: the claim may have
        leased us the lane's head all the same (here it did). The commit's row, and a row the
        next commit leases us on the lane, must not go before it: the lane waits until the
        claimed row's lease has ended and the claim loop sends the lane in order."""
        station = FakeStation()
        async with a_commit_racing_a_held_claim(db_pool, database_url, station, lease_s=2) as race:
            race.proxy.cut()  # the claim's reply never comes
            race.proxy.restore()
            await asyncio.sleep(0.2)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, race.stage, [signal("A1", 3)], handover)
            race.dispatcher.adopt(handover.leased)

            await wait_until_delivered(db_pool, 3)
        assert station.received == [("9001", 1), ("9001", 2), ("9001", 3)]

    async def test_a_claim_never_answered_does_not_hold_the_lane_for_good(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """As above, but the claim's reply never comes and its connection is not cut either (a
        half-open connection): the claim loop, and the commit's row waiting for the claim,
        waited for good. Bounded (half a lease), the claim fails as one whose reply was lost:
        the lane waits until the claimed row's lease has ended, then goes in order."""
        station = FakeStation()
        timeouts = _timeouts("claim")
        with capture_logs() as logs:
            async with a_commit_racing_a_held_claim(
                db_pool, database_url, station, lease_s=2
            ):  # the claim's reply is never let through
                await wait_until_delivered(db_pool, 2, timeout=15)
        assert station.received == [("9001", 1), ("9001", 2)]
        assert _timeouts("claim") == timeouts + 1
        assert "outbox_claim_reply_lost" in [e["event"] for e in logs]

    async def test_rows_of_a_claim_whose_connection_broke_after_its_reply_are_sent(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The claim's reply came, then its connection broke as it went back to the pool (the
        pool's reset failed). The claimed rows are leased to us and in hand: they are sent at
        once, not left to their lease (here 30 s) as if the claim had failed."""
        directory = await directory_with(db_pool, forwarding_account("A1", "9001"))
        station = FakeStation()
        async with proxied_database(database_url) as (proxy, proxied_url):
            pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=10)
            dispatcher = Dispatcher(pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=30)
            async with db_pool.acquire() as conn:
                await commit(conn, ForwardingStage(directory), [signal("A1", 1)])  # unleased
            proxy.cut_after_reply(b"WITH heads AS", before=b"RESET ALL")
            try:
                with capture_logs() as logs:
                    dispatcher.start()
                    await wait_until_delivered(db_pool, 1, timeout=5)
            finally:
                await dispatcher.stop()
                await pool.close()
        assert station.received == [("9001", 1)]
        assert [e["event"] for e in logs if e["event"].startswith("outbox_claim")] == [
            "outbox_claim_connection_lost"
        ]

    async def test_a_commits_row_is_not_kept_waiting_by_a_release_in_flight(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A hand-back of rows to the outbox is slow to be answered, and the claim loop waits
        for it before claiming. No claim is in flight meanwhile: a row a commit leases us on
        another lane goes at once (the fast path), not after the hand-back's reply."""
        directory = await directory_with(
            db_pool, forwarding_account("A1", "9001"), forwarding_account("A2", "9002")
        )
        station = FakeStation()
        async with a_hand_back_held(db_pool, database_url, directory, station) as (
            dispatcher,
            stage,
        ):
            # The release's reply is held: it holds the claim's lock; the claim loop waits.
            await asyncio.sleep(0.3)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A2", 1)], handover)
            assert [r.event.zone for r in handover.leased] == [1]
            dispatcher.adopt(handover.leased)
            await wait_until(lambda: _done(("9002", 1) in station.received), timeout=1)

    async def test_a_claim_whose_rows_cannot_be_read_does_not_hold_up_the_fast_path(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A claimed row the engine cannot read (here an event it cannot decode) is set aside
        (see TestUnreadableRow). Rows commits hand over afterwards are sent at once, as outside
        a claim, not after the next claim (here a poll, 1 s, later)."""
        directory = await directory_with(
            db_pool, forwarding_account("A1", "9001"), forwarding_account("A2", "9002")
        )
        station = FakeStation()
        dispatcher = Dispatcher(db_pool, lambda: FakeRegistry(station), poll_s=1.0)
        stage = ForwardingStage(directory, owner=dispatcher.owner, lease_s=dispatcher.lease_s)
        async with db_pool.acquire() as conn:
            await commit(conn, ForwardingStage(directory), [signal("A1", 1)])  # unleased
        await db_pool.execute("""UPDATE deliveries SET event = '{"family": "no such family"}'""")
        dispatcher.start()
        try:

            async def set_aside() -> bool:
                return bool(await db_pool.fetchval("SELECT last_error IS NOT NULL FROM deliveries"))

            await wait_until(set_aside)
            handover = Handover()
            async with db_pool.acquire() as conn:
                await commit(conn, stage, [signal("A2", 1)], handover)
            assert [r.event.zone for r in handover.leased] == [1]
            dispatcher.adopt(handover.leased)
            await wait_until(lambda: _done(station.received == [("9002", 1)]), timeout=0.5)
        finally:
            await dispatcher.stop()


class TestUnreadableRow:
    async def test_a_claimed_row_that_cannot_be_read_is_set_aside_and_the_rest_delivered(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A claim brings a row this engine cannot read (an event it cannot decode) with rows
        of other lanes: those are sent at once (not after their lease, here 30 s); the row is
        recorded as a failed attempt with the reason in its history and waits for a retry,
        unleased, and the row queued behind it in its lane waits behind it."""
        directory = await directory_with(
            db_pool, forwarding_account("A1", "9001"), forwarding_account("A2", "9002")
        )
        station = FakeStation()
        dispatcher = Dispatcher(
            db_pool, lambda: FakeRegistry(station), poll_s=0.05, lease_s=30.0, retry_base_s=30.0
        )
        async with db_pool.acquire() as conn:
            await commit(  # unleased: for the claim loop
                conn, ForwardingStage(directory), [signal("A1", 1), signal("A1", 2)]
            )
            await commit(conn, ForwardingStage(directory), [signal("A2", 1)])
        unreadable = await db_pool.fetchval(
            """UPDATE deliveries SET event = '{"family": "no such family"}'
               WHERE id = (SELECT min(id) FROM deliveries WHERE station_account = '9001')
               RETURNING id"""
        )
        counted = REGISTRY.get_sample_value("alarmrelay_deliveries_unreadable_total") or 0.0
        dispatcher.start()
        try:
            with capture_logs() as logs:

                async def set_aside() -> bool:
                    return bool(
                        await db_pool.fetchval(
                            "SELECT last_error IS NOT NULL FROM deliveries WHERE id = $1",
                            unreadable,
                        )
                    )

                await wait_until_delivered(db_pool, 1, timeout=5)
                await wait_until(set_aside, timeout=5)
        finally:
            await dispatcher.stop()
        assert station.received == [("9002", 1)]
        rows = await db_pool.fetch(
            "SELECT id, state, lease_owner, attempts, last_error, failed_attempts, "
            "next_attempt_at > now() + interval '20 seconds' AS waits "
            "FROM deliveries WHERE station_account = '9001' ORDER BY id"
        )
        bad, behind = rows
        assert (bad["id"], bad["state"], bad["lease_owner"], bad["attempts"], bad["waits"]) == (
            unreadable,
            "pending",
            None,
            1,
            True,
        )
        assert "cannot read the delivery" in bad["last_error"]
        [entry] = msgspec.json.decode(bad["failed_attempts"])
        assert entry["receiver"] == "rx" and "cannot read the delivery" in entry["error"]
        assert (behind["state"], behind["lease_owner"], behind["attempts"]) == ("pending", None, 0)
        assert REGISTRY.get_sample_value("alarmrelay_deliveries_unreadable_total") == counted + 1
        [event] = [e for e in logs if e["event"] == "delivery_unreadable"]
        assert event["delivery"] == unreadable
