"""The loop shared by the durable timers (supervision, Crash & Smash, virtual modules).

Time is an argument: the loop reads its clock once per round and passes ``now`` to
:meth:`DeadlineTimer.fire_due` (fire every row due at ``now``, in short transactions) and to
:meth:`DeadlineTimer.seconds_to_next` (how long until the next deadline, read from an index on the
pending rows only). It then sleeps that long, never longer than ``max_sleep_s`` (so a shorter
deadline committed by another engine is picked up), or until :meth:`DeadlineTimer.wake`. Tests
give a fake clock and call ``fire_due(now)`` directly. Database trouble is logged and retried after
``max_sleep_s``.

A timer with ``settle_s`` raises nothing until that long after its engine started or its database
came back (:meth:`DeadlineTimer._settling_s`): a deadline that passed while no signal could be
committed (a contact, a disarm) is the engine's silence, not the module's, and the modules get
that long to reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import Counter, Histogram

from engine.background_task import restart_on_failure
from engine.errors import DATABASE_ERRORS, is_database_unreachable

log = structlog.get_logger("engine.timers")

Clock = Callable[[], datetime]

TIMER_LAG = Histogram(
    "alarmrelay_timer_lag_seconds",
    "From a timer's deadline to its firing.",
    ["timer"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
TIMERS_FIRED = Counter(
    "alarmrelay_timers_fired_total",
    "Durable timers fired (a Panel Not Responding or a Crash & Smash alarm committed).",
    ["timer"],
)
TIMER_ROWS_HELD = Counter(
    "alarmrelay_timer_rows_held_total",
    "Due timer rows found held by another transaction (counted once per hold): not fired in that "
    "round, the others fired on time; fired once free.",
    ["timer"],
)
# At 0 from the start (see engine.metrics): the lag observed in one burst after an outage is
# what AlarmrelayTimerLag is for, and rate() would not see it in a series it created.
for _timer in ("supervision", "crash_smash"):
    TIMER_LAG.labels(_timer)
    TIMERS_FIRED.labels(_timer)
    TIMER_ROWS_HELD.labels(_timer)


def utc_now() -> datetime:
    """The runtime's clock (aware, UTC)."""
    return datetime.now(UTC)


class DeadlineTimer(ABC):
    """Subclasses implement :meth:`fire_due` and :meth:`seconds_to_next`."""

    name = "timer"

    def __init__(
        self, *, max_sleep_s: float, clock: Clock = utc_now, settle_s: float = 0.0
    ) -> None:
        self._max_sleep_s = max_sleep_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.fired = 0
        self._settle = timedelta(seconds=settle_s)
        self._raise_from: datetime | None = None  # nothing fires before it; None: settle from now

    def _settling_s(self, now: datetime) -> float:
        """Seconds from ``now`` until deadlines may fire (0: they may).

        A deadline that passed while this engine could not hear the modules (before it started,
        or while the database was out of reach: nothing could be committed) says nothing about
        the module. Each module gets ``settle_s`` from then to come back; what is still due after
        it fires, once as always.
        """
        settled = now + self._settle
        if self._raise_from is None or self._raise_from > settled:  # or the clock was set back
            self._raise_from = settled
        return max(0.0, (self._raise_from - now).total_seconds())

    @contextlib.contextmanager
    def _on_database(self) -> Iterator[None]:
        """A database out of reach means nothing was committed: settle again after it."""
        try:
            yield
        except Exception as exc:
            if is_database_unreachable(exc):
                self._raise_from = None
            raise

    @abstractmethod
    async def fire_due(self, now: datetime) -> int:
        """Fire what is due at ``now``; return how many fired."""

    @abstractmethod
    async def seconds_to_next(self, now: datetime) -> float:
        """Seconds from ``now`` until the next deadline (``max_sleep_s`` when there is none)."""

    def start(self) -> None:
        self._task = asyncio.create_task(
            restart_on_failure(f"{self.name}-timer", self._run), name=f"{self.name}-timer"
        )

    def wake(self) -> None:
        """Look again now (the clock moved, or a nearer deadline was committed)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before looking: a wake() from here on is not lost
            wait = self._max_sleep_s
            try:
                now = self._clock()
                if await self.fire_due(now):
                    continue
                wait = await self.seconds_to_next(now)
            except DATABASE_ERRORS as exc:
                log.warning("timer_failed", timer=self.name, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(self._max_sleep_s, max(0.01, wait)))
