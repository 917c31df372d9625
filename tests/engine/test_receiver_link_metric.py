"""The per-receiver series the alerts use cover the receivers configured now:
``alarmrelay_receiver_link_up{receiver}`` (AlarmrelayReceiverDown) of a deleted receiver goes, one
whose settings changed keeps following its new connections; the failover and dead-letter counters
exist at 0 before their first event (real PostgreSQL, NOTIFY and rebuild)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import asyncpg
from prometheus_client import REGISTRY

from engine.receiver_directory import ReceiverDirectory
from engine.station_model import ReceiverConfig, Station
from engine.store.stations import StationStore


def _closed_port() -> int:
    """A port nothing listens on (the receiver never answers: its link stays down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _receiver(name: str, port: int, line_prefix: str = "0") -> ReceiverConfig:
    return ReceiverConfig(
        name=name, host="127.0.0.1", port=port, receiver_number="1", line_prefix=line_prefix,
        ack_timeout_s=0.5, null_poll_interval_s=0.2, connections=1,
    )  # fmt: skip


def _link_up(name: str) -> float | None:
    return REGISTRY.get_sample_value("alarmrelay_receiver_link_up", {"receiver": name})


def _sample(series: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(series, labels)


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class TestReceiverMetrics:
    async def test_a_deleted_receiver_leaves_no_link_series(self, db_pool: asyncpg.Pool) -> None:
        """A station decommissions a receiver that no longer answers: its link_up series (0)
        would have paged AlarmrelayReceiverDown until the engine restarted. It goes once the
        old connections are retired; the receiver kept (its settings changed) is still shown."""
        port = _closed_port()
        store = StationStore(db_pool)
        await store.upsert(
            [Station(name="s", receivers=(_receiver("rx-gone", port), _receiver("rx-kept", port)))]
        )
        directory = ReceiverDirectory(db_pool, retire_after_s=0.1)
        await directory.start()
        try:
            assert _link_up("rx-gone") == 0
            assert _link_up("rx-kept") == 0
            # counted series alerts use increase() on exist at 0 before their first event
            for name in ("rx-gone", "rx-kept"):
                assert _sample("alarmrelay_receiver_failovers_total", primary=name) == 0
                assert _sample("alarmrelay_deliveries_dead_lettered_total", receiver=name) == 0
                assert _sample("alarmrelay_deliveries_total", receiver=name, outcome="duh") == 0
            async with db_pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM receivers WHERE name = 'rx-gone'")
                await conn.execute("UPDATE receivers SET line_prefix = '9' WHERE name = 'rx-kept'")
            await _until(lambda: directory.current().names == ["rx-kept"])
            await asyncio.sleep(0.5)  # the old registry is retired
            assert _link_up("rx-gone") is None
            assert _sample("alarmrelay_receiver_failovers_total", primary="rx-gone") is None
            assert _sample("alarmrelay_deliveries_dead_lettered_total", receiver="rx-gone") is None
            assert _link_up("rx-kept") == 0
            # the new connections still drive the series
            kept = directory.current().client("rx-kept").connections[0]
            kept._set_link(True)
            assert _link_up("rx-kept") == 1
        finally:
            await directory.stop()
