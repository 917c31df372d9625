"""Crash & Smash end to end: MQTT entry delay → disarm / alarm / silence → what the station gets."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import asyncpg
import msgspec
import pytest

from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.service import Engine
from engine.settings import CrashSmashSettings, SupervisionSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from tests.engine.test_ingest_e2e import running_engine, settings_for

FORWARD = ForwardingSettings(
    mode=ForwardingMode.ALWAYS, station_account="3333", primary_receiver="rx"
)


@pytest.fixture
async def setup(
    db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
) -> AsyncIterator[tuple[Engine, StationSimulator, str]]:
    sim = StationSimulator()
    port = await sim.start()
    await StationStore(db_pool).upsert(
        [Station(name="s", receivers=(ReceiverConfig(name="rx", host="127.0.0.1", port=port),))]
    )
    await AccountStore(db_pool).upsert_many(
        [Account(account="7777", module_serial="CS-1", forwarding=FORWARD)]
    )
    prefix = f"cs-{secrets.token_hex(3)}/v1"
    settings = msgspec.structs.replace(
        settings_for(
            database_url, mqtt=True, prefix=prefix, client_id=f"cs-{secrets.token_hex(3)}"
        ),
        crash_smash=CrashSmashSettings(dialer_delay_s=0, grace_s=0),
        supervision=SupervisionSettings(enabled=False),
    )
    async with running_engine(settings) as engine:
        await asyncio.wait_for(engine._mqtt.subscribed.wait(), 10)
        yield engine, sim, prefix
    await sim.stop()


async def publish(prefix: str, messages: list[dict[str, Any]]) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", 1883, identifier=f"mod-{secrets.token_hex(3)}"
    ) as client:
        await client.subscribe(f"{prefix}/modules/CS-1/ack", qos=1)
        for body in messages:
            await client.publish(f"{prefix}/modules/CS-1/events", json.dumps(body), qos=1)
            async with asyncio.timeout(10):
                async for _ in client.messages:
                    break  # wait for the commit ack of this message before the next


ENTRY = {"v": 1, "msg_id": "entry", "entry_delay": {"partition": 1, "zone": 3, "entry_delay_s": 1}}


class TestCrashSmash:
    async def test_no_disarm_raises_crash_and_smash(
        self, setup: tuple[Engine, StationSimulator, str], db_pool: asyncpg.Pool
    ) -> None:
        """Entry delay and then silence: a Crash & Smash burglary alarm on the entry zone reaches the station."""
        _, sim, prefix = setup
        await publish(prefix, [ENTRY])
        [got] = await sim.wait_for(1, timeout_s=15)
        assert (
            got.events[0].code,
            got.events[0].qualifier,
            got.events[0].zone,
            got.events[0].partition,
        ) == ("130", "1", 3, 1)
        row = await db_pool.fetchrow("SELECT category, reason FROM decisions")
        assert row is not None
        assert (row["category"], row["reason"]) == ("crash_smash", "forwarded")
        assert await db_pool.fetchval("SELECT state FROM pending_entries") == "fired"

    async def test_disarm_in_time_is_only_recorded(
        self, setup: tuple[Engine, StationSimulator, str], db_pool: asyncpg.Pool
    ) -> None:
        """Entry delay then disarm: no Crash & Smash; the entry is recorded as closed by the disarm."""
        _, sim, prefix = setup
        disarm = {
            "v": 1,
            "msg_id": "open",
            "events": [
                {"family": "cid", "code": "401", "qualifier": "1", "user": 2, "partition": 1}
            ],
        }
        await publish(prefix, [ENTRY, disarm])
        await sim.wait_for(1, timeout_s=10)  # the opening itself is forwarded (Arming)
        await asyncio.sleep(2.5)  # past the entry deadline
        assert [r.events[0].code for r in sim.received] == ["401"]
        row = await db_pool.fetchrow("SELECT state, closed_reason FROM pending_entries")
        assert row is not None
        assert (row["state"], row["closed_reason"]) == ("closed", "disarm")

    async def test_alarm_before_expiry_is_the_normal_alarm_only(
        self, setup: tuple[Engine, StationSimulator, str], db_pool: asyncpg.Pool
    ) -> None:
        """Entry delay then a burglary alarm: only that alarm reaches the station."""
        _, sim, prefix = setup
        alarm = {
            "v": 1,
            "msg_id": "alarm",
            "events": [
                {"family": "cid", "code": "134", "qualifier": "1", "zone": 3, "partition": 1}
            ],
        }
        await publish(prefix, [ENTRY, alarm])
        await sim.wait_for(1, timeout_s=10)
        await asyncio.sleep(2.5)
        assert [r.events[0].code for r in sim.received] == ["134"]
        assert await db_pool.fetchval("SELECT closed_reason FROM pending_entries") == "alarm"


class TestPerAccountDialerDelay:
    async def test_account_dialer_delay_moves_the_deadline(
        self, setup: tuple[Engine, StationSimulator, str], db_pool: asyncpg.Pool
    ) -> None:
        """An account's own dialer delay (120 s) replaces the default (0 s) in the entry deadline."""
        engine, sim, prefix = setup
        await AccountStore(db_pool).upsert_many(
            [Account(account="7777", module_serial="CS-1", forwarding=FORWARD, dialer_delay_s=120)]
        )
        for _ in range(200):  # the running engine hears of the change through NOTIFY
            row = engine.directory.get("7777")
            if row is not None and row.dialer_delay_s == 120:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the engine never saw the new dialer delay")
        await publish(prefix, [ENTRY])
        entry = await db_pool.fetchrow(
            "SELECT state, extract(epoch FROM deadline - opened_at) AS wait FROM pending_entries"
        )
        assert entry is not None and entry["state"] == "pending"
        # entry delay 1 s + dialer delay 120 s + grace 0 s, from the receive time (opened_at is
        # the commit time, a few milliseconds later)
        assert 119.0 <= float(entry["wait"]) <= 121.0
        await asyncio.sleep(1.5)  # past the default deadline: nothing fires
        assert sim.received == []
