"""Group-commit pipeline behaviour (batching, shedding, database loss) with in-test batch writers.

The writers here are our own BatchWriter interface; the PostgreSQL-backed writer is exercised in
test_ingest_e2e.py against the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import pytest
from prometheus_client import REGISTRY

from engine.account_model import Account
from engine.ingest_types import (
    AccountsHeld,
    InboundSignal,
    IngestResult,
    IngestUnavailable,
    SignalKind,
    Transport,
)
from engine.ingest_writer import IngestWriter
from engine.pipeline import IngestPipeline
from engine.store.accounts import AccountStore


def _signal(n: int) -> InboundSignal:
    return InboundSignal(
        account=f"{n:04d}",
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        seq=f"{n % 10000:04d}",
    )


class RecordingWriter:
    def __init__(self, *, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        if self.gate is not None:
            await self.gate.wait()
        self.batches.append([s.account for s in signals])
        return [IngestResult.ACCEPTED] * len(signals)


class TestGroupCommit:
    async def test_concurrent_signals_share_a_commit(self) -> None:
        """Signals submitted while a commit runs are committed together, in submission order."""
        gate = asyncio.Event()
        writer = RecordingWriter(gate=gate)
        pipeline = IngestPipeline(writer, batch_max=64, window_s=0)
        pipeline.start()
        tasks = [asyncio.create_task(pipeline.submit(_signal(i))) for i in range(50)]
        await asyncio.sleep(0.01)
        gate.set()
        results = await asyncio.gather(*tasks)
        await pipeline.close()
        assert results == [IngestResult.ACCEPTED] * 50
        flat = [acct for batch in writer.batches for acct in batch]
        assert flat == [f"{i:04d}" for i in range(50)]
        assert len(writer.batches) <= 2

    async def test_batches_respect_the_size_bound(self) -> None:
        """No batch is larger than batch_max."""
        gate = asyncio.Event()
        writer = RecordingWriter(gate=gate)
        pipeline = IngestPipeline(writer, batch_max=8, window_s=0)
        pipeline.start()
        tasks = [asyncio.create_task(pipeline.submit(_signal(i))) for i in range(30)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*tasks)
        await pipeline.close()
        assert max(len(b) for b in writer.batches) == 8
        assert sum(len(b) for b in writer.batches) == 30

    async def test_result_arrives_only_after_the_writer_returns(self) -> None:
        """submit() does not return before the batch writer (the commit) has finished."""
        gate = asyncio.Event()
        pipeline = IngestPipeline(RecordingWriter(gate=gate), window_s=0)
        pipeline.start()
        task = asyncio.create_task(pipeline.submit(_signal(1)))
        await asyncio.sleep(0.02)
        assert not task.done()
        gate.set()
        assert await task is IngestResult.ACCEPTED
        await pipeline.close()


class TestShedding:
    async def test_overflow_is_refused_not_queued(self) -> None:
        """Past max_pending, submit raises IngestUnavailable at once (no unbounded queue)."""
        gate = asyncio.Event()
        pipeline = IngestPipeline(
            RecordingWriter(gate=gate), batch_max=1, window_s=0, max_pending=4
        )
        pipeline.start()
        tasks = [asyncio.create_task(pipeline.submit(_signal(i))) for i in range(10)]
        await asyncio.sleep(0.01)
        refused = [t for t in tasks if t.done() and isinstance(t.exception(), IngestUnavailable)]
        assert len(refused) >= 5
        assert pipeline.saturated
        gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pipeline.close()

    async def test_resume_callback_fires_after_draining(self) -> None:
        """Listeners paused at the high-water mark are told to resume once the queue drains."""
        gate = asyncio.Event()
        pipeline = IngestPipeline(
            RecordingWriter(gate=gate), batch_max=2, window_s=0, max_pending=10
        )
        resumed = asyncio.Event()
        pipeline.on_resume(resumed.set)
        pipeline.start()
        tasks = [asyncio.create_task(pipeline.submit(_signal(i))) for i in range(10)]
        await asyncio.sleep(0.01)
        assert pipeline.saturated
        gate.set()
        await asyncio.wait_for(resumed.wait(), 2)
        await asyncio.gather(*tasks, return_exceptions=True)
        await pipeline.close()


class FlakyWriter:
    def __init__(self) -> None:
        self.down = True
        self.committed: list[str] = []

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        self.committed.extend(s.account for s in signals)
        return [IngestResult.ACCEPTED] * len(signals)


class TestDatabaseLoss:
    async def test_no_result_while_down_and_recovery_after_probe(self) -> None:
        """While the database is down submit raises; once the probe succeeds signals commit again."""
        writer = FlakyWriter()

        async def probe() -> None:
            if writer.down:
                raise ConnectionRefusedError("still down")

        pipeline = IngestPipeline(writer, window_s=0, probe=probe, probe_interval_s=0.01)
        pipeline.start()
        with pytest.raises(IngestUnavailable):
            await pipeline.submit(_signal(1))
        with pytest.raises(IngestUnavailable):
            await pipeline.submit(_signal(2))  # fails fast while known down
        assert writer.committed == []
        writer.down = False
        for _ in range(200):
            if pipeline.available:
                break
            await asyncio.sleep(0.01)
        assert await pipeline.submit(_signal(3)) is IngestResult.ACCEPTED
        await pipeline.close()
        assert writer.committed == ["0003"]

    async def test_close_commits_what_is_queued(self) -> None:
        """Graceful shutdown finishes in-flight commits before stopping; later submits are refused."""
        gate = asyncio.Event()
        writer = RecordingWriter(gate=gate)
        pipeline = IngestPipeline(writer, window_s=0)
        pipeline.start()
        tasks = [asyncio.create_task(pipeline.submit(_signal(i))) for i in range(5)]
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(pipeline.close())
        await asyncio.sleep(0.01)
        gate.set()
        await closing
        assert [t.result() for t in tasks] == [IngestResult.ACCEPTED] * 5
        with pytest.raises(IngestUnavailable):
            await pipeline.submit(_signal(9))


class ReadOnlyThenWritable:
    """Writes through real PostgreSQL sessions: first read-only ones (as a standby, or
    default_transaction_read_only, answers), then ordinary ones."""

    def __init__(self, read_only: asyncpg.Pool) -> None:
        self.pool = read_only
        self.calls = 0

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        self.calls += 1
        await self.pool.executemany(
            "INSERT INTO signals (received_at, account, transport, kind) VALUES ($1, $2, 'tcp', 'event')",
            [(s.received_at, s.account) for s in signals],
        )
        return [IngestResult.ACCEPTED] * len(signals)


class TestWritesRefused:
    async def test_a_read_only_database_fails_the_batch_once_and_is_not_healthy(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Every write refused as such (read-only here; disk full alike): the batch is failed
        once (not split and retried signal by signal, 2n - 1 statements), nothing is ACKed, and
        the pipeline is not healthy (readiness) although SELECT 1 answers, until a commit
        succeeds again."""
        read_only = await asyncpg.create_pool(
            database_url,
            min_size=1,
            max_size=2,
            server_settings={"default_transaction_read_only": "on"},
        )
        writer = ReadOnlyThenWritable(read_only)
        pipeline = IngestPipeline(
            writer, window_s=0.05, probe=lambda: db_pool.fetchval("SELECT 1"), probe_interval_s=0.01
        )
        pipeline.start()
        try:
            results = await asyncio.gather(
                *(pipeline.submit(_signal(n)) for n in range(8)), return_exceptions=True
            )
            assert all(isinstance(r, IngestUnavailable) for r in results)
            assert writer.calls == 1
            for _ in range(100):
                if pipeline.available:
                    break
                await asyncio.sleep(0.01)
            assert pipeline.available and not pipeline.healthy  # SELECT 1 answers; writes do not
            writer.pool = db_pool
            assert await pipeline.submit(_signal(9)) is IngestResult.ACCEPTED
            assert pipeline.healthy
        finally:
            await pipeline.close()
            await read_only.close()
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == 1

    async def test_database_up_stays_0_while_writes_are_refused(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """``alarmrelay_database_up`` (alert AlarmrelayDatabaseDown) says whether signals can be
        committed: a read-only or full database answers the probe's SELECT 1, yet the gauge
        stays 0 until a commit succeeds again (not back to 1 a second after each refusal, which
        kept the alert from ever firing while no alarm was stored). Each failed commit counts
        once in ``alarmrelay_commit_failures_total``."""
        read_only = await asyncpg.create_pool(
            database_url,
            min_size=1,
            max_size=2,
            server_settings={"default_transaction_read_only": "on"},
        )
        writer = ReadOnlyThenWritable(read_only)
        pipeline = IngestPipeline(
            writer, window_s=0, probe=lambda: db_pool.fetchval("SELECT 1"), probe_interval_s=0.01
        )
        failures_before = _sample("alarmrelay_commit_failures_total")
        pipeline.start()
        try:
            with pytest.raises(IngestUnavailable):
                await pipeline.submit(_signal(1))
            for _ in range(100):
                if pipeline.available:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the probe has answered
            assert pipeline.available and not pipeline.healthy
            assert _sample("alarmrelay_database_up") == 0
            assert _sample("alarmrelay_commit_failures_total") == failures_before + 1
            writer.pool = db_pool
            assert await pipeline.submit(_signal(2)) is IngestResult.ACCEPTED
            assert _sample("alarmrelay_database_up") == 1
        finally:
            await pipeline.close()
            await read_only.close()


class DiskFullFor:
    """Refuses every write of the batches holding ``account`` as a full disk does (SQLSTATE
    53100), at once; commits the others."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.batches: list[list[str]] = []

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        accounts = [s.account for s in signals]
        self.batches.append(accounts)
        if self.account in accounts:
            raise asyncpg.DiskFullError("could not extend file: No space left on device")
        return [IngestResult.ACCEPTED] * len(signals)


def _on_other_writers(writers: int) -> tuple[InboundSignal, InboundSignal]:
    """Two signals the pipeline shards to different writers (the shard is the account's hash)."""
    first = _signal(1)
    shard = hash(first.account) % writers
    other = next(s for s in map(_signal, range(2, 100)) if hash(s.account) % writers != shard)
    return first, other


class TestSeveralWriters:
    async def test_a_writer_whose_queue_was_failed_meanwhile_commits_nothing(self) -> None:
        """Writer A's commit is refused (disk full) while writer B waits out its batch window:
        B's queued signal fails with A's (not ACKed), and B does not then commit an empty
        batch, whose success said the database accepted writes again (readiness and
        alarmrelay_database_up back to ready while no alarm could be stored)."""
        refused, queued = _on_other_writers(2)
        writer = DiskFullFor(refused.account)
        probe_answers = asyncio.Event()

        async def probe() -> None:  # SELECT 1 answers on a full disk
            probe_answers.set()

        pipeline = IngestPipeline(
            writer, writers=2, window_s=0.05, probe=probe, probe_interval_s=0.01
        )
        pipeline.start()
        try:
            first = pipeline.enqueue(refused)
            await asyncio.sleep(0.02)  # B's window ends after A's commit failed
            second = pipeline.enqueue(queued)
            results = await asyncio.gather(first, second, return_exceptions=True)
            assert all(isinstance(r, IngestUnavailable) for r in results)
            await asyncio.wait_for(probe_answers.wait(), 2)
            await asyncio.sleep(0.1)  # B's window is over
            assert [] not in writer.batches
            assert not pipeline.healthy
            assert _sample("alarmrelay_database_up") == 0
        finally:
            await pipeline.close()


def _now_signal(account: str) -> InboundSignal:
    return InboundSignal(
        account=account,
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=datetime.now(UTC),
        seq="0001",
    )


class TestARowLockHeldElsewhere:
    async def test_the_batch_waiting_on_it_fails_not_the_database(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """An account row held (an open transaction in psql) past the statement timeout fails
        the batch that waits on it (no ACK; its module resends), not the whole engine: every
        such timeout declared the database unavailable, failing the queued signals of every
        account and refusing new ones, and alarmrelay_database_up fell to 0, while the
        database answered."""
        held, other = _on_other_writers(2)
        later = _now_signal(other.account)
        await AccountStore(db_pool).upsert_many(
            [Account(account=held.account), Account(account=other.account)]
        )
        pool = await asyncpg.create_pool(database_url, min_size=2, max_size=4, command_timeout=0.5)
        pipeline = IngestPipeline(
            IngestWriter(pool, duplicate_window_s=600),
            writers=2,
            window_s=0,
            probe=lambda: pool.fetchval("SELECT 1"),
        )
        pipeline.start()
        try:
            async with db_pool.acquire() as holder, holder.transaction():
                await holder.execute(
                    "SELECT 1 FROM accounts WHERE account = $1 FOR UPDATE", held.account
                )
                waiting = pipeline.enqueue(_now_signal(held.account))
                await asyncio.sleep(0.1)  # its commit waits on the row lock
                assert await pipeline.enqueue(_now_signal(other.account)) is IngestResult.ACCEPTED
                with pytest.raises(IngestUnavailable):
                    await waiting
                assert pipeline.available and pipeline.healthy
                assert _sample("alarmrelay_database_up") == 1
                assert await pipeline.enqueue(later) is IngestResult.ACCEPTED
            assert await pipeline.submit(_now_signal(held.account)) is IngestResult.ACCEPTED
        finally:
            await pipeline.close()
            await pool.close()
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == 3


def _sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


def _seq_signal(account: str, seq: int) -> InboundSignal:
    return InboundSignal(
        account=account,
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        seq=f"{seq:04d}",
    )


class LockedOnCallsWithPoison:
    """Raises AccountsHeld for ``account`` on the calls numbered in ``locked`` (1 is the
    first), rejects the batches holding the signal of seq ``poison`` as bad data (alone, it is
    refused), and commits the others, recording the (account, seq) committed in order."""

    def __init__(self, account: str, *, locked: set[int], poison: str) -> None:
        self.account = account
        self.locked = locked
        self.poison = poison
        self.calls = 0
        self.committed: list[tuple[str, int]] = []

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        self.calls += 1
        if self.calls in self.locked and any(s.account == self.account for s in signals):
            raise AccountsHeld(frozenset({self.account}))
        if any(s.seq == self.poison for s in signals):
            raise ValueError("date out of range")
        self.committed.extend((s.account, int(s.seq)) for s in signals)
        return [IngestResult.ACCEPTED] * len(signals)


class TestAHeldAccountAndAPoisonSignal:
    async def test_the_held_accounts_signals_are_committed_in_order(self) -> None:
        """A held account's signals, split in halves around a signal the database refuses while
        its row is held again: the later half is not committed (nor put back) ahead of the
        earlier one (it was put in front of it, or committed while it waited)."""
        writer = LockedOnCallsWithPoison("X", locked={1, 3}, poison="0002")
        pipeline = IngestPipeline(writer, window_s=0, held_wait_s=30.0)
        signals = [_seq_signal("X", n) for n in range(1, 5)]
        futures = [pipeline.enqueue(s) for s in signals]
        pipeline.start()
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 2.0)
        finally:
            await pipeline.close()
        assert [r for i, r in enumerate(results) if i != 1] == [IngestResult.ACCEPTED] * 3
        assert writer.committed == [("X", 1), ("X", 3), ("X", 4)]

    async def test_a_batch_split_around_a_poison_signal_keeps_each_accounts_order(
        self,
    ) -> None:
        """A batch split in halves around a signal the database refuses, the first half meeting
        a row held of account X: X's signals in the second half are set aside behind X's
        earlier ones, not committed ahead of them."""
        writer = LockedOnCallsWithPoison("X", locked={2}, poison="0099")
        pipeline = IngestPipeline(writer, window_s=0, held_wait_s=30.0)
        batch = [
            _seq_signal("X", 1),
            _seq_signal("Y", 99),
            _seq_signal("X", 2),
            _seq_signal("Y", 3),
        ]
        futures = [pipeline.enqueue(s) for s in batch]
        pipeline.start()
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 2.0)
        finally:
            await pipeline.close()
        assert [results[0], results[2], results[3]] == [IngestResult.ACCEPTED] * 3
        assert [seq for account, seq in writer.committed if account == "X"] == [1, 2]


class HeldUntilFreed:
    """Raises AccountsHeld for ``account`` while ``held`` is set (after a short wait, as the
    lock timeout), holds the other batches until ``gate`` is set, and commits the rest."""

    def __init__(self, account: str) -> None:
        self.account = account
        self.held = True
        self.gate = asyncio.Event()
        self.committed: list[str] = []

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        accounts = {s.account for s in signals}
        if self.account in accounts and self.held:
            await asyncio.sleep(0.01)
            raise AccountsHeld(frozenset({self.account}))
        if self.account not in accounts:
            await self.gate.wait()
        self.committed.extend(s.account for s in signals)
        return [IngestResult.ACCEPTED] * len(signals)


class TestClosingWithAnAccountHeld:
    async def test_a_held_accounts_signal_set_aside_while_closing_is_tried(self) -> None:
        """Closing while a writer still drains its queue: a signal of an account set aside
        earlier, taken from the queue after the held accounts' task had found nothing to do,
        is tried (and committed, its row being free now) before the pipeline stops; it was
        failed unseen (no ACK for a signal that could be committed)."""
        writer = HeldUntilFreed("X")
        pipeline = IngestPipeline(writer, window_s=0, batch_max=1, held_wait_s=0.1)
        pipeline.start()
        try:
            first = pipeline.enqueue(_seq_signal("X", 1))
            with pytest.raises(IngestUnavailable):
                await asyncio.wait_for(first, 2.0)  # set aside, in vain: X stays aside
            other = pipeline.enqueue(_seq_signal("Y", 1))  # its commit waits for the gate
            later = pipeline.enqueue(_seq_signal("X", 2))  # queued behind it
            await asyncio.sleep(0.05)
            writer.held = False
            closing = asyncio.ensure_future(pipeline.close())
            await asyncio.sleep(0.1)  # the held accounts' task finds nothing waiting
            writer.gate.set()
            await asyncio.wait_for(closing, 3.0)
        finally:
            await pipeline.close()
        assert other.result() is IngestResult.ACCEPTED
        assert later.result() is IngestResult.ACCEPTED
        assert writer.committed == ["Y", "X"]


class HeldThenDiskFull:
    """The first batch meets the rows of its accounts held; then every batch holding
    ``full`` is refused as on a full disk; records every batch it is given."""

    def __init__(self, full: str) -> None:
        self.full = full
        self.batches: list[list[str]] = []

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        accounts = [s.account for s in signals]
        self.batches.append(accounts)
        if len(self.batches) == 1:
            raise AccountsHeld(frozenset(accounts))
        if self.full in accounts:
            raise asyncpg.DiskFullError("could not extend file: No space left on device")
        return [IngestResult.ACCEPTED] * len(signals)


class TestHeldAccountsAndADatabaseRefusingWrites:
    async def test_no_empty_batch_is_committed_for_a_held_account_failed_meanwhile(
        self,
    ) -> None:
        """Two held accounts found free: the first's commit meets a full disk, which fails every
        waiting signal, the second's too. Its turn commits nothing: an empty batch would succeed
        on a full disk and report writes accepted again (healthy, database_up 1)."""

        async def nothing_held(accounts: Sequence[str]) -> frozenset[str]:
            return frozenset()

        writer = HeldThenDiskFull("A")
        pipeline = IngestPipeline(writer, window_s=0, held_wait_s=30.0, held_check=nothing_held)
        futures = [pipeline.enqueue(_seq_signal(a, 1)) for a in ("A", "B")]
        pipeline.start()
        try:
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 2.0)
            await asyncio.sleep(0.05)
            assert all(isinstance(r, IngestUnavailable) for r in results), results
            assert [] not in writer.batches
            assert not pipeline.healthy
        finally:
            await pipeline.close()


