"""A row of one account held by another transaction (psql, a stuck admin call, a migration):
the group commit that writes it must not hold back the other accounts of its batch.

Real PostgreSQL: the engine's writer (forwarding and supervision stages as ``serve`` runs them)
behind the group-commit pipeline, and a second connection holding the row lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.delivery_lane import lane_for
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import (
    InboundSignal,
    IngestResult,
    IngestUnavailable,
    SignalKind,
    Transport,
)
from engine.ingest_writer import IngestWriter
from engine.pipeline import IngestPipeline
from engine.store.accounts import AccountStore
from engine.store.ingest_batch import INGEST_LOCK_TIMEOUT
from engine.supervision import SupervisionStage
from protocols.signal import Category, Classification, Event, Family
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule
from tests.support.row_holder import HOLD_LANE_SQL, holding

LOCKED = "L0001"
OTHERS = [f"A000{n}" for n in range(1, 6)]
# Longer than the writer's lock timeout, so that a batch that waits for it is seen waiting.
COMMAND_TIMEOUT_S = 5.0

# How long a held account's signals are tried apart (the engine's default is 5 s).
HELD_WAIT_S = 1.0

_seq = iter(range(1, 10_000))


def _alarm() -> Event:
    return Event(
        family=Family.CID,
        code="130",
        qualifier="1",
        zone=1,
        partition=1,
        classification=Classification(category=Category.ALARMS),
    )


def _signal(account: str) -> InboundSignal:
    seq = next(_seq)
    return InboundSignal(
        account=account,
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=datetime.now(UTC),
        events=(_alarm(),),
        token="ADM-CID",
        seq=f"{seq:04d}",
        dedupe_key=f"{account}:{seq}",
    )


def _account(number: str, mode: ForwardingMode) -> Account:
    return Account(
        account=number,
        forwarding=ForwardingSettings(
            mode=mode, station_account="9" + number, primary_receiver="rx"
        ),
    )


def _locked_total() -> float:
    return REGISTRY.get_sample_value("alarmrelay_ingest_account_locked_total") or 0.0


@pytest.fixture
async def engine_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        database_url, min_size=2, max_size=6, command_timeout=COMMAND_TIMEOUT_S
    )
    assert pool is not None
    yield pool
    await pool.close()


async def _pipeline(
    db_pool: asyncpg.Pool,
    engine_pool: asyncpg.Pool,
    mode: ForwardingMode,
    *,
    more: Sequence[str] = (),
    held_wait_s: float = HELD_WAIT_S,
) -> IngestPipeline:
    accounts = [_account(LOCKED, mode)] + [
        _account(a, ForwardingMode.ALWAYS) for a in [*OTHERS, *more]
    ]
    await AccountStore(db_pool).upsert_many(accounts)
    directory = AccountDirectory()
    directory.load(accounts)
    writer = IngestWriter(
        engine_pool,
        duplicate_window_s=600,
        forwarding=ForwardingStage(directory),
        supervision=SupervisionStage(directory, grace_s=60),
    )
    pipeline = IngestPipeline(
        writer,
        window_s=0,
        probe=lambda: engine_pool.fetchval("SELECT 1"),
        held_wait_s=held_wait_s,
        held_check=writer.held_accounts,
    )
    pipeline.start()
    # Every account's rows exist (supervision, phone-line state), as after a first contact.
    first = [pipeline.enqueue(_signal(a)) for a in [LOCKED, *OTHERS, *more]]
    assert await asyncio.gather(*first) == [IngestResult.ACCEPTED] * len(first)
    return pipeline


async def _the_others_are_committed_the_held_one_not(pipeline: IngestPipeline) -> None:
    """Two batches, the first to meet the lock and a later one, each with a signal of the held
    account and one of every other: the others are committed and ACKed, the held one not."""
    for _ in range(2):
        held = pipeline.enqueue(_signal(LOCKED))
        others = [pipeline.enqueue(_signal(a)) for a in OTHERS]
        results = await asyncio.wait_for(asyncio.gather(*others), 3.0)
        assert results == [IngestResult.ACCEPTED] * len(OTHERS)
        with pytest.raises(IngestUnavailable):
            await asyncio.wait_for(held, 3.0)


class TestAnAccountRowLockedElsewhere:
    @pytest.mark.parametrize(
        ("table", "mode"),
        [
            # every contact moves the account's supervision deadline (the fast path)
            ("supervision", ForwardingMode.ALWAYS),
            # an 'only if the phone line fails' account's batch locks its phone-line state
            ("account_state", ForwardingMode.PHONE_LINE_FAILURE),
        ],
    )
    async def test_the_other_accounts_of_its_batches_are_acked_at_once(
        self,
        db_pool: asyncpg.Pool,
        engine_pool: asyncpg.Pool,
        table: str,
        mode: ForwardingMode,
    ) -> None:
        """With one account's row held by a transaction left open elsewhere, the other accounts'
        signals in the same batches are committed and ACKed without waiting for it (they waited
        for database.command_timeout_s and were then NAKed with it, batch after batch); the held
        account's signals are not ACKed (not committed: its module resends) and are committed
        once the row is free; the account is named in a log event and counted."""
        pipeline = await _pipeline(db_pool, engine_pool, mode)
        before = _locked_total()
        try:
            with capture_logs() as logs:
                async with db_pool.acquire() as holder, holder.transaction():
                    await holder.execute(
                        f"SELECT 1 FROM {table} WHERE account = $1 FOR UPDATE",
                        LOCKED,
                    )
                    await _the_others_are_committed_the_held_one_not(pipeline)
                    # Once the account is known held, its signals no longer delay the others.
                    held = pipeline.enqueue(_signal(LOCKED))
                    others = [pipeline.enqueue(_signal(a)) for a in OTHERS]
                    await asyncio.wait_for(asyncio.gather(*others), 3.0)
                    assert not held.done()
                    with pytest.raises(IngestUnavailable):
                        await asyncio.wait_for(held, 3.0)
                # The row is free: the account's next signal is committed.
                assert await pipeline.submit(_signal(LOCKED)) is IngestResult.ACCEPTED
        finally:
            await pipeline.close()
        counts = dict(await db_pool.fetch("SELECT account, count(*) FROM signals GROUP BY account"))
        assert counts == {LOCKED: 2} | dict.fromkeys(OTHERS, 4)
        assert _locked_total() - before == 3
        named = [e for e in logs if e["event"] == "ingest_account_locked"]
        assert named
        assert {e["account"] for e in named} == {LOCKED}
        assert pipeline.available and pipeline.healthy

    async def test_an_account_whose_delivery_lane_is_held_does_not_hold_back_the_others(
        self, db_pool: asyncpg.Pool, engine_pool: asyncpg.Pool
    ) -> None:
        """The lane of one account's alarms held elsewhere (its advisory lock: a dispatcher
        recording a failure while it waits for a row held in psql): the other accounts' signals
        in the same batches are committed and ACKed (the batch was tried twice and then not
        ACKed at all, batch after batch, the held rows probe seeing no row held); the account
        is set aside, its signals not ACKed while the lane is held and committed once free."""
        pipeline = await _pipeline(db_pool, engine_pool, ForwardingMode.ALWAYS)
        try:
            with capture_logs() as logs:
                async with holding(db_pool, HOLD_LANE_SQL, lane_for("9" + LOCKED, "rx")):
                    await _the_others_are_committed_the_held_one_not(pipeline)
                assert await pipeline.submit(_signal(LOCKED)) is IngestResult.ACCEPTED
        finally:
            await pipeline.close()
        counts = dict(await db_pool.fetch("SELECT account, count(*) FROM signals GROUP BY account"))
        assert counts == {LOCKED: 2} | dict.fromkeys(OTHERS, 3)
        named = [e for e in logs if e["event"] == "ingest_account_locked"]
        assert named
        assert {e["account"] for e in named} == {LOCKED}

    async def test_its_signals_are_committed_in_order_once_the_row_is_free(
        self, db_pool: asyncpg.Pool, engine_pool: asyncpg.Pool
    ) -> None:
        """A row held for less than the held account's wait: its signals, set aside, are
        committed (ACKed) once the row is free, in their order, and the account then rejoins
        the group commits."""
        pipeline = await _pipeline(db_pool, engine_pool, ForwardingMode.ALWAYS)
        try:
            async with db_pool.acquire() as holder:
                transaction = holder.transaction()
                await transaction.start()
                await holder.execute(
                    "SELECT 1 FROM supervision WHERE account = $1 FOR UPDATE", LOCKED
                )
                held = [pipeline.enqueue(_signal(LOCKED)) for _ in range(2)]
                others = [pipeline.enqueue(_signal(a)) for a in OTHERS]
                await asyncio.wait_for(asyncio.gather(*others), 3.0)
                later = pipeline.enqueue(_signal(LOCKED))  # behind the two set aside
                await asyncio.sleep(0.2)
                await transaction.rollback()
            results = await asyncio.wait_for(asyncio.gather(*held, later), 3.0)
            assert results == [IngestResult.ACCEPTED] * 3
            assert await asyncio.wait_for(pipeline.submit(_signal(LOCKED)), 1.0) is (
                IngestResult.ACCEPTED
            )
        finally:
            await pipeline.close()
        seqs = await db_pool.fetch("SELECT seq FROM signals WHERE account = $1 ORDER BY id", LOCKED)
        assert [int(r["seq"]) for r in seqs] == sorted(int(r["seq"]) for r in seqs)
        assert len(seqs) == 5
        assert REGISTRY.get_sample_value("alarmrelay_ingest_accounts_held") == 0

    async def test_a_table_held_briefly_fails_nobody(
        self, db_pool: asyncpg.Pool, engine_pool: asyncpg.Pool
    ) -> None:
        """A lock on something else than an account's rows (the signals table, held by a
        partition change or a migration for a little longer than the lock timeout): no account
        is set aside, the batch is tried once more and committed."""
        pipeline = await _pipeline(db_pool, engine_pool, ForwardingMode.ALWAYS)
        try:
            with capture_logs() as logs:
                async with db_pool.acquire() as holder:
                    transaction = holder.transaction()
                    await transaction.start()
                    await holder.execute("LOCK TABLE signals IN ACCESS EXCLUSIVE MODE")
                    waiting = [pipeline.enqueue(_signal(a)) for a in [LOCKED, *OTHERS]]
                    await asyncio.sleep(0.7)  # past the lock timeout, within the second try
                    await transaction.rollback()
                results = await asyncio.wait_for(asyncio.gather(*waiting), 3.0)
            assert results == [IngestResult.ACCEPTED] * len(waiting)
        finally:
            await pipeline.close()
        assert not [e for e in logs if e["event"] == "ingest_account_locked"]


HELD = [f"H00{n}" for n in range(1, 9)]


async def _hold_supervision(conn: asyncpg.Connection, accounts: Sequence[str]) -> None:
    await conn.execute(
        "SELECT 1 FROM supervision WHERE account = ANY($1::text[]) FOR UPDATE", list(accounts)
    )


async def _waiting_for_locks(db_pool: asyncpg.Pool) -> int:
    return int(
        await db_pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


class TestSeveralAccountsHeld:
    async def test_their_signals_are_answered_within_the_held_wait(
        self, db_pool: asyncpg.Pool, engine_pool: asyncpg.Pool
    ) -> None:
        """With the rows of eight accounts held, each of their signals set aside is answered
        (not ACKed) once it has waited held_wait_s, not after a turn of every held account:
        the accounts were tried one after the other, each try waiting out the lock timeout, so
        a signal waited about 0.5 s per held account before even its first try."""
        pipeline = await _pipeline(db_pool, engine_pool, ForwardingMode.ALWAYS, more=HELD)
        try:
            async with db_pool.acquire() as holder, holder.transaction():
                await _hold_supervision(holder, HELD)
                waiting = [pipeline.enqueue(_signal(a)) for a in HELD]
                started = time.monotonic()
                results = await asyncio.wait_for(
                    asyncio.gather(*waiting, return_exceptions=True), 3.0
                )
                assert all(isinstance(r, IngestUnavailable) for r in results), results
                # the lock timeout, the held wait, and a look at the rows
                assert time.monotonic() - started < 0.5 + HELD_WAIT_S + 0.5
        finally:
            await pipeline.close()

    async def test_an_account_whose_row_is_freed_is_committed_at_once(
        self, db_pool: asyncpg.Pool, engine_pool: asyncpg.Pool
    ) -> None:
        """Of eight held accounts, the one whose row is freed first has its signal committed
        (ACKed) at once, not once the seven others' rows were each waited for in turn."""
        pipeline = await _pipeline(
            db_pool, engine_pool, ForwardingMode.ALWAYS, more=HELD, held_wait_s=30.0
        )
        try:
            async with db_pool.acquire() as holder, holder.transaction():
                await _hold_supervision(holder, HELD[:-1])
                async with db_pool.acquire() as brief:
                    transaction = brief.transaction()
                    await transaction.start()
                    await _hold_supervision(brief, HELD[-1:])
                    waiting = [pipeline.enqueue(_signal(a)) for a in HELD]
                    await asyncio.sleep(1.0)  # set aside, each tried
                    await transaction.rollback()
                freed = waiting[-1]
                await asyncio.wait_for(asyncio.shield(freed), 1.0)
                assert freed.result() is IngestResult.ACCEPTED
                assert not any(w.done() for w in waiting[:-1])
        finally:
            await pipeline.close()

    async def test_no_connection_waits_on_the_held_rows_meanwhile(
        self, db_pool: asyncpg.Pool, engine_pool: asyncpg.Pool
    ) -> None:
        """While a held account's signals wait aside, the engine looks at its rows without
        waiting for them: no connection of the pool sits in the row's lock queue (each try
        took one for the lock timeout, back to back, from a pool sized for the commit writers,
        delivery and the timers)."""
        pipeline = await _pipeline(
            db_pool, engine_pool, ForwardingMode.ALWAYS, more=HELD, held_wait_s=30.0
        )
        try:
            async with db_pool.acquire() as holder, holder.transaction():
                await _hold_supervision(holder, HELD)
                waiting = [pipeline.enqueue(_signal(a)) for a in HELD]
                await asyncio.sleep(1.5)  # the batch met the lock, and set them aside
                samples = []
                for _ in range(10):
                    samples.append(await _waiting_for_locks(db_pool))
                    await asyncio.sleep(0.05)
                assert samples == [0] * 10
                assert not any(w.done() for w in waiting)
        finally:
            await pipeline.close()


