"""MqttListener against the real Mosquitto: no PUBACK before the commit, so nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Sequence

import aiomqtt
import pytest
from prometheus_client import REGISTRY

from engine.ingest_types import InboundSignal, IngestResult, IngestUnavailable
from engine.mqtt_listener import REJECTED_RAW_KEPT, MqttListener
from protocols.mqtt_payloads import StartVoiceSessionV1
from tests.support.tcp_proxy import TcpProxy


class FlakySink:
    """Our IngestSink interface: refuses the first N submissions (database down), then commits."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.committed: list[InboundSignal] = []
        self.refused = 0
        self.saturated = False

    async def submit(self, signal: InboundSignal) -> IngestResult:
        if self.refused < self.failures:
            self.refused += 1
            raise IngestUnavailable("database unavailable")
        self.committed.append(signal)
        return IngestResult.ACCEPTED


class TestRedelivery:
    async def test_uncommitted_message_is_delivered_again(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """A message whose commit failed is not acknowledged; after the reconnect the broker delivers it again."""
        prefix = f"redeliver-{secrets.token_hex(3)}/v1"
        sink = FlakySink(failures=1)
        listener = MqttListener(
            sink=sink,
            resolver=lambda serial: "ACC1" if serial == "S1" else None,
            host=mqtt_broker[0],
            port=mqtt_broker[1],
            client_id=f"engine-{secrets.token_hex(3)}",
            topic_prefix=prefix,
            reconnect_min_s=0.1,
        )
        task = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(listener.subscribed.wait(), 10)
            async with aiomqtt.Client(
                *mqtt_broker, identifier=f"mod-{secrets.token_hex(3)}"
            ) as module:
                await module.subscribe(f"{prefix}/modules/S1/ack", qos=1)
                body = {
                    "v": 1,
                    "msg_id": "only-once",
                    "events": [{"family": "cid", "code": "130", "qualifier": "1", "zone": 1}],
                }
                await module.publish(f"{prefix}/modules/S1/events", json.dumps(body), qos=1)
                async with asyncio.timeout(20):
                    async for message in module.messages:
                        ack = json.loads(message.payload)  # type: ignore[arg-type]
                        break
        finally:
            await listener.stop()
            task.cancel()
        assert sink.refused == 1
        assert [s.seq for s in sink.committed] == ["only-once"]
        # Its key is held as long as the session can bring the message again (its expiry).
        assert [s.dedupe_window_s for s in sink.committed] == [3600]
        assert ack == {"v": 1, "msg_id": "only-once", "status": "accepted", "reason": None}


class DownSink:
    """An IngestSink with enqueue that refuses at once while ``down`` (as the pipeline does when
    the database is unavailable), then commits at once."""

    saturated = False

    def __init__(self) -> None:
        self.down = True
        self.refused = 0
        self.committed: list[InboundSignal] = []

    async def submit(self, signal: InboundSignal) -> IngestResult:
        return await self.enqueue(signal)

    def enqueue(self, signal: InboundSignal) -> asyncio.Future[IngestResult]:
        if self.down:
            self.refused += 1
            raise IngestUnavailable("database unavailable")
        self.committed.append(signal)
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        future.set_result(IngestResult.ACCEPTED)
        return future


class TestRedeliveryWhileResuming:
    async def test_refusal_before_the_suback_still_reconnects(
        self, mqtt_broker: tuple[str, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A resumed session gets its unacknowledged messages right after CONNACK, before the
        SUBACK. One refused then must still make the session reconnect; once the database is
        back the message is committed and acked. (The request used to be cleared once the
        subscription was done: the session then sat on the message for good.)"""
        from engine import mqtt_client

        original = mqtt_client.MqttConnection.subscribe

        async def slow_subscribe(
            self: mqtt_client.MqttConnection,
            filters: Sequence[tuple[str, int]],
            **options: float,
        ) -> tuple[int, ...]:
            await asyncio.sleep(0.3)  # the redelivered message arrives before the SUBACK
            return await original(self, filters, **options)  # type: ignore[arg-type]

        monkeypatch.setattr(mqtt_client.MqttConnection, "subscribe", slow_subscribe)
        prefix = f"resume-{secrets.token_hex(3)}/v1"
        sink = DownSink()
        listener = _listener(sink, mqtt_broker, prefix)
        async with _module_of(listener, mqtt_broker, prefix) as module:
            await module.publish(f"{prefix}/modules/S1/events", _events("held"), qos=1)
            async with asyncio.timeout(10):
                while sink.refused < 3:  # refused on the first connection and two resumed ones
                    await asyncio.sleep(0.02)
            sink.down = False
            [ack] = await _acks(module, 1)
        assert (ack["msg_id"], ack["status"]) == ("held", "accepted")
        assert [s.seq for s in sink.committed] == ["held"]


class ControlledSink:
    """An IngestSink with enqueue: commits when the test says so, in any order."""

    saturated = False

    def __init__(self) -> None:
        self.waiting: list[tuple[InboundSignal, asyncio.Future[IngestResult]]] = []
        self.arrived = asyncio.Event()

    async def submit(self, signal: InboundSignal) -> IngestResult:
        return await self.enqueue(signal)

    def enqueue(self, signal: InboundSignal) -> asyncio.Future[IngestResult]:
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self.waiting.append((signal, future))
        self.arrived.set()
        return future

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.waiting) < count:
                self.arrived.clear()
                await self.arrived.wait()


def _listener(sink: object, broker: tuple[str, int], prefix: str, **kwargs: object) -> MqttListener:
    return MqttListener(
        sink=sink,  # type: ignore[arg-type]
        resolver=lambda serial: "ACC1" if serial.startswith("S") else None,
        host=broker[0],
        port=broker[1],
        client_id=f"engine-{secrets.token_hex(3)}",
        topic_prefix=prefix,
        reconnect_min_s=0.1,
        session_expiry_s=5,
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def _module_of(
    listener: MqttListener, broker: tuple[str, int], prefix: str
) -> AsyncIterator[aiomqtt.Client]:
    """Run ``listener`` until it is subscribed and yield a module's client that reads every
    module's ``ack`` topic; stop the listener afterwards."""
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.subscribed.wait(), 10)
        async with aiomqtt.Client(*broker, identifier=f"m-{secrets.token_hex(3)}") as module:
            await module.subscribe(f"{prefix}/modules/+/ack", qos=1)
            yield module
    finally:
        await listener.stop()
        task.cancel()


def _events(msg_id: str) -> str:
    return json.dumps(
        {"v": 1, "msg_id": msg_id, "events": [{"family": "cid", "code": "130", "zone": 1}]}
    )


async def _acks(module: aiomqtt.Client, count: int) -> list[dict[str, object]]:
    out = []
    async with asyncio.timeout(10):
        async for message in module.messages:
            out.append(json.loads(message.payload))  # type: ignore[arg-type]
            if len(out) == count:
                break
    return out


class TestAcks:
    async def test_unknown_module_and_oversized_payload_are_rejected(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """An unknown serial gets `unknown module` (not committed); a payload over
        max_payload_bytes is committed as rejected and acked with the size as the reason."""
        prefix = f"rej-{secrets.token_hex(3)}/v1"
        sink = FlakySink(failures=0)
        listener = _listener(sink, mqtt_broker, prefix, max_payload_bytes=200)
        async with _module_of(listener, mqtt_broker, prefix) as module:
            await module.publish(f"{prefix}/modules/X9/events", _events("u1"), qos=1)
            big = json.dumps({"v": 1, "msg_id": "big", "events": [], "pad": "x" * 3000})
            await module.publish(f"{prefix}/modules/S2/events", big, qos=1)
            acks = await _acks(module, 2)
        reasons = sorted(str(a["reason"]) for a in acks)
        assert reasons[0].startswith("payload of ") and "exceeds 200" in reasons[0]
        assert reasons[1] == "unknown module"
        # The status of a committed signal is the sink's answer (the pipeline says rejected).
        assert [a["status"] for a in acks if a["reason"] == "unknown module"] == ["rejected"]
        assert [s.kind.value for s in sink.committed] == ["rejected"]
        # Kept for audit by its beginning only: a flood of large payloads cannot fill the disk.
        assert len(big) > REJECTED_RAW_KEPT
        assert sink.committed[0].raw == big.encode()[:REJECTED_RAW_KEPT]

    async def test_unknown_serials_are_not_remembered(self, mqtt_broker: tuple[str, int]) -> None:
        """Messages from serials no account has, each under a topic of its own (a serial is any
        topic level, up to 64 KiB): answered `unknown module`, and forgotten. Their topics and
        ack topics were kept in the listener's caches, up to 300,000 of them whatever their
        length (gigabytes from a client publishing under made-up serials); only the topics of
        known modules are kept now."""
        prefix = f"unk-{secrets.token_hex(3)}/v1"
        listener = _listener(FlakySink(failures=0), mqtt_broker, prefix)
        async with _module_of(listener, mqtt_broker, prefix) as module:
            for n in range(20):
                serial = f"X{n:02d}" + "x" * 2000
                await module.publish(f"{prefix}/modules/{serial}/events", _events(f"u{n}"), qos=1)
            await module.publish(f"{prefix}/modules/S1/events", _events("known"), qos=1)
            acks = await _acks(module, 21)
        assert [a["reason"] for a in acks].count("unknown module") == 20
        assert list(listener._topics) == [f"{prefix}/modules/S1/events"]
        assert list(listener._ack_topics) == ["S1"]

    async def test_pubacks_leave_in_arrival_order(
        self, mqtt_broker: tuple[str, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Commits finishing in reverse order: each ack goes out at once, but the PUBACKs follow
        the order the messages arrived in (MQTT 5 §4.6), and none before its commit."""
        from engine import mqtt_client

        pubacked: list[int] = []
        original = mqtt_client.MqttConnection.puback

        def record(self: mqtt_client.MqttConnection, packet_id: int, reason_code: int = 0) -> None:
            pubacked.append(packet_id)
            original(self, packet_id, reason_code)

        monkeypatch.setattr(mqtt_client.MqttConnection, "puback", record)
        prefix = f"order-{secrets.token_hex(3)}/v1"
        sink = ControlledSink()
        listener = _listener(sink, mqtt_broker, prefix)
        async with _module_of(listener, mqtt_broker, prefix) as module:
            for n in range(5):
                await module.publish(f"{prefix}/modules/S1/events", _events(f"m{n}"), qos=1)
            await sink.wait_for(5)
            assert pubacked == []  # nothing committed yet
            for _, future in reversed(sink.waiting):
                future.set_result(IngestResult.ACCEPTED)
            acks = await _acks(module, 5)
            async with asyncio.timeout(5):
                while len(pubacked) < 5:
                    await asyncio.sleep(0.01)
        assert [a["msg_id"] for a in acks] == ["m4", "m3", "m2", "m1", "m0"]
        assert pubacked == sorted(pubacked)
        assert [s.seq for s, _ in sink.waiting] == ["m0", "m1", "m2", "m3", "m4"]

    async def test_several_sessions_share_the_subscription(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """connections=3: three client ids in the group; every message acked once."""
        prefix = f"sessions-{secrets.token_hex(3)}/v1"
        sink = FlakySink(failures=0)
        listener = _listener(sink, mqtt_broker, prefix, connections=3)
        async with _module_of(listener, mqtt_broker, prefix) as module:
            assert listener.connected
            for n in range(60):
                await module.publish(f"{prefix}/modules/S1/events", _events(f"m{n}"), qos=1)
            acks = await _acks(module, 60)
        assert sorted(str(a["msg_id"]) for a in acks) == sorted(f"m{n}" for n in range(60))
        assert len(sink.committed) == 60
        assert [s.client_id[-2:] for s in listener._sessions][1:] == ["-1", "-2"]


class TestPlainSubscription:
    async def test_without_a_shared_group_the_subscription_is_plain(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """shared_group unset: one engine on a plain subscription (Mosquitto keeps those in its
        persistent sessions across a broker restart; shared ones it does not)."""
        prefix = f"plain-{secrets.token_hex(3)}/v1"
        sink = FlakySink(failures=0)
        listener = _listener(sink, mqtt_broker, prefix, shared_group=None)
        async with _module_of(listener, mqtt_broker, prefix) as module:
            await module.publish(f"{prefix}/modules/S1/events", _events("p1"), qos=1)
            [ack] = await _acks(module, 1)
        assert (ack["msg_id"], ack["status"]) == ("p1", "accepted")


def _mqtt_connected() -> float | None:
    return REGISTRY.get_sample_value("alarmrelay_mqtt_connected")


async def _until_gauge(value: float, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while _mqtt_connected() != value:
            await asyncio.sleep(0.05)


class TestConnectedGauge:
    async def test_the_gauge_follows_the_broker_connection(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """alarmrelay_mqtt_connected (alert AlarmrelayMqttDisconnected) is 1 while the engine
        is subscribed, 0 while the broker is out of reach (modules' signals wait at the broker
        or are lost), 1 again once it is back."""
        proxy = TcpProxy(*mqtt_broker)
        await proxy.start()
        prefix = f"gauge-{secrets.token_hex(3)}/v1"
        listener = _listener(FlakySink(failures=0), ("127.0.0.1", proxy.port), prefix)
        task = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(listener.subscribed.wait(), 10)
            assert _mqtt_connected() == 1
            proxy.cut()
            await _until_gauge(0)
            assert not listener.connected
            proxy.restore()
            await _until_gauge(1)
        finally:
            await listener.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await proxy.stop()


class TestRetainedMessages:
    async def test_a_retained_message_is_not_taken_again_at_each_subscription(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """A module that publishes with the retain flag leaves its last check-in and alarm on the
        broker, which sends them to every new subscription. Taken as new messages, each
        reconnect of an engine (its resubscription) stored the check-in again (the module's
        last contact moved on: a dead module's Panel Not Responding never came while the engine
        reconnected now and then) and, once the alarm's dedupe window had passed, stored and
        forwarded the alarm again. The engine subscribes with Retain Handling 2: each message
        comes once, when it is published."""
        proxy = TcpProxy(*mqtt_broker)
        await proxy.start()
        prefix = f"retained-{secrets.token_hex(3)}/v1"
        sink = FlakySink(failures=0)
        listener = _listener(sink, ("127.0.0.1", proxy.port), prefix)
        try:
            async with _module_of(listener, mqtt_broker, prefix) as module:
                checkin = json.dumps({"v": 1, "msg_id": "c-1"})
                await module.publish(f"{prefix}/modules/S1/checkin", checkin, qos=1, retain=True)
                await module.publish(
                    f"{prefix}/modules/S1/events", _events("r-1"), qos=1, retain=True
                )
                await _acks(module, 2)
                async with asyncio.timeout(5):  # both PUBACKed (else they come again, rightly)
                    while listener._sessions[0].order:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the PUBACKs leave
                for _ in range(2):  # the broker connection drops; the engine subscribes again
                    proxy.cut()
                    await _until_gauge(0)
                    proxy.restore()
                    await _until_gauge(1)
                # The retained check-in also goes to a second engine's new session.
                other = FlakySink(failures=0)
                second = _listener(other, mqtt_broker, prefix)
                task = asyncio.create_task(second.run())
                try:
                    await asyncio.wait_for(second.subscribed.wait(), 10)
                    await asyncio.sleep(0.5)
                finally:
                    await second.stop()
                    task.cancel()
                for suffix in ("checkin", "events"):  # clear them
                    await module.publish(f"{prefix}/modules/S1/{suffix}", b"", qos=1, retain=True)
                await _acks(module, 2)
        finally:
            await proxy.stop()
        assert [(s.kind.value, s.seq) for s in sink.committed][:2] == [
            ("checkin", None),
            ("event", "r-1"),
        ]
        # After them only the clearing publishes (an empty check-in, an empty events payload).
        assert [s.kind.value for s in sink.committed[2:]] == ["checkin", "rejected"]
        assert other.committed == []


class TestBackoffWhileNotCommitting:
    async def test_a_database_outage_does_not_make_a_reconnect_loop(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """While the database is down every redelivered message is refused at once, and each
        refusal drops the session so that the broker delivers it again. The backoff went back
        to its minimum at every successful subscription, so the engine reconnected every
        0.25-0.5 s for the whole outage (each time taking, refusing and logging every message
        in flight again). A connection that did not stay up for reconnect_max_s does not reset
        the backoff: the reconnects slow down to one per reconnect_max_s, and the messages are
        still committed once the database is back."""
        prefix = f"backoff-{secrets.token_hex(3)}/v1"
        sink = DownSink()
        listener = _listener(sink, mqtt_broker, prefix, reconnect_max_s=0.8)

        def reconnects() -> float:
            return REGISTRY.get_sample_value("alarmrelay_mqtt_reconnects_total") or 0.0

        async with _module_of(listener, mqtt_broker, prefix) as module:
            before = reconnects()
            for n in range(5):
                await module.publish(f"{prefix}/modules/S1/events", _events(f"o{n}"), qos=1)
            await asyncio.sleep(3)
            during = reconnects() - before
            sink.down = False
            acks = await _acks(module, 5)
        # Waits of 0.05-0.1, 0.1-0.2, 0.2-0.4, then 0.4-0.8 s: at most 9 in 3 s (it was 30 and more).
        assert 2 <= during <= 10
        assert sorted(str(a["msg_id"]) for a in acks) == [f"o{n}" for n in range(5)]
        assert {a["status"] for a in acks} == {"accepted"}


def _persistent_module(broker: tuple[str, int], identifier: str) -> aiomqtt.Client:
    """A module's MQTT 5 client with a persistent session (the broker queues for it offline)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 300
    return aiomqtt.Client(
        *broker,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=properties,
    )


class TestCommandExpiry:
    async def test_a_module_offline_past_the_command_window_does_not_get_it_later(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """A start_voice_session command turns the module's siren off so that the station's
        call can be heard. Published while the module was offline, the broker kept it in the
        module's session without limit and delivered it whenever the module came back (an hour
        later: siren silenced during a fire, a call nobody waits for). The command carries a
        Message Expiry Interval of mqtt.command_retry_s: an online module gets it at once, one
        that comes back later does not get it at all."""
        prefix = f"cmd-{secrets.token_hex(3)}/v1"
        commands = f"{prefix}/modules/S1/commands"
        listener = _listener(FlakySink(failures=0), mqtt_broker, prefix, command_expiry_s=1)
        module_id = f"m-{secrets.token_hex(3)}"
        async with _module_of(listener, mqtt_broker, prefix):
            async with _persistent_module(mqtt_broker, module_id) as module:
                await module.subscribe(commands, qos=1)
                await listener.send_command("S1", StartVoiceSessionV1(signal_id=1))
                async with asyncio.timeout(5):
                    async for message in module.messages:
                        online = json.loads(message.payload)  # type: ignore[arg-type]
                        break
            # The module is offline; the command of the next alarm waits at the broker.
            await listener.send_command("S1", StartVoiceSessionV1(signal_id=2))
            await asyncio.sleep(2.5)
            late: list[object] = []
            async with _persistent_module(mqtt_broker, module_id) as module:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.5):
                        async for message in module.messages:
                            late = [json.loads(message.payload)]  # type: ignore[arg-type]
                            break
        assert online["signal_id"] == 1
        assert late == []


class TestRedeliveryWait:
    async def test_the_session_waits_subscribed_while_the_database_is_down(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """The backoff before a redelivery was waited out disconnected, so during a database
        outage the engine showed as cut from the broker nearly all the time
        (alarmrelay_mqtt_connected 0: AlarmrelayMqttDisconnected, a critical alert pointing
        at the broker; readiness 'mqtt' false) and a two-way-voice command found no connection
        to publish on. The wait is spent subscribed; only the reconnect itself is a gap."""
        prefix = f"waits-{secrets.token_hex(3)}/v1"
        sink = DownSink()
        listener = _listener(sink, mqtt_broker, prefix, reconnect_max_s=0.8)
        async with _module_of(listener, mqtt_broker, prefix) as module:
            await module.subscribe(f"{prefix}/modules/S1/commands", qos=1)
            await module.publish(f"{prefix}/modules/S1/events", _events("w1"), qos=1)
            samples = []
            for _ in range(60):  # 3 s
                await asyncio.sleep(0.05)
                samples.append(_mqtt_connected() == 1 and listener.connected)
            assert sink.refused >= 3  # redelivered and refused again meanwhile
            # A command finds the connection, but may fall in a reconnect's gap (or lose its
            # PUBACK to one): retried, as the voice session's own retries do.
            async with asyncio.timeout(10):
                while True:
                    try:
                        await listener.send_command("S1", StartVoiceSessionV1(signal_id=7))
                        break
                    except Exception:  # not connected, or the connection went
                        await asyncio.sleep(0.05)
            sink.down = False
            received = []
            async with asyncio.timeout(10):
                async for message in module.messages:
                    received.append(json.loads(message.payload))  # type: ignore[arg-type]
                    if len(received) == 2:
                        break
        assert sum(samples) >= 50  # it was 0 of 60
        assert {str(m.get("command") or m.get("status")) for m in received} == {
            "start_voice_session",
            "accepted",
        }


class TestUnforeseenSessionError:
    async def test_a_session_that_fails_unexpectedly_is_logged_counted_and_retried(
        self, mqtt_broker: tuple[str, int]
    ) -> None:
        """An error other than MqttError in a session (here a client id MQTT cannot carry,
        refused by the codec) ended MQTT ingest for good with nothing logged, the engine still
        up; the session is now restarted, each failure counted as a background task failure."""
        listener = MqttListener(
            sink=FlakySink(failures=0),
            resolver=lambda serial: None,
            host=mqtt_broker[0],
            port=mqtt_broker[1],
            client_id="engine-\x00",  # MQTT strings cannot hold U+0000: ValueError
            topic_prefix=f"unforeseen-{secrets.token_hex(3)}/v1",
            reconnect_min_s=0.05,
            reconnect_max_s=0.05,
        )
        labels = {"task": "mqtt-session"}
        before = REGISTRY.get_sample_value("alarmrelay_background_task_failures_total", labels)
        task = asyncio.create_task(listener.run())
        try:
            # Restarted after each failure (0.05 s apart): a second failure is counted. Polled
            # with a generous bound, not a fixed sleep (seen to fall short on a loaded host).
            deadline = asyncio.get_running_loop().time() + 10
            failures = 0.0
            while failures < 2 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
                assert not task.done(), task
                after = REGISTRY.get_sample_value(
                    "alarmrelay_background_task_failures_total", labels
                )
                failures = (after or 0) - (before or 0)
            assert failures >= 2
            assert not task.done(), task
        finally:
            await listener.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ValueError):
                await task
