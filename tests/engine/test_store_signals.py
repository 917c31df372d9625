"""engine/store/signals.py: the group-commit batch insert against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from engine.account_model import Account
from engine.ingest_types import InboundSignal, IngestResult, SignalKind, Transport
from engine.store.accounts import AccountStore
from engine.store.signals import StoredSignal, insert_signals, insert_signals_returning
from protocols.signal import Category, Classification, Event, Family, XData

WINDOW_S = 600
T0 = datetime.now(UTC).replace(microsecond=0)
BURGLARY = Event(
    family=Family.CID,
    code="130",
    qualifier="1",
    zone=3,
    partition=1,
    classification=Classification(category=Category.ALARMS),
)
OPENING = Event(
    family=Family.CID,
    code="401",
    qualifier="1",
    partition=1,
    user=2,
    classification=Classification(category=Category.ARMING),
)


def event(
    account: str = "1234", seq: str = "0001", *, at: datetime = T0, key: str | None = "auto"
) -> InboundSignal:
    return InboundSignal(
        account=account,
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=at,
        peer="192.0.2.7:40000",
        events=(BURGLARY,),
        raw=b'\n1234005A"ADM-CID"0001R1L1#1234[#1234|1130 01 003]\r',
        token="ADM-CID",
        seq=seq,
        receiver="1",
        line="1",
        dedupe_key=f"{account}:{seq}:130" if key == "auto" else key,
    )


def contact(kind: SignalKind, account: str = "1234", *, at: datetime = T0) -> InboundSignal:
    return InboundSignal(account=account, transport=Transport.MQTT, kind=kind, received_at=at)


def rejected(account: str = "1234", *, at: datetime = T0) -> InboundSignal:
    return InboundSignal(
        account=account,
        transport=Transport.MQTT,
        kind=SignalKind.REJECTED,
        received_at=at,
        raw=b"{not json",
        reject_reason="payload is not JSON",
        dedupe_key="mqtt:S1:1",
    )


async def store(pool: asyncpg.Pool, signals: Sequence[InboundSignal]) -> list[StoredSignal]:
    async with pool.acquire() as conn, conn.transaction():
        return await insert_signals_returning(conn, signals, duplicate_window_s=WINDOW_S)


@pytest.fixture
async def pool(db_pool: asyncpg.Pool) -> asyncpg.Pool:
    await AccountStore(db_pool).upsert_many([Account(account="1234"), Account(account="5678")])
    return db_pool


class TestBatch:
    async def test_results_follow_input_order(self, pool: asyncpg.Pool) -> None:
        """Each signal of a mixed batch gets its own result, in input order."""
        batch = [
            event(seq="0001"),
            contact(SignalKind.LINK_TEST),
            rejected(),
            contact(SignalKind.CHECKIN, "5678"),
            event(seq="0001"),
            event("5678", seq="0002"),
        ]
        async with pool.acquire() as conn, conn.transaction():
            results = await insert_signals(conn, batch, duplicate_window_s=WINDOW_S)
        assert results == [
            IngestResult.ACCEPTED,
            IngestResult.ACCEPTED,
            IngestResult.REJECTED,
            IngestResult.ACCEPTED,
            IngestResult.DUPLICATE,
            IngestResult.ACCEPTED,
        ]
        assert await pool.fetchval("SELECT count(*) FROM signals") == 3

    async def test_event_is_stored_with_every_field(self, pool: asyncpg.Pool) -> None:
        """A stored event keeps the raw frame, parsed fields, events as msgspec JSON and categories."""
        signal = msgspec.structs.replace(
            event(),
            events=(BURGLARY, OPENING),
            xdata=(XData(id="K", value="7"),),
            sent_at=T0 - timedelta(seconds=3),
            encrypted=True,
            dialer_failed=True,
        )
        [stored] = await store(pool, [signal])
        row = await pool.fetchrow("SELECT * FROM signals WHERE id = $1", stored.signal_id)
        assert row is not None
        assert row["received_at"] == T0
        assert (row["account"], row["transport"], row["kind"]) == ("1234", "tcp", "event")
        assert (row["token"], row["seq"], row["receiver"], row["line"]) == (
            "ADM-CID",
            "0001",
            "1",
            "1",
        )
        assert row["raw"] == signal.raw
        assert row["peer"] == "192.0.2.7:40000"
        assert row["encrypted"] is True
        assert row["dialer_failed"] is True
        assert row["sent_at"] == T0 - timedelta(seconds=3)
        assert msgspec.json.decode(row["events"], type=list[Event]) == [BURGLARY, OPENING]
        assert row["categories"] == ["alarms", "arming"]
        assert msgspec.json.decode(row["xdata"], type=list[XData]) == [XData(id="K", value="7")]
        assert row["duplicates"] == 0
        assert row["reject_reason"] is None
        assert row["committed_at"] is not None

    async def test_rejected_payload_is_stored_for_audit(self, pool: asyncpg.Pool) -> None:
        """A rejected payload is a row of kind 'rejected' with its reason and raw bytes."""
        [stored] = await store(pool, [rejected()])
        assert stored.result is IngestResult.REJECTED
        row = await pool.fetchrow("SELECT kind, reject_reason, raw FROM signals")
        assert row is not None
        assert dict(row) == {
            "kind": "rejected",
            "reject_reason": "payload is not JSON",
            "raw": b"{not json",
        }

    async def test_rejected_payloads_are_never_deduplicated(self, pool: asyncpg.Pool) -> None:
        """Two rejected payloads with one key are both kept (audit keeps everything)."""
        results = [s.result for s in await store(pool, [rejected(), rejected()])]
        assert results == [IngestResult.REJECTED, IngestResult.REJECTED]
        assert await pool.fetchval("SELECT count(*) FROM signals") == 2

    async def test_empty_batch(self, pool: asyncpg.Pool) -> None:
        """An empty batch does nothing and returns nothing."""
        assert await store(pool, []) == []

    async def test_large_batch(self, pool: asyncpg.Pool) -> None:
        """A batch of 2,000 signals is written whole by one call."""
        batch = [event(seq=f"{i:04d}", at=T0 + timedelta(microseconds=i)) for i in range(2000)]
        results = await store(pool, batch)
        assert {s.result for s in results} == {IngestResult.ACCEPTED}
        assert len({s.signal_id for s in results}) == 2000
        assert await pool.fetchval("SELECT count(*) FROM signals") == 2000

    async def test_rollback_of_the_callers_transaction_keeps_nothing(
        self, pool: asyncpg.Pool
    ) -> None:
        """The insert joins the caller's transaction: a rollback leaves no trace."""
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await insert_signals(
                conn, [event(), contact(SignalKind.LINK_TEST)], duplicate_window_s=WINDOW_S
            )
            await transaction.rollback()
        assert await pool.fetchval("SELECT count(*) FROM signals") == 0
        assert await pool.fetchval("SELECT count(*) FROM signal_dedupe") == 0
        assert await AccountStore(pool).contact_times("1234") == (None, None)