class TestARowFreedAfterItsSignalsFailed:
    async def test_the_account_is_no_longer_counted_held(
        self, db_pool: asyncpg.Pool, engine_pool: asyncpg.Pool
    ) -> None:
        """An account whose set-aside signals all failed (held too long) and whose module sends
        nothing more (it resent to another engine, or waits for its next test report) is
        released once its row is free: it stayed counted in alarmrelay_ingest_accounts_held,
        with no ingest_account_released, until it next sent a signal, hours later maybe."""
        pipeline = await _pipeline(db_pool, engine_pool, ForwardingMode.ALWAYS, held_wait_s=0.3)
        try:
            with capture_logs() as logs:
                async with db_pool.acquire() as holder, holder.transaction():
                    await _hold_supervision(holder, [LOCKED])
                    with pytest.raises(IngestUnavailable):
                        await asyncio.wait_for(pipeline.enqueue(_signal(LOCKED)), 3.0)
                    assert REGISTRY.get_sample_value("alarmrelay_ingest_accounts_held") == 1
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and not any(
                    e["event"] == "ingest_account_released" for e in logs
                ):
                    await asyncio.sleep(0.05)
            released = [e for e in logs if e["event"] == "ingest_account_released"]
            assert [e["account"] for e in released] == [LOCKED]
            assert REGISTRY.get_sample_value("alarmrelay_ingest_accounts_held") == 0
        finally:
            await pipeline.close()


