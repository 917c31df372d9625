"""The live receiver registry: built from the ``receivers`` table, rebuilt when it changes.

A trigger (migration 0100) sends ``NOTIFY alarmrelay_receivers`` on any change; the registry is
then rebuilt so the dispatcher always delivers with the current configuration: receivers whose
settings changed get new connections, the others keep theirs with their link and failover state.
A replaced receiver's old connections stay open for ``retire_after_s`` so sends in flight on
them get their ACK.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

from engine import metrics
from engine.pg_listener import ChannelListener
from engine.store.stations import StationStore
from receivers.registry import ReceiverRegistry

log = structlog.get_logger("engine.receivers")

CHANNEL = "alarmrelay_receivers"


class ReceiverDirectory:
    """Holds the current :class:`ReceiverRegistry`."""

    def __init__(
        self, pool: asyncpg.Pool, *, failover_after: int = 3, retire_after_s: float = 30.0
    ) -> None:
        self._pool = pool
        self._failover_after = failover_after
        self._retire_after_s = retire_after_s
        self.registry = ReceiverRegistry([], failover_after=failover_after)
        self._reload = asyncio.Event()
        self._listener = ChannelListener(
            pool, CHANNEL, on_notify=self._on_notify, on_resync=self._resync
        )
        self._task: asyncio.Task[None] | None = None
        self._retiring: dict[asyncio.Task[None], ReceiverRegistry] = {}

    def current(self) -> ReceiverRegistry:
        return self.registry

    async def start(self) -> None:
        # LISTEN before the load: a change committed while it runs is notified, then reloaded.
        await self._listener.start()
        try:
            await self._load()
        except BaseException:
            await self._listener.stop()
            raise
        self._task = asyncio.create_task(self._run(), name="receiver-directory")

    def _on_notify(self, _payload: str) -> None:
        self._reload.set()

    async def _resync(self) -> None:
        self._reload.set()  # changes while the connection was down were not notified

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listener.stop()
        for task, old in list(self._retiring.items()):
            task.cancel()
            await old.close(keep=self.registry.pools())
        self._retiring.clear()
        await self.registry.close()

    async def _load(self) -> None:
        receivers = await StationStore(self._pool).ip_receivers()
        old = self.registry
        self.registry = ReceiverRegistry(
            receivers, failover_after=self._failover_after, previous=old
        )
        self.registry.start()
        for name in self.registry.names:
            metrics.export_receiver_counters(name)
        # New deliveries use the new registry at once. Sends still waiting for a station's ACK on
        # the old connections finish there; the old registry is closed after retire_after_s
        # (closing it now would fail them and make them retry with a second attempt).
        task = asyncio.create_task(self._retire(old), name="receiver-registry-retire")
        self._retiring[task] = old
        task.add_done_callback(lambda t: self._retiring.pop(t, None))
        log.info("receivers_loaded", receivers=self.registry.names)

    async def _retire(self, old: ReceiverRegistry) -> None:
        await asyncio.sleep(self._retire_after_s)
        # Connections the current registry (or another still retiring) took over stay open.
        others = [r for r in (self.registry, *self._retiring.values()) if r is not old]
        await old.close(keep=[pool for registry in others for pool in registry.pools()])
        # A receiver no registry has any more is gone: so is its dead-letter series (closing
        # its connections dropped its link and failover series).
        configured = {name for registry in others for name in registry.names}
        for name in old.names:
            if name not in configured:
                with contextlib.suppress(KeyError):
                    metrics.DEAD_LETTERED.remove(name)

    async def _run(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            try:
                await self._load()
            except Exception as exc:  # any error: retry, never end the task
                log.warning("receivers_reload_failed", error=repr(exc))
                await asyncio.sleep(1)
                self._reload.set()
