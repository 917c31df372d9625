"""The live receiver registry across reloads: what did not change keeps its connections, link
polls and failover state; what changed is replaced, its old connections closed after the
retirement delay."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from structlog.testing import capture_logs

from engine.receiver_directory import ReceiverDirectory
from engine.station_model import ReceiverConfig
from engine.store.stations import StationStore
from receivers.dc09_client import Dc09ReceiverPool
from receivers.registry import ReceiverRegistry


async def _add_receiver(pool: asyncpg.Pool, station: str, name: str, port: int) -> None:
    await pool.execute("INSERT INTO stations (name) VALUES ($1) ON CONFLICT DO NOTHING", station)
    await pool.execute(
        "INSERT INTO receivers (name, station, host, port, ack_timeout_s, connections) "
        "VALUES ($1, $2, '127.0.0.1', $3, 1, 2)",
        name,
        station,
        port,
    )


async def _next_registry(directory: ReceiverDirectory, old: ReceiverRegistry) -> ReceiverRegistry:
    async with asyncio.timeout(10):
        while directory.current() is old:
            await asyncio.sleep(0.01)
    return directory.current()


def _polling(pool: Dc09ReceiverPool) -> bool:
    """Its NULL polls (link supervision, fail-back) are running: it was not closed."""
    return pool.connections[0]._poller is not None


class TestReload:
    async def test_an_unrelated_change_keeps_connections_and_failover_state(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A primary is down and its group failed over; a receiver is added at another station.
        The reloaded registry delivers through the same group, still failed over, on the same
        connections, which stay open after the old registry is retired. Changing the primary's
        own settings gives it new connections and a new group; its old ones are closed."""
        await _add_receiver(db_pool, "central", "rx-a", 1)  # nothing listens on port 1
        await _add_receiver(db_pool, "central", "rx-b", 2)
        directory = ReceiverDirectory(db_pool, failover_after=1, retire_after_s=0.05)
        await directory.start()
        try:
            first = directory.current()
            group = first.group("rx-a", "rx-b")
            group.failed_over = True  # as after the primary's failures
            primary = first.client("rx-a")

            await _add_receiver(db_pool, "elsewhere", "rx-c", 3)
            second = await _next_registry(directory, first)
            assert second.names == ["rx-a", "rx-b", "rx-c"]
            assert second.group("rx-a", "rx-b") is group and group.failed_over
            assert second.client("rx-a") is primary
            assert second.link_states()["rx-a"].failed_over
            await asyncio.sleep(0.3)  # the first registry is retired
            assert _polling(primary) and _polling(second.client("rx-b"))

            await db_pool.execute("UPDATE receivers SET port = 4 WHERE name = 'rx-a'")
            third = await _next_registry(directory, second)
            assert third.client("rx-a") is not primary
            assert third.client("rx-a").config.port == 4
            assert third.group("rx-a", "rx-b") is not group
            assert not third.group("rx-a", "rx-b").failed_over
            assert third.client("rx-b") is second.client("rx-b")
            await asyncio.sleep(0.3)
            assert not _polling(primary)  # replaced: closed once retired
            assert _polling(third.client("rx-a")) and _polling(third.client("rx-b"))
        finally:
            await directory.stop()


class TestStartGap:
    async def test_a_change_committed_while_the_receivers_load_is_not_lost(
        self, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The start's load has read the receivers; a receiver is added before it returns (a
        slow load). The change is NOTIFYed while the directory listens already: it is reloaded."""
        await _add_receiver(db_pool, "central", "rx-a", 1)
        read = StationStore.ip_receivers
        calls: list[int] = []

        async def slow_read(self: StationStore) -> list[ReceiverConfig]:
            receivers = await read(self)
            if not calls:  # the first (start) load: a change commits before it is applied
                await _add_receiver(db_pool, "central", "rx-late", 2)
            calls.append(len(receivers))
            return receivers

        monkeypatch.setattr(StationStore, "ip_receivers", slow_read)
        directory = ReceiverDirectory(db_pool, retire_after_s=0.05)
        await directory.start()
        try:
            async with asyncio.timeout(10):
                while "rx-late" not in directory.current().names:
                    await asyncio.sleep(0.05)
            assert directory.current().names == ["rx-a", "rx-late"]
        finally:
            await directory.stop()


class TestInvalidRow:
    async def test_a_receiver_row_this_engine_cannot_use_is_left_out_not_fatal(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A receiver row with a key no AES key can be made of (a manual edit: nothing else
        stores one) is logged and left out; the other receivers load, so the engine starts and
        delivers to them (one bad row used to fail every load: no engine start at all)."""
        await _add_receiver(db_pool, "central", "rx-good", 1)
        await _add_receiver(db_pool, "central", "rx-bad", 2)
        await db_pool.execute("UPDATE receivers SET key = 'not-a-key' WHERE name = 'rx-bad'")
        directory = ReceiverDirectory(db_pool, retire_after_s=0.05)
        with capture_logs() as logs:
            await directory.start()
        try:
            registry = directory.current()
            assert registry.names == ["rx-good"]
            group = registry.group("rx-bad", "rx-good")  # the backup delivers alone
            assert (group.primary, group.backup) == (registry.client("rx-good"), None)
        finally:
            await directory.stop()
        [invalid] = [e for e in logs if e["event"] == "receiver_row_invalid"]
        assert invalid["receiver"] == "rx-bad"
        assert invalid["log_level"] == "error"
        assert "hex key" in invalid["error"]
        assert "not-a-key" not in repr(logs)  # never the key