class TestOverDc09:
    async def test_the_other_modules_get_their_acks_and_the_held_one_its_own_later(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Through the engine as ``serve`` runs it, over real TCP connections: with module
        1234's supervision row held elsewhere, the modules of other accounts sharing its commit
        writer get their ACKs at once (they came after the default 10 s statement timeout,
        with a NAK for any of them in 1234's batch); 1234 gets its ACK once the row is free."""
        numbers = ["1234", "2001", "2002", "2003"]
        await AccountStore(db_pool).upsert_many([Account(account=a) for a in numbers])
        settings = settings_for(database_url)
        settings = msgspec.structs.replace(
            settings, database=msgspec.structs.replace(settings.database, commit_writers=1)
        )
        async with running_engine(settings) as engine:
            assert engine.dc09 is not None
            modules = [Dc09TcpModule("127.0.0.1", engine.dc09.port, account=a) for a in numbers]
            for module in modules:
                await module.connect()
                assert await module.send("ADM-CID", f"#{module.account}|1602 00 000")
            held, others = modules[0], modules[1:]
            async with db_pool.acquire() as holder:
                transaction = holder.transaction()
                await transaction.start()
                await holder.execute("SELECT 1 FROM supervision WHERE account = '1234' FOR UPDATE")
                waiting = asyncio.ensure_future(
                    held.send("ADM-CID", "#1234|1130 01 003", timeout=8)
                )
                await asyncio.sleep(0.1)  # its commit waits for the row
                started = time.monotonic()
                replies = await asyncio.gather(
                    *(m.send("ADM-CID", f"#{m.account}|1130 01 003", timeout=3) for m in others)
                )
                assert all(r is not None and b'"ACK"' in r for r in replies), replies
                assert time.monotonic() - started < 2.0
                assert not waiting.done()
                await transaction.rollback()
            reply = await waiting
            assert reply is not None and b'"ACK"' in reply
            for module in modules:
                await module.close()
        counts = dict(await db_pool.fetch("SELECT account, count(*) FROM signals GROUP BY account"))
        assert counts == dict.fromkeys(numbers, 2)


class TestTheLockTimeout:
    async def test_the_function_waits_as_long_as_the_engine_says(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """ingest_batch's own lock_timeout (migration 0545) is INGEST_LOCK_TIMEOUT, which the
        writer's transactions that lock rows before the call use too."""
        config = await db_pool.fetchval(
            "SELECT proconfig FROM pg_proc WHERE proname = 'ingest_batch'"
        )
        assert f"lock_timeout={INGEST_LOCK_TIMEOUT}" in config
        assert "enable_seqscan=off" in config
