"""Two-way voice: fire and CO alarms yield listen-in to the receiver and a voice command to the module."""

from __future__ import annotations

import asyncio
import json
import secrets

import aiomqtt
import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.commands.accounts import parse_accounts
from engine.errors import UserFacingError
from engine.settings import SupervisionSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule


class TestTwoWayVoice:
    async def test_fire_and_co_start_voice_sessions(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """Fire (SIA FA) and CO (CID 162) alarms: each is followed by LF/606 at the station and a module command."""
        sim = StationSimulator()
        port = await sim.start()
        await StationStore(db_pool).upsert(
            [
                Station(
                    name="s",
                    receivers=(
                        ReceiverConfig(name="rx", host="127.0.0.1", port=port, two_way_voice=True),
                    ),
                )
            ]
        )
        forwarding = ForwardingSettings(
            mode=ForwardingMode.ALWAYS,
            station_account="2222",
            primary_receiver="rx",
            two_way_voice=True,
        )
        await AccountStore(db_pool).upsert_many(
            [
                Account(
                    account="6543",
                    module_serial="TWV-1",
                    two_way_voice_capable=True,
                    forwarding=forwarding,
                )
            ]
        )
        prefix = f"twv-{secrets.token_hex(3)}/v1"
        settings = msgspec.structs.replace(
            settings_for(
                database_url, mqtt=True, prefix=prefix, client_id=f"e-{secrets.token_hex(3)}"
            ),
            supervision=SupervisionSettings(enabled=False),
        )
        commands: list[dict[str, object]] = []
        started = (
            REGISTRY.get_sample_value("alarmrelay_voice_sessions_total", {"result": "started"})
            or 0.0
        )
        try:
            async with (
                running_engine(settings) as engine,
                aiomqtt.Client(
                    *mqtt_broker, identifier=f"mod-{secrets.token_hex(3)}"
                ) as module_mqtt,
            ):
                await module_mqtt.subscribe(f"{prefix}/modules/TWV-1/commands", qos=1)
                await asyncio.wait_for(engine._mqtt.subscribed.wait(), 10)
                assert engine.dc09 is not None
                module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="6543")
                await module.connect()
                assert await module.send("SIA-DCS", "#6543|Nri1/FA004") is not None
                assert await module.send("ADM-CID", "#6543|1162 01 007") is not None
                assert (
                    await module.send("ADM-CID", "#6543|1130 01 008") is not None
                )  # burglary: no voice
                await module.close()
                async with asyncio.timeout(15):
                    async for message in module_mqtt.messages:
                        commands.append(json.loads(message.payload))  # type: ignore[arg-type]
                        if len(commands) == 2:
                            break
                await sim.wait_for(5, timeout_s=15)
                await asyncio.sleep(0.5)
        finally:
            await sim.stop()
        codes = [(r.events[0].family, r.events[0].code) for r in sim.received]
        assert codes == [
            ("sia", "FA"),
            ("sia", "LF"),
            ("cid", "162"),
            ("cid", "606"),
            ("cid", "130"),
        ]
        assert all(
            c["command"] == "start_voice_session" and c["siren_off"] is True for c in commands
        )
        assert {r.account for r in sim.received} == {"2222"}  # the same station account
        sessions = await db_pool.fetch(
            "SELECT signal_id, voice_session_at, voice_session_error FROM deliveries WHERE two_way_voice"
        )
        assert len(sessions) == 2
        assert all(
            s["voice_session_at"] is not None and s["voice_session_error"] is None for s in sessions
        )
        assert (
            REGISTRY.get_sample_value("alarmrelay_voice_sessions_total", {"result": "started"})
            == started + 2
        )
        # each command names the alarm it follows, and the session is recorded on that signal
        voice_signals = await db_pool.fetch(
            "SELECT id FROM signals WHERE events->0->>'code' IN ('FA', '162') ORDER BY id"
        )
        assert sorted(int(str(c["signal_id"])) for c in commands) == [
            r["id"] for r in voice_signals
        ]
        assert sorted(s["signal_id"] for s in sessions) == [r["id"] for r in voice_signals]

    def test_option_refused_when_module_not_capable(self) -> None:
        """Importing an account with two-way voice on a module that cannot do it is refused, naming why."""
        body = [{"account": "1", "forwarding": {"mode": "always", "two_way_voice": True}}]
        with pytest.raises(UserFacingError, match="two-way-voice capable"):
            parse_accounts(json.dumps(body).encode(), "accounts.json")
