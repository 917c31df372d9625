"""Supervision: Panel Not Responding and its restore, durable and single-fire (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.forwarding_stage import ForwardingStage
from engine.settings import Settings, SupervisionSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from engine.supervision import SupervisionTimer
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule

FORWARD = ForwardingSettings(
    mode=ForwardingMode.ALWAYS, station_account="4444", primary_receiver="rx"
)


def fast(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, supervision=SupervisionSettings(grace_s=0, max_sleep_s=0.1)
    )


@pytest.fixture
async def station(db_pool: asyncpg.Pool) -> AsyncIterator[StationSimulator]:
    sim = StationSimulator()
    port = await sim.start()
    await StationStore(db_pool).upsert(
        [Station(name="s", receivers=(ReceiverConfig(name="rx", host="127.0.0.1", port=port),))]
    )
    await AccountStore(db_pool).upsert_many(
        [Account(account="1234", supervision_interval_s=3600, forwarding=FORWARD)]
    )
    yield sim
    await sim.stop()


async def contact(port: int) -> None:
    module = Dc09TcpModule("127.0.0.1", port, account="1234")
    await module.connect()
    assert await module.send("NULL", "") is not None
    await module.close()


async def expire(pool: asyncpg.Pool) -> None:
    """The deadline passes (instead of waiting an hour: the timer reads the database clock)."""
    await pool.execute("UPDATE supervision SET deadline = now() - interval '1 second'")


def pnr_codes(sim: StationSimulator) -> list[tuple[str, str | None]]:
    return [
        (r.events[0].code, r.events[0].qualifier)
        for r in sim.received
        if r.events and r.events[0].code == "356"
    ]


class TestMissAndRestore:
    async def test_miss_then_restore_reach_the_station(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """A silent module raises CID 356 (Q=1) at the station; its next contact sends the restore (Q=3)."""
        async with running_engine(fast(settings_for(database_url))) as engine:
            assert engine.dc09 is not None
            await contact(engine.dc09.port)
            deadline = await db_pool.fetchval(
                "SELECT deadline FROM supervision WHERE account = '1234'"
            )
            assert deadline is not None
            await expire(db_pool)
            await station.wait_for(1, timeout_s=10)
            assert pnr_codes(station) == [("356", "1")]
            await contact(engine.dc09.port)
            await station.wait_for(2, timeout_s=10)
        assert pnr_codes(station) == [("356", "1"), ("356", "3")]
        assert (
            await db_pool.fetchval("SELECT missed FROM supervision WHERE account = '1234'") is False
        )
        reasons = await db_pool.fetch("SELECT category, reason FROM decisions ORDER BY received_at")
        assert [(r["category"], r["reason"]) for r in reasons] == [
            ("panel_not_responding", "forwarded")
        ] * 2

    async def test_restart_between_deadline_and_firing_fires_once(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """The deadline passes while no engine runs: the next engine fires it once; later restarts do not again."""
        async with running_engine(fast(settings_for(database_url))) as engine:
            assert engine.dc09 is not None
            await contact(engine.dc09.port)
        await expire(db_pool)
        for _ in range(2):
            async with running_engine(fast(settings_for(database_url))):
                await station.wait_for(1, timeout_s=10)
                await asyncio.sleep(0.5)
        assert pnr_codes(station) == [("356", "1")]
        assert (
            await db_pool.fetchval("SELECT count(*) FROM signals WHERE transport = 'server'") == 1
        )


class TestSingleFire:
    async def test_two_timers_fire_each_deadline_once(self, db_pool: asyncpg.Pool) -> None:
        """Two timers (as in two engines) racing over 60 due deadlines raise exactly 60 misses."""
        accounts = [Account(account=f"{0xC00 + i:X}") for i in range(60)]
        await AccountStore(db_pool).upsert_many(accounts)
        await db_pool.execute(
            "INSERT INTO supervision (account, deadline) SELECT a, now() - interval '1 minute' FROM unnest($1::text[]) a",
            [a.account for a in accounts],
        )
        directory = AccountDirectory()
        directory.load(accounts)
        timers = [
            SupervisionTimer(db_pool, ForwardingStage(directory), duplicate_window_s=600, batch=7)
            for _ in range(2)
        ]
        for _ in range(12):
            await asyncio.gather(*(t.fire_due() for t in timers))
        assert sum(t.fired for t in timers) == 60
        assert all(t.fired > 0 for t in timers)
        assert (
            await db_pool.fetchval("SELECT count(*) FROM signals WHERE transport = 'server'") == 60
        )
        assert await db_pool.fetchval("SELECT count(*) FROM supervision WHERE missed") == 60
