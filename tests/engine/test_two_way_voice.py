"""Two-way voice: fire and CO alarms yield listen-in to the receiver and a voice command to the module;
after a failover the listen-in follows the alarm to its receiver (none to one without two-way voice),
and a command that cannot be published is retried and recorded (real Mosquitto, station-sim)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from datetime import timedelta
from typing import Any

import aiomqtt
import asyncpg
import msgspec
import pytest
import structlog
from prometheus_client import REGISTRY
from structlog.testing import CapturingLogger

import engine.delivery
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.claimed_rows import owned_from_record
from engine.commands.accounts import parse_accounts
from engine.errors import UserFacingError
from engine.service import Engine
from engine.settings import Settings, SupervisionSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from engine.voice_session import VoiceCommand, VoiceSessions
from protocols.signal import Event
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule
from tests.support.tcp_proxy import TcpProxy


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


# -- after a failover, and when the module's command cannot be published --------------------------

ALARM_ACCOUNT, SERIAL, STATION_ACCOUNT = "6543", "TWV-9", "2222"


def _receiver(name: str, port: int, *, voice: bool) -> ReceiverConfig:
    return ReceiverConfig(
        name=name, host="127.0.0.1", port=port, two_way_voice=voice, ack_timeout_s=1.0,
        null_poll_interval_s=0.3,
    )  # fmt: skip


async def _provision(pool: asyncpg.Pool, receivers: tuple[ReceiverConfig, ...]) -> None:
    """A two-way-voice account: primary ``rx-a``, backup ``rx-b`` when there is one."""
    await StationStore(pool).upsert([Station(name="s", receivers=receivers)])
    forwarding = ForwardingSettings(
        mode=ForwardingMode.ALWAYS,
        station_account=STATION_ACCOUNT,
        primary_receiver="rx-a",
        backup_receiver="rx-b" if len(receivers) > 1 else None,
        two_way_voice=True,
    )
    await AccountStore(pool).upsert_many(
        [
            Account(
                account=ALARM_ACCOUNT,
                module_serial=SERIAL,
                two_way_voice_capable=True,
                forwarding=forwarding,
            )
        ]
    )


def _settings(database_url: str, mqtt_port: int, *, retry_s: float = 60.0) -> Settings:
    prefix = f"twv-{secrets.token_hex(3)}/v1"
    base = settings_for(
        database_url, mqtt=True, prefix=prefix, client_id=f"e-{secrets.token_hex(3)}"
    )
    return msgspec.structs.replace(
        base,
        mqtt=msgspec.structs.replace(base.mqtt, port=mqtt_port, command_retry_s=retry_s),
        supervision=SupervisionSettings(enabled=False),
    )


async def _fire(engine: Engine) -> None:
    assert engine.dc09 is not None
    module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account=ALARM_ACCOUNT)
    await module.connect()
    assert await module.send("SIA-DCS", f"#{ALARM_ACCOUNT}|Nri1/FA004") is not None
    await module.close()


async def _voice_row(pool: asyncpg.Pool, state: str, timeout_s: float = 20.0) -> asyncpg.Record:
    """The fire alarm's delivery once its voice session is in ``state``."""
    async with asyncio.timeout(timeout_s):
        while True:
            row = await pool.fetchrow(
                "SELECT receiver_used, voice_session_state, voice_session_at, voice_session_error, "
                "voice_command_attempts FROM deliveries WHERE two_way_voice"
            )
            if row is not None and row["voice_session_state"] == state:
                return row
            await asyncio.sleep(0.05)


