"""The loop shared by the durable timers (supervision, Crash & Smash).

A timer fires every due row in short transactions (``fire_due``), then sleeps until the next
deadline the database reports (``seconds_to_next``), never longer than ``max_sleep_s`` so new
shorter deadlines are picked up. Database trouble is logged and retried after ``max_sleep_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod

import asyncpg
import structlog

log = structlog.get_logger("engine.timers")


class DeadlineTimer(ABC):
    """Subclasses implement :meth:`fire_due` and :meth:`seconds_to_next`."""

    name = "timer"

    def __init__(self, *, max_sleep_s: float) -> None:
        self._max_sleep_s = max_sleep_s
        self._task: asyncio.Task[None] | None = None
        self.fired = 0

    @abstractmethod
    async def fire_due(self) -> int:
        """Fire what is due now; return how many fired."""

    @abstractmethod
    async def seconds_to_next(self) -> float:
        """Seconds until the next deadline (``max_sleep_s`` when there is none)."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-timer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            wait = self._max_sleep_s
            try:
                if await self.fire_due():
                    continue
                wait = await self.seconds_to_next()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("timer_failed", timer=self.name, error=repr(exc))
            await asyncio.sleep(min(self._max_sleep_s, max(0.01, wait)))
