"""Durable ingest with group commit: a signal is acknowledged only after its transaction commits.

Listeners call :meth:`IngestPipeline.submit`; one writer task drains the pending queue in batches
(bounded by ``batch_max`` and a short ``window``) and commits each batch in one transaction, then
resolves every waiter. While a commit runs, new signals accumulate, so under load batches grow
and the cost of a commit is shared; when idle a signal waits at most ``window``.

Nothing is unbounded: past ``max_pending`` new signals are shed (counted, not acknowledged, the
module retries). When the database is unreachable every waiter gets :class:`IngestUnavailable`
and new submissions fail fast until a probe sees the database again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import structlog

from engine import metrics
from engine.ingest_types import InboundSignal, IngestResult, IngestUnavailable

log = structlog.get_logger("engine.pipeline")

# Errors that mean "the database is not there right now", as opposed to a bug in a batch.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)


class BatchWriter(Protocol):
    """Commits one batch in one transaction and returns a result per signal, in order."""

    async def __call__(self, signals: Sequence[InboundSignal]) -> Sequence[IngestResult]: ...


CommittedHook = Callable[[Sequence[InboundSignal], Sequence[IngestResult]], Awaitable[None] | None]


class _Pending:
    __slots__ = ("future", "signal")

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
    ) -> None:
        self._writer = writer
        self._batch_max = batch_max
        self._window_s = window_s
        self._max_pending = max_pending
        self._high_water = max(1, int(max_pending * 0.8))
        self._low_water = max(0, int(max_pending * 0.5))
        self._probe = probe
        self._probe_interval_s = probe_interval_s
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._available = True
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._resume_callbacks: set[Callable[[], None]] = set()
        self._was_saturated = False
        self.committed = 0

    # -- IngestSink ---------------------------------------------------------------------------

    @property
    def saturated(self) -> bool:
        """True while the queue is above the high-water mark (listeners pause reading)."""
        return len(self._queue) >= self._high_water

    @property
    def available(self) -> bool:
        """False while the database is known to be unreachable."""
        return self._available

    async def submit(self, signal: InboundSignal) -> IngestResult:
        """Queue ``signal`` and return once it is committed (or raise IngestUnavailable)."""
        if self._closing:
            metrics.SIGNALS_SHED.labels(signal.transport.value, "shutting_down").inc()
            raise IngestUnavailable("engine is shutting down")
        if not self._available:
            metrics.SIGNALS_SHED.labels(signal.transport.value, "database_unavailable").inc()
            raise IngestUnavailable("database unavailable")
        if len(self._queue) >= self._max_pending:
            metrics.SIGNALS_SHED.labels(signal.transport.value, "overloaded").inc()
            raise IngestUnavailable("too many signals waiting for commit")
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(signal, future))
        metrics.PENDING_COMMITS.set(len(self._queue))
        if len(self._queue) >= self._high_water:
            self._was_saturated = True
        self._wakeup.set()
        return await future

    def on_resume(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` once the queue drains below the low-water mark; returns a remover."""
        self._resume_callbacks.add(callback)
        return lambda: self._resume_callbacks.discard(callback)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task."""
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Refuse new signals, commit what is queued (up to ``timeout_s``), stop the writer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        self._fail_all(IngestUnavailable("engine is shutting down"))

    # -- the writer ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._queue) < self._batch_max and self._window_s > 0 and not self._closing:
                # Short window for stragglers so a burst shares one commit.
                await asyncio.sleep(self._window_s)
            batch = [self._queue.popleft() for _ in range(min(self._batch_max, len(self._queue)))]
            metrics.PENDING_COMMITS.set(len(self._queue))
            await self._commit(batch)
            self._maybe_resume()

    async def _commit(self, batch: list[_Pending]) -> None:
        signals = [p.signal for p in batch]
        started = time.perf_counter()
        try:
            results = await self._writer(signals)
        except _UNAVAILABLE_ERRORS as exc:
            self._mark_unavailable(exc)
            self._fail(batch, IngestUnavailable(f"database unavailable: {exc}"))
            return
        except Exception as exc:
            # asyncpg raises its own connection errors (not OSError subclasses) when the server
            # goes away mid-transaction; treat every failure as "not committed": no ACK, retry.
            metrics.COMMIT_FAILURES.inc()
            if _looks_like_connection_loss(exc):
                self._mark_unavailable(exc)
            else:
                log.error("commit_failed", error=repr(exc), batch=len(batch))
            self._fail(batch, IngestUnavailable(f"commit failed: {exc.__class__.__name__}"))
            return
        metrics.COMMIT_DURATION.observe(time.perf_counter() - started)
        metrics.COMMIT_BATCH_SIZE.observe(len(batch))
        metrics.DATABASE_UP.set(1)
        self.committed += len(batch)
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _fail(self, batch: list[_Pending], error: IngestUnavailable) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)
                # The waiter may be gone (connection closed); don't warn about unretrieved errors.
                pending.future.exception()

    def _fail_all(self, error: IngestUnavailable) -> None:
        batch = list(self._queue)
        self._queue.clear()
        metrics.PENDING_COMMITS.set(0)
        self._fail(batch, error)

    def _maybe_resume(self) -> None:
        if self._was_saturated and len(self._queue) <= self._low_water:
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
            metrics.DATABASE_UP.set(1)
            log.info("database_available")
            return


def _looks_like_connection_loss(exc: BaseException) -> bool:
    name = type(exc).__name__
    module = type(exc).__module__
    if module.startswith("asyncpg") and (
        "Connection" in name or "CannotConnectNow" in name or "AdminShutdown" in name
    ):
        return True
    return isinstance(exc, ConnectionError | OSError)