class AlwaysHeld:
    """Every batch holding ``account`` meets a row of it held (AccountsHeld); the others commit."""

    def __init__(self, account: str) -> None:
        self.account = account

    async def __call__(self, signals: Sequence[InboundSignal]) -> list[IngestResult]:
        if any(s.account == self.account for s in signals):
            raise AccountsHeld(frozenset({self.account}))
        return [IngestResult.ACCEPTED] * len(signals)


def _shed_account_held() -> float:
    value = REGISTRY.get_sample_value(
        "alarmrelay_signals_shed_total", {"transport": "tcp", "reason": "account_held"}
    )
    return value or 0.0


class TestTheSignalsOfAHeldAccountAreBounded:
    async def test_no_more_than_max_pending_wait_aside(self) -> None:
        """An account whose rows stay held: its signals set aside no longer count in the queue,
        so its module's signals were all taken and kept in memory for held_wait_s, however
        many came (max_pending bounded nothing). Past max_pending waiting aside, a held
        account's signal is now not taken (no ACK, counted), and the other accounts' signals
        are committed all the same."""

        async def still_held(accounts: Sequence[str]) -> frozenset[str]:
            return frozenset(accounts)

        pipeline = IngestPipeline(
            AlwaysHeld("X"), window_s=0, max_pending=10, held_wait_s=30.0, held_check=still_held
        )
        pipeline.start()
        shed_before = _shed_account_held()
        futures: list[asyncio.Future[IngestResult]] = []
        try:
            async with asyncio.timeout(5):
                while len(futures) < 100:
                    with contextlib.suppress(IngestUnavailable):  # the queue itself is full
                        futures.append(pipeline.enqueue(_seq_signal("X", len(futures))))
                    await asyncio.sleep(0.001)  # the writer sets them aside meanwhile
                while sum(not f.done() for f in futures) > 10:
                    await asyncio.sleep(0.01)
            assert await pipeline.submit(_seq_signal("Y", 1)) is IngestResult.ACCEPTED
        finally:
            await pipeline.close()
        failed = [f for f in futures if isinstance(f.exception(), IngestUnavailable)]
        assert len(failed) == 100  # the 10 aside failed at close, the others when set aside
        assert _shed_account_held() - shed_before == 90
