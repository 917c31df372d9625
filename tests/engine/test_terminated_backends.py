"""A backend ended by ``pg_terminate_backend`` (or a server shutting down) while its pooled
connection was idle: asyncpg raises ``InternalClientError`` ("cannot switch to state …") at the
next query on it. The engine treats that as a lost connection: the outbox dispatcher keeps
claiming and forwarding, and a background loop that meets any error it did not foresee is
restarted, not left dead."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY

from engine.background_task import restart_on_failure
from engine.errors import DATABASE_ERRORS, is_database_unreachable
from engine.station_model import Station
from engine.station_sim import StationSimulator
from engine.store.stations import StationStore
from tests.engine.test_forwarding_e2e import provision, receiver
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule
from tests.support.tcp_proxy import proxied_database

BROKEN_STATE = "cannot switch to state 12; another operation (2) is in progress"


def _failures(task: str) -> float:
    value = REGISTRY.get_sample_value("alarmrelay_background_task_failures_total", {"task": task})
    return value or 0.0


def test_a_broken_connection_state_is_a_lost_connection() -> None:
    assert is_database_unreachable(asyncpg.InternalClientError(BROKEN_STATE))
    assert isinstance(asyncpg.InternalClientError(BROKEN_STATE), DATABASE_ERRORS)
    # asyncpg's other internal errors (a codec's bug) are not an outage
    assert not is_database_unreachable(asyncpg.InternalClientError("no encoder for OID 1234"))


async def test_a_loop_that_fails_unexpectedly_is_restarted() -> None:
    rounds: list[int] = []

    async def loop() -> None:
        rounds.append(len(rounds))
        if len(rounds) < 3:
            raise RuntimeError("a bug")

    before = _failures("test-loop")
    await asyncio.wait_for(restart_on_failure("test-loop", loop, pause_s=0.01), 5)
    assert rounds == [0, 1, 2]
    assert _failures("test-loop") == before + 2


async def test_cancelling_a_restarted_loop_ends_it() -> None:
    async def loop() -> None:
        await asyncio.sleep(60)

    task = asyncio.create_task(restart_on_failure("test-cancel", loop, pause_s=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _acked(port: int, data: str, *, seq: str) -> bool:
    module = Dc09TcpModule("127.0.0.1", port, account="1234")
    await module.connect()
    try:
        reply = await module.send("ADM-CID", data, seq=seq, timeout=1.0)
    finally:
        await module.close()
    return reply is not None and module.decode_reply(reply).token == "ACK"


async def test_forwarding_goes_on_after_backends_are_terminated(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    station = StationSimulator()
    await station.start()
    try:
        await StationStore(db_pool).upsert(
            [Station(name="central", receivers=(receiver("rx-primary", station.port),))]
        )
        await provision(db_pool)
        async with (
            proxied_database(database_url) as (proxy, url),
            running_engine(settings_for(url)) as engine,
        ):
            assert engine.dc09 is not None and engine.http is not None
            assert await _acked(engine.dc09.port, "#1234|1130 01 003", seq="0030")
            await station.wait_for(1)
            await asyncio.sleep(0.2)  # the delivery's outcome written: the pool is idle

            # Every connection gets the FATAL; the dispatcher claims (at least once a second)
            # on one of them before the close arrives.
            assert await proxy.terminate_backends(hold_s=2.5) > 0

            for zone in (4, 5, 6):
                # No ACK while the engine finds out the database is back: the module resends
                # (same seq, same frame), as a panel does.
                for _ in range(10):
                    if await _acked(engine.dc09.port, f"#1234|1130 01 00{zone}", seq=f"00{zone}0"):
                        break
                else:
                    raise AssertionError(f"zone {zone} never ACKed")
            received = await station.wait_for(4, timeout_s=20)
            assert [r.events[0].zone for r in received] == [3, 4, 5, 6]

            assert engine.dispatcher is not None and engine.dispatcher.running
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{engine.http.port}", timeout=10
            ) as client:
                ready = (await client.get("/readyz")).json()
            assert ready["checks"]["delivery"] is True
        pending = await db_pool.fetchval(
            "SELECT count(*) FROM deliveries WHERE state <> 'delivered'"
        )
        assert pending == 0
    finally:
        await station.stop()
