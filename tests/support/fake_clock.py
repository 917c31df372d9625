"""A clock the test moves by hand, for the durable timers (STYLE.md #2: timer tests never sleep)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class FakeClock:
    """Callable like :func:`engine.deadline_timer.utc_now`.

    Frozen at ``start`` by default (unit tests: every instant is chosen by the test). With
    ``ticking=True`` it runs with the real clock plus what :meth:`advance` added, for a running
    engine whose listeners stamp contacts with the real time: an hour passes in one call.
    """

    def __init__(self, start: datetime | None = None, *, ticking: bool = False) -> None:
        self._start = start or datetime.now(UTC)
        self._ticking = ticking
        self._started = time.monotonic()
        self._offset = timedelta()

    def __call__(self) -> datetime:
        running = (
            timedelta(seconds=time.monotonic() - self._started) if self._ticking else timedelta()
        )
        return self._start + running + self._offset

    def advance(self, seconds: float) -> datetime:
        """Move the clock on by ``seconds``; returns the new time."""
        self._offset += timedelta(seconds=seconds)
        return self()