class TestDuplicates:
    async def test_duplicate_in_a_later_batch_is_stored_once(self, pool: asyncpg.Pool) -> None:
        """A resent frame is DUPLICATE, points at the original, and bumps its counter."""
        [original] = await store(pool, [event()])
        [again] = await store(pool, [event(at=T0 + timedelta(seconds=30))])
        assert again.result is IngestResult.DUPLICATE
        assert again.signal_id == original.signal_id
        rows = await pool.fetch("SELECT id, duplicates FROM signals")
        assert [(r["id"], r["duplicates"]) for r in rows] == [(original.signal_id, 1)]

    async def test_copies_inside_one_batch(self, pool: asyncpg.Pool) -> None:
        """Three copies in one batch: the first is stored, the others are its duplicates."""
        results = await store(pool, [event(), event(), event()])
        assert [r.result for r in results] == [
            IngestResult.ACCEPTED,
            IngestResult.DUPLICATE,
            IngestResult.DUPLICATE,
        ]
        assert {r.signal_id for r in results} == {results[0].signal_id}
        assert await pool.fetchval("SELECT duplicates FROM signals") == 2

    async def test_copies_in_a_batch_of_an_earlier_original(self, pool: asyncpg.Pool) -> None:
        """Two copies of an already stored signal in one batch both count on the original."""
        [original] = await store(pool, [event()])
        results = await store(pool, [event(), event("5678", seq="0009"), event()])
        assert [r.result for r in results] == [
            IngestResult.DUPLICATE,
            IngestResult.ACCEPTED,
            IngestResult.DUPLICATE,
        ]
        assert results[2].signal_id == original.signal_id
        assert (
            await pool.fetchval("SELECT duplicates FROM signals WHERE id = $1", original.signal_id)
            == 2
        )

    async def test_after_the_window_it_is_a_new_signal(self, pool: asyncpg.Pool) -> None:
        """The same key once the window has passed is stored again as a new signal."""
        [first] = await store(pool, [event()])
        [second] = await store(pool, [event(at=T0 + timedelta(seconds=WINDOW_S + 1))])
        assert second.result is IngestResult.ACCEPTED
        assert second.signal_id != first.signal_id
        assert await pool.fetchval("SELECT count(*) FROM signals") == 2
        [third] = await store(pool, [event(at=T0 + timedelta(seconds=WINDOW_S + 2))])
        assert third.signal_id == second.signal_id

    async def test_a_longer_window_of_its_own_holds_the_key_longer(
        self, pool: asyncpg.Pool
    ) -> None:
        """A signal whose key carries its own window (an MQTT message: the broker may deliver it
        again up to the session expiry later) is still the original after the batch's window;
        a window shorter than the batch's does not shorten it."""
        own = msgspec.structs.replace(event(), dedupe_window_s=3600)
        [first] = await store(pool, [own])
        [again] = await store(pool, [event(at=T0 + timedelta(seconds=WINDOW_S + 600))])
        assert again.result is IngestResult.DUPLICATE
        assert again.signal_id == first.signal_id
        [after] = await store(pool, [event(at=T0 + timedelta(seconds=3601))])
        assert after.result is IngestResult.ACCEPTED
        short = msgspec.structs.replace(
            event(key="other", at=T0 + timedelta(seconds=3601)), dedupe_window_s=10
        )
        [held] = await store(pool, [short])
        [copy] = await store(pool, [event(key="other", at=T0 + timedelta(seconds=3601 + 300))])
        assert (held.result, copy.result) == (IngestResult.ACCEPTED, IngestResult.DUPLICATE)
        assert await pool.fetchval("SELECT count(*) FROM signals") == 3

    async def test_signals_without_key_are_never_duplicates(self, pool: asyncpg.Pool) -> None:
        """Without a dedupe key every copy is stored."""
        results = await store(pool, [event(key=None), event(key=None)])
        assert [r.result for r in results] == [IngestResult.ACCEPTED, IngestResult.ACCEPTED]
        assert await pool.fetchval("SELECT count(*) FROM signals") == 2