async def _commands(client: aiomqtt.Client, within_s: float) -> list[dict[str, object]]:
    """The commands the module receives within ``within_s`` seconds."""
    got: list[dict[str, object]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            async for message in client.messages:
                # (a comprehension would lose what arrived before the timeout)
                got.append(json.loads(message.payload))  # type: ignore[arg-type]  # noqa: PERF401
    return got


async def _fire_watching_the_module(
    settings: Settings, broker: tuple[str, int], pool: asyncpg.Pool, state: str
) -> tuple[asyncpg.Record, list[dict[str, object]]]:
    """Run the engine, fire the alarm, and return its delivery row once in ``state`` and the
    commands the module's subscription received."""
    async with (
        running_engine(settings) as engine,
        aiomqtt.Client(*broker, identifier=f"mod-{secrets.token_hex(3)}") as module,
    ):
        await module.subscribe(f"{settings.mqtt.topic_prefix}/modules/{SERIAL}/commands", qos=1)
        await asyncio.wait_for(engine._mqtt.subscribed.wait(), 10)
        await _fire(engine)
        row = await _voice_row(pool, state)
        return row, await _commands(module, within_s=1.0)


def _capture_delivery_logs(monkeypatch: pytest.MonkeyPatch) -> CapturingLogger:
    """Record what the dispatcher (and the voice sessions it runs) log, whatever the global
    structlog configuration of the test session is."""
    capture = CapturingLogger()
    monkeypatch.setattr(engine.delivery, "log", structlog.wrap_logger(capture, processors=[]))
    return capture


def _events(capture: CapturingLogger) -> dict[str, dict[str, Any]]:
    return {str(c.kwargs.get("event")): c.kwargs for c in capture.calls}


def _metric(name: str, result: str) -> float:
    return REGISTRY.get_sample_value(name, {"result": result}) or 0.0


class TestAfterFailover:
    async def test_backup_without_voice_gets_no_listen_in_and_the_module_no_command(
        self,
        db_pool: asyncpg.Pool,
        database_url: str,
        mqtt_broker: tuple[str, int],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Primary down: the fire alarm is delivered to a backup without two-way voice; no LF
        goes there, the siren is not turned off, and why is recorded, logged and counted."""
        dead = StationSimulator()
        dead_port = await dead.start()
        await dead.stop()
        backup = StationSimulator()
        await backup.start()
        await _provision(
            db_pool,
            (_receiver("rx-a", dead_port, voice=True), _receiver("rx-b", backup.port, voice=False)),
        )
        settings = _settings(database_url, mqtt_broker[1])
        capture = _capture_delivery_logs(monkeypatch)
        not_started = _metric("alarmrelay_voice_sessions_total", "receiver_unsupported")
        try:
            row, commands = await _fire_watching_the_module(
                settings, mqtt_broker, db_pool, "not_started"
            )
        finally:
            await backup.stop()
        assert [(r.account, r.events[0].code) for r in backup.received] == [(STATION_ACCOUNT, "FA")]
        assert commands == []
        assert row["receiver_used"] == "rx-b" and row["voice_session_at"] is None
        assert "backup 'rx-b'" in row["voice_session_error"]
        assert "does not support two-way voice" in row["voice_session_error"]
        assert row["voice_command_attempts"] == 0
        assert _metric("alarmrelay_voice_sessions_total", "receiver_unsupported") == not_started + 1
        logged = _events(capture)["voice_session_not_started"]
        assert (logged["result"], logged["account"]) == ("receiver_unsupported", ALARM_ACCOUNT)

    async def test_backup_with_voice_gets_the_listen_in_after_the_alarm(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """Primary down, backup with two-way voice: FA and then LF at the backup (the receiver
        that has the alarm), nothing at the primary, and the module's command."""
        primary = StationSimulator()
        primary_port = await primary.start()
        primary.set_mode("drop")  # connected, never answers
        backup = StationSimulator()
        await backup.start()
        await _provision(
            db_pool,
            (
                _receiver("rx-a", primary_port, voice=True),
                _receiver("rx-b", backup.port, voice=True),
            ),
        )
        settings = _settings(database_url, mqtt_broker[1])
        try:
            row, commands = await _fire_watching_the_module(
                settings, mqtt_broker, db_pool, "started"
            )
        finally:
            await primary.stop()
            await backup.stop()
        assert [r.events[0].code for r in backup.received] == ["FA", "LF"]
        # the primary saw only the alarm's unanswered attempts, never the listen-in
        assert {(r.events[0].code, r.reply) for r in primary.received} == {("FA", "drop")}
        assert row["receiver_used"] == "rx-b" and row["voice_session_error"] is None
        assert [c["siren_off"] for c in commands] == [True]


class TestCommandFailure:
    async def test_command_retried_until_the_broker_is_back(
        self,
        db_pool: asyncpg.Pool,
        database_url: str,
        mqtt_broker: tuple[str, int],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The engine's way to Mosquitto is cut when the alarm is delivered: the failed publish is
        recorded (command_retrying), logged and counted; once the broker is reachable again the
        retry reaches the module and the session is recorded started, with its failures."""
        station = StationSimulator()
        await station.start()
        await _provision(db_pool, (_receiver("rx-a", station.port, voice=True),))
        proxy = TcpProxy(*mqtt_broker)
        await proxy.start()
        settings = _settings(database_url, proxy.port, retry_s=60.0)
        capture = _capture_delivery_logs(monkeypatch)
        failed = _metric("alarmrelay_voice_commands_total", "failed")
        try:
            async with (
                running_engine(settings) as engine,
                aiomqtt.Client(*mqtt_broker, identifier=f"mod-{secrets.token_hex(3)}") as module,
            ):
                await module.subscribe(
                    f"{settings.mqtt.topic_prefix}/modules/{SERIAL}/commands", qos=1
                )
                await asyncio.wait_for(engine._mqtt.subscribed.wait(), 10)
                proxy.cut()
                await _fire(engine)
                retrying = await _voice_row(db_pool, "command_retrying")
                assert _metric("alarmrelay_voice_commands_total", "failed") >= failed + 1
                proxy.restore()
                row = await _voice_row(db_pool, "started", timeout_s=30)
                commands = await _commands(module, within_s=1.0)
        finally:
            await proxy.stop()
            await station.stop()
        assert "voice command not sent" in retrying["voice_session_error"]
        assert [r.events[0].code for r in station.received] == ["FA", "LF"]
        assert [(c["command"], c["siren_off"]) for c in commands] == [("start_voice_session", True)]
        assert row["voice_command_attempts"] >= 2
        assert row["voice_session_at"] is not None
        assert row["voice_session_error"].startswith(
            f"voice command sent on attempt {row['voice_command_attempts']}, after: "
        )
        logged = _events(capture)
        assert logged["voice_command_failed"]["retrying"] is True
        assert logged["voice_session"]["state"] == "started"

    async def test_command_given_up_is_recorded_incomplete(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """Mosquitto unreachable for longer than mqtt.command_retry_s: each attempt fails and is
        counted, and the session is recorded incomplete with the reason (the alarm and its LF are
        delivered all the same)."""
        station = StationSimulator()
        await station.start()
        await _provision(db_pool, (_receiver("rx-a", station.port, voice=True),))
        proxy = TcpProxy(*mqtt_broker)
        await proxy.start()
        proxy.cut()  # the broker cannot be reached at all
        settings = _settings(database_url, proxy.port, retry_s=2.0)
        failed = _metric("alarmrelay_voice_commands_total", "failed")
        incomplete = _metric("alarmrelay_voice_sessions_total", "incomplete")
        try:
            async with running_engine(settings) as engine:
                await _fire(engine)
                row = await _voice_row(db_pool, "incomplete")
        finally:
            await proxy.stop()
            await station.stop()
        assert [r.events[0].code for r in station.received] == ["FA", "LF"]
        # attempts at 0 s and 1 s; the next (at 3 s) would fall outside the 2 s window
        assert row["voice_command_attempts"] == 2
        assert "gave up after 2 attempts" in row["voice_session_error"]
        assert "voice command not sent" in row["voice_session_error"]
        assert _metric("alarmrelay_voice_commands_total", "failed") == failed + 2
        assert _metric("alarmrelay_voice_sessions_total", "incomplete") == incomplete + 1


class TestModuleThatCannotGetTheCommand:
    async def test_mqtt_disabled_no_listen_in_is_announced(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """MQTT off: the module can never be told to open the session. The station got 606/LF
        anyway and its operator waited for audio that could not come; now the alarm alone
        goes, and the delivery says why no session started."""
        station = StationSimulator()
        await station.start()
        await _provision(db_pool, (_receiver("rx-a", station.port, voice=True),))
        settings = msgspec.structs.replace(
            settings_for(database_url), supervision=SupervisionSettings(enabled=False)
        )
        impossible = _metric("alarmrelay_voice_sessions_total", "command_impossible")
        try:
            async with running_engine(settings) as engine:
                await _fire(engine)
                row = await _voice_row(db_pool, "not_started")
                await asyncio.sleep(0.3)  # a listen-in would follow the alarm's ACK at once
        finally:
            await station.stop()
        assert [r.events[0].code for r in station.received] == ["FA"]
        assert row["voice_session_error"] == (
            "voice command not possible: MQTT is disabled: no listen-in sent"
        )
        assert row["voice_command_attempts"] == 0
        assert _metric("alarmrelay_voice_sessions_total", "command_impossible") == impossible + 1

    async def test_an_account_without_module_serial_gets_no_listen_in(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """No module serial (nothing to publish to): no listen-in, no command attempt."""
        receiver = _RecordingReceiver()
        commands: list[str] = []

        async def command(account: str, signal_id: int, siren_off: bool) -> None:
            commands.append(account)

        def problem(account: str) -> str | None:
            return f"account {account} has no module serial for MQTT commands"

        sessions = VoiceSessions(db_pool, command, command_problem=problem)
        delivery = await _fire_delivery(db_pool)
        await sessions.after_delivery(
            owned_from_record(delivery), "rx-a", _Registry(receiver), structlog.get_logger()
        )
        await sessions.stop()
        state = await db_pool.fetchval(
            "SELECT voice_session_state FROM deliveries WHERE id = $1", delivery["id"]
        )
        assert (state, receiver.sent, commands) == ("not_started", [], [])


class _Acked(msgspec.Struct):
    outcome: str = "acked"
    error: str | None = None


class _AckingReceiver:
    """A receiver whose listen-in is ACKed at once (the station side is not under test here)."""

    config = msgspec.structs.replace(
        ReceiverConfig(name="rx-a", host="127.0.0.1", port=1), two_way_voice=True
    )

    async def send(self, *, account: str, event: Event, seq: str | None = None) -> _Acked:
        return _Acked()


class _RecordingReceiver(_AckingReceiver):
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, *, account: str, event: Event, seq: str | None = None) -> _Acked:
        self.sent.append(event.code)
        return _Acked()


class _UnansweredReceiver(_RecordingReceiver):
    async def send(self, *, account: str, event: Event, seq: str | None = None) -> _Acked:
        self.sent.append(event.code)
        return _Acked(outcome="failed", error="no answer within the ACK timeout")


class _Registry:
    def __init__(self, receiver: _AckingReceiver | None = None) -> None:
        self._receiver = receiver or _AckingReceiver()

    def client(self, name: str) -> _AckingReceiver:
        return self._receiver


async def _fire_delivery(pool: asyncpg.Pool) -> asyncpg.Record:
    """A delivered fire alarm's outbox row with two-way voice on."""
    delivery: asyncpg.Record | None = await pool.fetchrow(
        """
        INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                priority, event, primary_receiver, seq, received_at,
                                two_way_voice)
        VALUES (1, 0, $1, 'lane', $2, 0, $3::jsonb, 'rx-a', '0001', now(), true)
        RETURNING *
        """,
        ALARM_ACCOUNT,
        STATION_ACCOUNT,
        '{"family":"sia","code":"FA","zone":4,"classification":{"category":"alarms"}}',
    )
    assert delivery is not None
    return delivery


async def _record_after_stop(
    pool: asyncpg.Pool, command: VoiceCommand, reached: asyncio.Event, **retry: float
) -> asyncpg.Record:
    """Start the voice session of a delivered fire alarm with ``command``, stop the sessions once
    ``reached`` is set (as an engine stopping), and return the delivery's voice record."""
    delivery = await _fire_delivery(pool)
    sessions = VoiceSessions(pool, command, **retry)
    await sessions.after_delivery(
        owned_from_record(delivery), "rx-a", _Registry(), structlog.get_logger()
    )
    await asyncio.wait_for(reached.wait(), 5)
    await sessions.stop(timeout_s=0.05)
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT voice_session_state, voice_session_error, voice_command_attempts "
        "FROM deliveries WHERE id = $1",
        delivery["id"],
    )
    assert row is not None
    return row


class TestStopDuringTheCommand:
    async def test_an_engine_stopping_during_the_first_attempt_leaves_a_record(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The first publish waits for its PUBACK when the engine stops: the delivery shows
        command_retrying with why (it had no voice record at all: the first attempt was not yet
        a failure, and the stop cancelled it)."""
        started = asyncio.Event()

        async def slow_command(account: str, signal_id: int, siren_off: bool) -> None:
            started.set()
            await asyncio.sleep(5)  # no PUBACK yet

        row = await _record_after_stop(db_pool, slow_command, started)
        assert row["voice_session_state"] == "command_retrying"
        assert "the engine stopped" in row["voice_session_error"]
        assert row["voice_command_attempts"] == 1  # the one under way

    async def test_an_engine_stopping_between_retries_keeps_why_they_failed(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Two publishes failed and the engine stops while the next one waits: the record keeps
        the failure and the attempts made, and adds the stop (it said only "the engine
        stopped", with 0 attempts)."""
        failed = asyncio.Event()
        calls = 0

        async def unreachable_broker(account: str, signal_id: int, siren_off: bool) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                failed.set()
            raise RuntimeError("not connected to the MQTT broker")

        row = await _record_after_stop(db_pool, unreachable_broker, failed, retry_base_s=0.5)
        assert row["voice_session_state"] == "command_retrying"
        assert row["voice_command_attempts"] == 2
        assert "not connected to the MQTT broker" in row["voice_session_error"]
        assert "the engine stopped" in row["voice_session_error"]


class TestListenInNotAcknowledged:
    @pytest.mark.parametrize(
        ("receiver", "siren_off", "state"),
        [(_RecordingReceiver, True, "started"), (_UnansweredReceiver, False, "incomplete")],
    )
    async def test_the_siren_is_silenced_only_when_an_operator_is_listening(
        self, db_pool: asyncpg.Pool, receiver: type[_RecordingReceiver], siren_off: bool, state: str
    ) -> None:
        """The station did not ACK the listen-in: nobody is known to be listening, so the
        module is told to call with its siren on (it was turned off, silencing the fire or CO
        warning for a call that may go unheard)."""
        station = receiver()
        commands: list[tuple[str, bool]] = []

        async def command(account: str, signal_id: int, siren: bool) -> None:
            commands.append((account, siren))

        sessions = VoiceSessions(db_pool, command)
        delivery = await _fire_delivery(db_pool)
        await sessions.after_delivery(
            owned_from_record(delivery), "rx-a", _Registry(station), structlog.get_logger()
        )
        await sessions.stop()
        row = await db_pool.fetchrow(
            "SELECT voice_session_state, voice_session_error FROM deliveries WHERE id = $1",
            delivery["id"],
        )
        assert row is not None
        assert (station.sent, commands) == (["LF"], [(ALARM_ACCOUNT, siren_off)])
        assert row["voice_session_state"] == state
        if not siren_off:
            assert "listen-in not acknowledged" in row["voice_session_error"]
            assert "siren left on" in row["voice_session_error"]


class TestLateAlarm:
    async def test_an_alarm_delivered_long_after_it_came_in_starts_no_session(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A fire alarm requeued or retried through a station outage reaches the station ten
        minutes late: it got a listen-in and a siren-off command as if it had just happened,
        for a session nobody expects. It goes alone; the delivery says why."""
        receiver = _RecordingReceiver()
        commands: list[str] = []

        async def command(account: str, signal_id: int, siren_off: bool) -> None:
            commands.append(account)

        sessions = VoiceSessions(db_pool, command)
        delivery = await _fire_delivery(db_pool)
        late = msgspec.structs.replace(
            owned_from_record(delivery), received_at=delivery["received_at"] - timedelta(minutes=10)
        )
        await sessions.after_delivery(late, "rx-a", _Registry(receiver), structlog.get_logger())
        await sessions.stop()
        row = await db_pool.fetchrow(
            "SELECT voice_session_state, voice_session_error FROM deliveries WHERE id = $1",
            delivery["id"],
        )
        assert row is not None
        assert (row["voice_session_state"], receiver.sent, commands) == ("not_started", [], [])
        assert "after it came in" in row["voice_session_error"]
