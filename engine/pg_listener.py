"""LISTEN on one PostgreSQL channel for the engine's lifetime, surviving the connection's loss.

The account and receiver directories follow their tables through NOTIFY. A notification sent
while the listening connection is down is never delivered, so after every reconnect the owner
resynchronises in full (``on_resync``). The connection is taken from the pool and held; it is
checked every ``check_interval_s`` (a connection can die without the socket noticing), and any
error while reconnecting or resynchronising is retried with backoff, never left to end the task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger("engine.pg_listener")


class ChannelListener:
    """Calls ``on_notify(payload)`` for each notification on ``channel``; after the connection
    was lost and is back, awaits ``on_resync()`` (changes in between were not notified)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: str,
        *,
        on_notify: Callable[[str], None],
        on_resync: Callable[[], Awaitable[None]],
        check_interval_s: float = 15.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._on_notify = on_notify
        self._on_resync = on_resync
        self._check_interval_s = check_interval_s
        self._max_backoff_s = max_backoff_s
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def start(self) -> None:
        """LISTEN now (errors propagate: the engine is starting), then watch the connection."""
        await self._listen()
        self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._release()

    async def _listen(self) -> None:
        conn = await self._pool.acquire()
        self._conn = conn
        conn.add_termination_listener(self._terminated)
        await conn.add_listener(self._channel, self._notified)

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.remove_termination_listener(self._terminated)
        try:
            closed = conn.is_closed()
        except asyncpg.InterfaceError:
            return  # lost while held: the pool has taken it back already
        if not closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.remove_listener(self._channel, self._notified), 5)
            conn.terminate()  # it failed its check, or we stop: not handed to anyone else
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.release(conn), 5)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)

    def _terminated(self, _conn: Any) -> None:
        self._lost.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._check_interval_s)
            if not self._lost.is_set() and await self._alive():
                continue
            try:
                await self._reconnect()
            except Exception as exc:  # never end the task: the next round tries again
                log.error("listen_error", channel=self._channel, error=repr(exc))
                self._lost.set()
                await asyncio.sleep(1)

    async def _alive(self) -> bool:
        conn = self._conn
        try:
            await asyncio.wait_for(conn.execute("SELECT 1"), 5)
        except Exception as exc:
            log.warning("listen_connection_check_failed", channel=self._channel, error=repr(exc))
            return False
        return True

    async def _reconnect(self) -> None:
        log.warning("listen_connection_lost", channel=self._channel)
        delay = 0.5
        while True:
            self._lost.clear()
            await self._release()
            try:
                await self._listen()
                await self._on_resync()
            except Exception as exc:  # any error: retry, never end the task
                log.warning(
                    "listen_reconnect_failed",
                    channel=self._channel,
                    error=repr(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
                continue
            if self._lost.is_set():
                continue  # lost again while resynchronising: what it read may be stale
            self.reconnects += 1
            log.info("listen_connection_restored", channel=self._channel)
            return