class TestConcurrentEngines:
    async def test_same_frame_committed_by_two_engines_is_stored_once(
        self, pool: asyncpg.Pool
    ) -> None:
        """Two transactions inserting one dedupe key: the later waits, then is counted as DUPLICATE."""
        async with pool.acquire() as first, pool.acquire() as second:
            first_tx = first.transaction()
            await first_tx.start()
            [mine] = await insert_signals_returning(first, [event()], duplicate_window_s=WINDOW_S)

            async def other_engine() -> list[StoredSignal]:
                async with second.transaction():
                    return await insert_signals_returning(
                        second, [event(at=T0 + timedelta(seconds=1))], duplicate_window_s=WINDOW_S
                    )

            task = asyncio.create_task(other_engine())
            while not await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ):
                await asyncio.sleep(0.01)
            await first_tx.commit()
            [theirs] = await task
        assert mine.result is IngestResult.ACCEPTED
        assert theirs.result is IngestResult.DUPLICATE
        assert theirs.signal_id == mine.signal_id
        assert await pool.fetchval("SELECT count(*) FROM signals") == 1
        assert await pool.fetchval("SELECT duplicates FROM signals") == 1


class TestContact:
    async def test_link_tests_and_checkins_only_touch_contact(self, pool: asyncpg.Pool) -> None:
        """Link tests and check-ins are not stored but move the account's last contact."""
        later = T0 + timedelta(seconds=10)
        results = await store(
            pool, [contact(SignalKind.LINK_TEST, at=T0), contact(SignalKind.CHECKIN, at=later)]
        )
        assert [(r.result, r.signal_id) for r in results] == [
            (IngestResult.ACCEPTED, None),
            (IngestResult.ACCEPTED, None),
        ]
        assert await pool.fetchval("SELECT count(*) FROM signals") == 0
        assert await AccountStore(pool).contact_times("1234") == (T0, later)

    async def test_events_and_duplicates_count_as_contact(self, pool: asyncpg.Pool) -> None:
        """Every valid signal, a duplicate too, is contact; the latest time wins."""
        await store(pool, [event()])
        later = T0 + timedelta(seconds=20)
        await store(pool, [event(at=later)])
        assert await AccountStore(pool).contact_times("1234") == (T0, later)

    async def test_rejected_payloads_are_not_contact(self, pool: asyncpg.Pool) -> None:
        """A rejected payload does not count as the module being alive."""
        await store(pool, [rejected()])
        assert await AccountStore(pool).contact_times("1234") == (None, None)

    async def test_unknown_account_is_stored_without_contact(self, pool: asyncpg.Pool) -> None:
        """A signal for an account not in the table is stored; no account row appears."""
        [stored] = await store(pool, [event("FFFF")])
        assert stored.result is IngestResult.ACCEPTED
        assert await AccountStore(pool).contact_times("FFFF") is None
