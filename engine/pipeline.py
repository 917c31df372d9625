"""Durable ingest with group commit: a signal is acknowledged only after its transaction commits.

Listeners call :meth:`IngestPipeline.submit`; ``writers`` writer tasks drain the pending queues in
batches (bounded by ``batch_max`` and a short ``window``) and commit each batch in one transaction,
then resolve every waiter. While a commit runs, new signals accumulate, so under load batches grow
and the cost of a commit is shared; when idle a signal waits at most ``window``. Signals are
sharded to writers by account, so one account's signals are committed in arrival order while
several transactions (and their WAL flushes) overlap.

An account whose rows, or the lane of whose outbox rows, another transaction holds (a commit
waited past the writer's lock timeout: :class:`engine.ingest_types.AccountsHeld`) is set aside: the batch's other signals are
committed at once, and the held account's signals, from then on, are committed apart, one account
at a time, by a task of their own. That task looks at every held account's rows together without
waiting for them (``held_check``, every ``_HELD_LOOK_S``) and tries only the accounts found free, so
no connection sits in a lock queue meanwhile and a freed account does not wait for the others'
lock timeouts; those still not committed after ``held_wait_s`` fail (not ACKed, the module
resends). The account rejoins the batches once its signals are committed or, with nothing of it
waiting, once its rows are found free (every ``_HELD_IDLE_LOOK_S``).

Nothing is unbounded: past ``max_pending`` new signals are shed (counted, not acknowledged, the
module retries), and so are the signals of held accounts past ``max_pending`` waiting aside.
When the database is unreachable every waiter gets :class:`IngestUnavailable` and new
submissions fail fast until a probe sees the database again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncpg
import structlog

from engine import metrics
from engine.errors import is_database_unreachable, refuses_writes
from engine.ingest_types import (
    AccountsHeld,
    InboundSignal,
    IngestRefused,
    IngestResult,
    IngestUnavailable,
)

log = structlog.get_logger("engine.pipeline")

# Errors that mean "the database is not there right now", as opposed to a bug in a batch.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
# After a statement timeout, how long the probe may take to show the database is there.
_ANSWER_TIMEOUT_S = 2.0
# How often the held accounts' rows are looked at while every one of them is still held.
_HELD_LOOK_S = 0.1
# How often accounts aside with nothing waiting are looked at, to be released once free.
_HELD_IDLE_LOOK_S = 1.0


class BatchWriter(Protocol):
    """Commits one batch in one transaction and returns a result per signal, in order."""

    async def __call__(self, signals: Sequence[InboundSignal]) -> Sequence[IngestResult]: ...


# Which of these accounts have a row another transaction holds now (asked without waiting).
HeldCheck = Callable[[Sequence[str]], Awaitable[frozenset[str]]]

CommittedHook = Callable[[Sequence[InboundSignal], Sequence[IngestResult]], Awaitable[None] | None]


class _Pending:
    __slots__ = ("aside_at", "future", "signal")

    aside_at: float  # set when its account is found held (monotonic seconds)

    def __init__(self, signal: InboundSignal, future: asyncio.Future[IngestResult]) -> None:
        self.signal = signal
        self.future = future


class IngestPipeline:
    """The group-commit writer. Implements :class:`engine.ingest_types.IngestSink`."""

    def __init__(
        self,
        writer: BatchWriter,
        *,
        batch_max: int = 256,
        window_s: float = 0.001,
        max_pending: int = 10_000,
        probe: Callable[[], Awaitable[Any]] | None = None,
        probe_interval_s: float = 1.0,
        writers: int = 1,
        held_wait_s: float = 5.0,
        held_check: HeldCheck | None = None,
    ) -> None:
        self._writer = writer
        self._batch_max = batch_max
        self._window_s = window_s
        self._max_pending = max_pending
        self._high_water = max(1, int(max_pending * 0.8))
        self._low_water = max(0, int(max_pending * 0.5))
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self._queues: list[deque[_Pending]] = [deque() for _ in range(max(1, writers))]
        self._wakeups = [asyncio.Event() for _ in self._queues]
        self._pending = 0
        self._available = True
        self._writes_refused = False  # the last failed commit was a refusal of writes as such
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_task: asyncio.Task[None] | None = None
        self._resume_callbacks: set[Callable[[], None]] = set()
        self._was_saturated = False
        # Accounts set aside (their rows held elsewhere): their signals waiting, in order.
        self._held: dict[str, deque[_Pending]] = {}
        self._held_wakeup = asyncio.Event()
        self._held_wait_s = held_wait_s
        self._held_check = held_check
        self._aside_full = False  # signals of held accounts were shed: logged until room again
        self._writers_running = 0  # the held task stops after them: they may set signals aside
        self.committed = 0

    # -- IngestSink ---------------------------------------------------------------------------

    @property
    def saturated(self) -> bool:
        """True while the queue is above the high-water mark (listeners pause reading)."""
        return self._pending >= self._high_water

    @property
    def available(self) -> bool:
        """False while the database is known to be unreachable."""
        return self._available

    @property
    def healthy(self) -> bool:
        """Commits can be expected to succeed: reachable, and not refusing writes since the
        last commit (a read-only or full database answers the probe's SELECT 1 all the same)."""
        return self._available and not self._writes_refused

    async def submit(self, signal: InboundSignal) -> IngestResult:
        """Queue ``signal`` and return once it is committed (or raise IngestUnavailable)."""
        return await self.enqueue(signal)

    def enqueue(self, signal: InboundSignal) -> asyncio.Future[IngestResult]:
        """Queue ``signal``; the future resolves after its commit (no task per signal).

        Raises IngestUnavailable at once when the signal cannot be taken (shed, database down).
        """
        if self._closing:
            metrics.SIGNALS_SHED.labels(signal.transport.value, "shutting_down").inc()
            raise IngestUnavailable("engine is shutting down")
        if not self._available:
            metrics.SIGNALS_SHED.labels(signal.transport.value, "database_unavailable").inc()
            raise IngestUnavailable("database unavailable")
        if self._pending >= self._max_pending:
            metrics.SIGNALS_SHED.labels(signal.transport.value, "overloaded").inc()
            raise IngestUnavailable("too many signals waiting for commit")
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        shard = hash(signal.account) % len(self._queues) if len(self._queues) > 1 else 0
        self._queues[shard].append(_Pending(signal, future))
        self._pending += 1
        metrics.PENDING_COMMITS.set(self._pending)
        if self._pending >= self._high_water:
            self._was_saturated = True
        self._wakeups[shard].set()
        return future

    def on_resume(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once the queue drains below the low-water mark; returns a remover."""
        self._resume_callbacks.add(callback)
        return lambda: self._resume_callbacks.discard(callback)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer tasks."""
        self._writers_running = len(self._queues)
        self._tasks = [
            asyncio.create_task(self._run(shard), name=f"ingest-writer-{shard}")
            for shard in range(len(self._queues))
        ]
        self._tasks.append(asyncio.create_task(self._run_held(), name="ingest-writer-held"))

    async def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new signals, commit what is queued (up to ``timeout_s``), stop the writer."""
        self._closing = True
        for wakeup in self._wakeups:
            wakeup.set()
        self._held_wakeup.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        self._fail_all(IngestUnavailable("engine is shutting down"))

    # -- the writer ---------------------------------------------------------------------------

    async def _run(self, shard: int) -> None:
        try:
            await self._drain(shard)
        finally:
            self._writers_running -= 1
            self._held_wakeup.set()

    async def _drain(self, shard: int) -> None:
        queue, wakeup = self._queues[shard], self._wakeups[shard]
        while True:
            if not queue:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            if len(queue) < self._batch_max and self._window_s > 0 and not self._closing:
                # Short window for stragglers so a burst shares one commit.
                await asyncio.sleep(self._window_s)
            batch = [queue.popleft() for _ in range(min(self._batch_max, len(queue)))]
            if not batch:
                # Another writer's failed commit failed this queue during the window: an empty
                # commit would succeed even on a full disk and say writes are accepted again.
                continue
            self._pending -= len(batch)
            metrics.PENDING_COMMITS.set(self._pending)
            if self._held:
                batch = self._set_aside(batch)
                if not batch:
                    self._maybe_resume()
                    continue
            await self._commit(batch)
            self._maybe_resume()

    def _set_aside(self, batch: list[_Pending]) -> list[_Pending]:
        """Queue the signals of held accounts behind their earlier ones; return the others."""
        held = self._held
        rest = []
        now = time.monotonic()
        room = self._room_aside()
        over: list[_Pending] = []
        for pending in batch:
            waiting = held.get(pending.signal.account)
            if waiting is None:
                rest.append(pending)
            elif room <= 0:
                over.append(pending)
            else:
                room -= 1
                pending.aside_at = now
                waiting.append(pending)
                self._held_wakeup.set()
        self._shed_aside(over, room)
        return rest

    def _room_aside(self) -> int:
        """How many more signals may wait aside: as many as the queue takes (``max_pending``).
        Once out of the queue they count there no more, so without this bound a held
        account's module had every signal it sent taken and kept for ``held_wait_s``."""
        return self._max_pending - sum(len(waiting) for waiting in self._held.values())

    def _shed_aside(self, over: list[_Pending], room: int) -> None:
        """Fail (no ACK, the module resends) the signals of held accounts past the bound;
        logged once per run of them (``room`` left after the others were set aside)."""
        if not over:
            if room > 0:
                self._aside_full = False
            return
        for pending in over:
            metrics.SIGNALS_SHED.labels(pending.signal.transport.value, "account_held").inc()
        if not self._aside_full:
            self._aside_full = True
            log.warning(
                "ingest_held_signals_shed",
                accounts=sorted({p.signal.account for p in over})[:20],
                waiting=self._max_pending,
                reason="as many signals of held accounts wait as the queue takes "
                "(dc09.max_pending_commits): not taken, the module resends",
            )
        self._fail(over, IngestUnavailable("too many signals of held accounts waiting"))

    async def _run_held(self) -> None:
        """Commit the held accounts' signals, one account at a time (its signals in order)."""
        held = self._held
        while True:
            self._expire_held()
            accounts = [a for a, waiting in held.items() if waiting]
            if not accounts:
                if self._closing and not self._writers_running:
                    return  # (a writer still draining may set signals aside)
                self._held_wakeup.clear()
                if not held or self._held_check is None:
                    await self._held_wakeup.wait()
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._held_wakeup.wait(), _HELD_IDLE_LOOK_S)
                await self._release_idle()
                continue
            free = await self._free_of(accounts)
            if not free:
                if self._closing:  # no more tries: what is still held is not committed
                    self._expire_held(everything=True)
                else:
                    await asyncio.sleep(_HELD_LOOK_S)
                continue
            for account in free:
                if not held.get(account):
                    # Failed meanwhile (the database went, or refuses writes): an empty batch
                    # would commit even on a full disk and say writes are accepted again.
                    continue
                waiting = held.pop(account)  # to the back of the turn, behind the others
                held[account] = deque()
                committed = await self._commit(list(waiting), apart=True)
                if committed and not held.get(account, True):
                    # Committed, and nothing of it came meanwhile: back into the batches (its
                    # signals arriving from now on are ordered behind these, committed).
                    del held[account]
                    metrics.INGEST_ACCOUNTS_HELD.set(len(held))
                    log.info("ingest_account_released", account=account)

    async def _release_idle(self) -> None:
        """Release the accounts aside with nothing waiting whose rows are free now (their
        signals failed, held too long, or with the database): else they stayed counted held,
        and apart, until their module's next signal, maybe hours later."""
        held = self._held
        idle = [a for a, waiting in held.items() if not waiting]
        if not idle:
            return
        free = await self._free_of(idle, fallback=False)
        for account in free:
            if account in held and not held[account]:  # (nothing came meanwhile)
                del held[account]
                log.info("ingest_account_released", account=account)
        metrics.INGEST_ACCOUNTS_HELD.set(len(held))

    async def _free_of(self, accounts: list[str], *, fallback: bool = True) -> list[str]:
        """Those of ``accounts`` none of whose rows is held now, asked without waiting for a
        lock (without a check, or when the check fails: all of them, their commit finds out;
        none without ``fallback``)."""
        if self._held_check is None:
            return accounts if fallback else []
        try:
            still = await self._held_check(accounts)
        except Exception as exc:
            log.debug("ingest_held_check_failed", error=repr(exc))
            return accounts if fallback else []
        return [a for a in accounts if a not in still]

    async def _commit(
        self, batch: list[_Pending], *, apart: bool = False, retried: bool = False
    ) -> bool:
        """Commit ``batch`` and answer its waiters; whether it was committed as a whole.

        ``apart``: the signals of one held account, committed apart from the batches.
        """
        signals = [p.signal for p in batch]
        started = time.perf_counter()
        try:
            results = await self._writer(signals)
        except _UNAVAILABLE_ERRORS as exc:
            if isinstance(exc, TimeoutError) and await self._answers():
                self._timed_out(batch)
                return False
            self._mark_unavailable(exc)
            self._fail(batch, IngestUnavailable(f"database unavailable: {exc}"))
            return False
        except AccountsHeld as exc:
            if not exc.accounts and retried and not apart:
                self._timed_out(batch)
                return False
            metrics.COMMIT_FAILURES.inc()
            if not exc.accounts and not retried:
                # No row of these accounts is held now: the lock was released meanwhile, or
                # was on something else (a table). One more try, then as a timeout.
                return await self._commit(batch, apart=apart, retried=True)
            if apart:
                self._held_again(batch)
            else:
                await self._hold(batch, exc.accounts)
            return False
        except Exception as exc:
            # asyncpg raises its own connection errors (not OSError subclasses) when the server
            # goes away mid-transaction; treat every failure as "not committed": no ACK, retry.
            # (Counted once: here, or by _mark_unavailable.)
            if refuses_writes(exc):
                # Disk full, read-only, I/O error: every statement would fail alike (splitting
                # the batch would only repeat it). Not ready until a commit succeeds again.
                if not self._writes_refused:
                    log.error("database_refuses_writes", error=repr(exc))
                self._writes_refused = True
                self._mark_unavailable(exc)
                self._fail(batch, IngestUnavailable(f"commit failed: {exc.__class__.__name__}"))
            elif is_database_unreachable(exc):
                self._mark_unavailable(exc)
                self._fail(batch, IngestUnavailable(f"commit failed: {exc.__class__.__name__}"))
            elif len(batch) > 1:
                metrics.COMMIT_FAILURES.inc()
                await self._isolate(batch, exc, apart=apart)
            else:
                metrics.COMMIT_FAILURES.inc()
                self._fail_one(batch[0], exc)
            return False
        metrics.COMMIT_DURATION.observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH_SIZE.observe(len(batch))
        metrics.DATABASE_UP.set(1)
        if self._writes_refused:
            self._writes_refused = False
            log.info("database_accepts_writes")
        self.committed += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
        return True

    async def _hold(self, batch: list[_Pending], accounts: frozenset[str]) -> None:
        """The rows of ``accounts`` are held by another transaction: their signals go aside,
        behind any of theirs already there, and the rest of the batch is committed now."""
        held = self._held
        rest = []
        aside: dict[str, int] = {}
        now = time.monotonic()
        room = self._room_aside()
        over: list[_Pending] = []
        for pending in batch:
            account = pending.signal.account
            if account not in accounts:
                rest.append(pending)
            elif room <= 0:
                over.append(pending)
            else:
                room -= 1
                pending.aside_at = now
                held.setdefault(account, deque()).append(pending)
                aside[account] = aside.get(account, 0) + 1
        self._shed_aside(over, room)
        metrics.INGEST_ACCOUNTS_HELD.set(len(held))
        for account, n in sorted(aside.items()):
            log.warning(
                "ingest_account_locked",
                account=account,
                signals=n,
                batch=len(batch),
                reason="a row of the account is held by another transaction: its signals are "
                "committed apart, the others of the batch now",
            )
        self._held_wakeup.set()
        if rest:
            await self._commit(rest)

    def _held_again(self, batch: list[_Pending]) -> None:
        """A held account's signals waited once more past the lock timeout: back to the front
        of the account's turn, tried again unless they expire first (:meth:`_expire_held`).
        The account stays aside until a try succeeds."""
        for pending in reversed(batch):
            if not pending.future.done():
                self._held.setdefault(pending.signal.account, deque()).appendleft(pending)
        if self._closing:  # shutting down: no more tries
            self._expire_held(everything=True)

    def _expire_held(self, *, everything: bool = False) -> None:
        """The held signals set aside ``held_wait_s`` ago or more (``everything``: all of them)
        are not committed, not ACKed: the module resends (a module that got no answer so long
        resends anyway)."""
        now = math.inf if everything else time.monotonic()
        expired: list[_Pending] = []
        for waiting in self._held.values():
            while waiting and now - waiting[0].aside_at >= self._held_wait_s:
                expired.append(waiting.popleft())
        if not expired:
            return
        metrics.INGEST_ACCOUNT_LOCKED.inc(len(expired))
        for account in sorted({p.signal.account for p in expired}):
            log.warning(
                "ingest_account_locked",
                account=account,
                signals=sum(1 for p in expired if p.signal.account == account),
                waited_s=self._held_wait_s,
                reason="a row of the account is still held by another transaction: not "
                "committed, the module resends",
            )
        self._fail(expired, IngestUnavailable("the account's rows are held by another transaction"))

    async def _isolate(self, batch: list[_Pending], exc: Exception, *, apart: bool) -> None:
        """Commit the halves of a failed batch apart, so a signal whose own data fails the
        statement fails alone and the others are acknowledged (in their order)."""
        log.warning("commit_failed_isolating", error=repr(exc), batch=len(batch))
        metrics.COMMIT_ISOLATIONS.inc()
        half = len(batch) // 2
        first, second = batch[:half], batch[half:]
        await self._commit(first, apart=apart)
        if not self._available:
            self._fail(second, IngestUnavailable("database unavailable"))
            return
        if apart:
            back = sum(1 for p in first if not p.future.done())
            if back:
                # The account's row was found held again: its first half went back to wait;
                # the second waits behind it, untried (committed now, it would come first).
                waiting = self._held.setdefault(second[0].signal.account, deque())
                for n, pending in enumerate(second):
                    waiting.insert(back + n, pending)
                if self._closing:
                    self._expire_held(everything=True)
                return
        elif self._held:
            # An account of the first half found held: its signals of the second half go aside
            # behind the first half's, not committed ahead of them.
            second = self._set_aside(second)
            if not second:
                return
        await self._commit(second, apart=apart)

    def _fail_one(self, pending: _Pending, exc: Exception) -> None:
        """A signal that fails on its own: refused when its data is what the database refuses
        (a resend would fail the same way), else not committed (the module resends). The raw
        frame or payload is logged so that an operator can recover the signal by hand."""
        signal = pending.signal
        refused = _is_data_error(exc)
        log.error(
            "signal_refused" if refused else "commit_failed",
            error=repr(exc),
            account=signal.account,
            transport=signal.transport.value,
            seq=signal.seq,
            raw_b64=base64.b64encode(signal.raw).decode(),
        )
        error = IngestRefused if refused else IngestUnavailable
        self._fail([pending], error(f"commit failed: {exc.__class__.__name__}"))

    async def _answers(self) -> bool:
        """Whether the database answers the probe at once (False without a probe)."""
        if self._probe is None:
            return False
        try:
            await asyncio.wait_for(self._probe(), _ANSWER_TIMEOUT_S)
        except Exception:
            return False
        return True

    def _timed_out(self, batch: list[_Pending]) -> None:
        """A statement timeout while the database answers: this batch waited (a row lock held
        by another transaction, a slow statement). It is not committed (the modules resend);
        the other writers' signals and new ones are not failed with it."""
        metrics.COMMIT_FAILURES.inc()
        log.warning(
            "commit_timed_out",
            batch=len(batch),
            accounts=sorted({p.signal.account for p in batch})[:20],
            reason="the database answers: a lock held elsewhere or a slow statement",
        )
        self._fail(batch, IngestUnavailable("commit timed out"))

    def _fail(self, batch: list[_Pending], error: IngestUnavailable) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)
                # The waiter may be gone (connection closed); don't warn about unretrieved errors.
                pending.future.exception()

    def _fail_all(self, error: IngestUnavailable) -> None:
        batch = [pending for queue in self._queues for pending in queue]
        for queue in self._queues:
            queue.clear()
        for waiting in self._held.values():
            batch.extend(waiting)
            waiting.clear()  # the accounts stay aside: their rows may still be held
        self._pending = 0
        metrics.PENDING_COMMITS.set(0)
        self._fail(batch, error)
        # Emptied, maybe by the held accounts' task (its commit met the outage) while every
        # writer waited: no writer's commit would follow to resume the paused readers.
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        """Tell the paused readers to read again once the queue is at the low-water mark.

        Run wherever the queue shrinks: by a writer once the batch it took is committed (or
        failed), and by :meth:`_fail_all` as it empties the queue. A reader resumed while the
        database is away has its signals refused at once (no ACK, the module resends)."""
        if self._was_saturated and self._pending <= self._low_water:
            self._was_saturated = False
            for callback in list(self._resume_callbacks):
                callback()

    # -- database availability ----------------------------------------------------------------

    def _mark_unavailable(self, exc: BaseException) -> None:
        metrics.COMMIT_FAILURES.inc()
        metrics.DATABASE_UP.set(0)
        if self._available:
            log.error("database_unavailable", error=repr(exc))
        self._available = False
        # Everything queued behind the failed batch would fail too: refuse it now (no ACK).
        self._fail_all(IngestUnavailable("database unavailable"))
        if self._probe is not None and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.create_task(self._probe_until_up(), name="db-probe")
        elif self._probe is None:
            self._available = True  # no probe: let the next commit find out

    async def _probe_until_up(self) -> None:
        assert self._probe is not None
        while not self._closing:
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self._probe()
            except Exception as exc:
                log.debug("database_probe_failed", error=repr(exc))
                continue
            self._available = True
            # A database refusing writes answers SELECT 1 all the same: the gauge says whether
            # signals can be committed, so it stays 0 until a commit succeeds.
            if not self._writes_refused:
                metrics.DATABASE_UP.set(1)
            log.info("database_available")
            return


def _is_data_error(exc: BaseException) -> bool:
    """The signal's own values fail, every time: PostgreSQL's class 22 (data exception), or a
    value out of range on our side (a date past year 9999, say). Retrying cannot help; over MQTT
    it would have the broker redeliver the message behind every other one, for ever."""
    return isinstance(exc, asyncpg.DataError | ValueError | ArithmeticError)
