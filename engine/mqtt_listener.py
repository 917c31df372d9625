"""MQTT ingest: a shared subscription, each message committed before it is acknowledged.

Acknowledgement is two-fold and both happen only after the commit: the ``ack`` publish to the
module, and the MQTT PUBACK to the broker (paho's manual-ack mode). If the commit fails the
message is not PUBACKed; the engine reconnects with its persistent session so the broker delivers
it again. A reconnect loop with exponential backoff keeps the subscriber alive; a semaphore
bounds the messages in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import Counter

from engine.events_signal import signal_from_events
from engine.ingest_types import (
    InboundSignal,
    IngestResult,
    IngestSink,
    IngestUnavailable,
    SignalKind,
    Transport,
)
from protocols.mqtt_payloads import (
    AckStatus,
    AckV1,
    MqttPayloadError,
    StartVoiceSessionV1,
    TopicKind,
    decode_checkin,
    decode_events,
    encode,
    parse_topic,
    topic,
)

log = structlog.get_logger("engine.mqtt")

MQTT_MESSAGES = Counter(
    "alarmrelay_mqtt_messages_total",
    "MQTT messages from modules, by kind and result.",
    ["kind", "result"],
)
MQTT_RECONNECTS = Counter("alarmrelay_mqtt_reconnects_total", "Reconnections to the MQTT broker.")

_RESULT_STATUS = {
    IngestResult.ACCEPTED: AckStatus.ACCEPTED,
    IngestResult.DUPLICATE: AckStatus.DUPLICATE,
    IngestResult.REJECTED: AckStatus.REJECTED,
}


class MqttListener:
    """Subscribes to module topics through ``$share/<group>/…`` and feeds the ingest sink."""

    def __init__(
        self,
        *,
        sink: IngestSink,
        resolver: Callable[[str], str | None],
        host: str = "127.0.0.1",
        port: int = 1883,
        username: str | None = None,
        password: str | None = None,
        client_id: str = "alarmrelay-engine",
        shared_group: str = "alarmrelay",
        topic_prefix: str = "alarmrelay/v1",
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_inflight: int = 1000,
        max_payload_bytes: int = 16_384,
        session_expiry_s: int = 3600,
    ) -> None:
        self._sink = sink
        self._resolver = resolver
        self._host, self._port = host, port
        self._username, self._password = username, password
        self._client_id = client_id
        self._group = shared_group
        self._prefix = topic_prefix.rstrip("/")
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._inflight = asyncio.Semaphore(max_inflight)
        self._max_inflight = max_inflight
        self._max_payload = max_payload_bytes
        self._session_expiry_s = session_expiry_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnect_now = asyncio.Event()
        self._stopping = False
        self.connected = False
        self.subscribed = asyncio.Event()
        self._active: aiomqtt.Client | None = None

    @classmethod
    def from_settings(
        cls, settings: Any, *, sink: IngestSink, resolver: Callable[[str], str | None]
    ) -> MqttListener:
        """Build from ``engine.settings.MqttSettings``."""
        return cls(
            sink=sink,
            resolver=resolver,
            host=settings.host,
            port=settings.port,
            username=settings.username,
            password=settings.password,
            client_id=settings.client_id,
            shared_group=settings.shared_group,
            topic_prefix=settings.topic_prefix,
            reconnect_min_s=settings.reconnect_min_s,
            reconnect_max_s=settings.reconnect_max_s,
            max_inflight=settings.max_inflight,
            max_payload_bytes=settings.max_payload_bytes,
        )

    def _client(self) -> aiomqtt.Client:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
        properties.SessionExpiryInterval = self._session_expiry_s
        # The broker may have this many QoS 1 messages unacknowledged with us (we PUBACK only
        # after the commit); without it Mosquitto keeps 20 in flight and caps throughput.
        properties.ReceiveMaximum = min(65535, self._max_inflight)
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,  # resume the session: unacknowledged messages are redelivered
            properties=properties,
            max_queued_incoming_messages=0,
            max_inflight_messages=self._max_inflight,  # our acks in flight (paho defaults to 20)
        )
        # aiomqtt logs a warning per publish once more than 10 are awaiting their PUBACK; with up
        # to max_inflight acks in flight by design, that is normal here and the log line per
        # message cost ~8 % of the engine's CPU under load (py-spy).
        client.pending_calls_threshold = self._max_inflight
        return client

    async def run(self) -> None:
        """Connect, subscribe and process messages until :meth:`stop`; reconnect on failure."""
        delay = self._reconnect_min_s
        while not self._stopping:
            try:
                async with self._client() as client:
                    # paho's manual-ack mode: PUBACK only when we call ack() after the commit.
                    client._client.manual_ack_set(True)
                    base = f"$share/{self._group}/{self._prefix}/modules/+"
                    await client.subscribe([(f"{base}/checkin", 1), (f"{base}/events", 1)])
                    self.connected = True
                    self._active = client
                    self.subscribed.set()
                    delay = self._reconnect_min_s
                    log.info(
                        "mqtt_connected",
                        host=self._host,
                        port=self._port,
                        client_id=self._client_id,
                    )
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                if self.stopping:
                    break
                log.warning("mqtt_disconnected", error=str(exc), retry_in_s=delay)
            finally:
                self.connected = False
                self._active = None
                self.subscribed.clear()
            if self.stopping:
                break
            MQTT_RECONNECTS.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)

    async def _consume(self, client: aiomqtt.Client) -> None:
        self._reconnect_now.clear()
        messages = aiter(client.messages)
        reconnect = asyncio.create_task(self._reconnect_now.wait(), name="mqtt-reconnect-wait")
        try:
            while not self._stopping:
                nxt = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({nxt, reconnect}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(
                        asyncio.CancelledError, StopAsyncIteration, aiomqtt.MqttError
                    ):
                        await nxt
                    break
                message = nxt.result()
                await self._inflight.acquire()
                task = asyncio.create_task(self._handle(client, message), name="mqtt-message")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            reconnect.cancel()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=10)

    async def send_command(self, serial: str, command: StartVoiceSessionV1) -> None:
        """Publish a command (QoS 1) on the module's commands topic; raises when not connected."""
        client = self._active
        if client is None:
            raise RuntimeError("not connected to the MQTT broker")
        await client.publish(
            topic(self._prefix, serial, TopicKind.COMMANDS), encode(command), qos=1
        )

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping

    async def stop(self) -> None:
        """Stop consuming; in-flight messages finish first."""
        self._stopping = True
        self._reconnect_now.set()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        try:
            await self._process(client, message)
        except IngestUnavailable as exc:
            # Not committed: no ack, no PUBACK. Reconnect so the broker redelivers it.
            MQTT_MESSAGES.labels("any", "not_committed").inc()
            log.warning("mqtt_not_committed", topic=str(message.topic), reason=str(exc))
            self._reconnect_now.set()
        except aiomqtt.MqttError as exc:
            log.warning("mqtt_ack_failed", error=str(exc))
        finally:
            self._inflight.release()

    async def _process(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        now = datetime.now(UTC)
        raw = (
            message.payload
            if isinstance(message.payload, bytes)
            else str(message.payload or "").encode()
        )
        try:
            serial, kind = parse_topic(str(message.topic), self._prefix)
        except MqttPayloadError as exc:
            log.warning("mqtt_bad_topic", topic=str(message.topic), error=str(exc))
            self._puback(client, message)
            return
        account = self._resolver(serial)
        if account is None:
            # Unknown module: nothing to store it under; told so, and counted.
            MQTT_MESSAGES.labels(kind.value, "unknown_module").inc()
            await self._reply(
                client,
                serial,
                AckV1(msg_id=None, status=AckStatus.REJECTED, reason="unknown module"),
            )
            self._puback(client, message)
            return
        signal, msg_id = self._signal(serial, account, kind, raw, now)
        result = await self._sink.submit(signal)
        status = _RESULT_STATUS[result]
        MQTT_MESSAGES.labels(kind.value, status.value).inc()
        await self._reply(
            client, serial, AckV1(msg_id=msg_id, status=status, reason=signal.reject_reason)
        )
        self._puback(client, message)

    def _signal(
        self, serial: str, account: str, kind: TopicKind, raw: bytes, now: datetime
    ) -> tuple[InboundSignal, str | None]:
        common: dict[str, Any] = {
            "account": account,
            "transport": Transport.MQTT,
            "received_at": now,
            "peer": serial,
            "raw": raw,
        }
        try:
            if kind is TopicKind.CHECKIN:
                checkin = decode_checkin(raw, max_bytes=self._max_payload)
                return InboundSignal(
                    kind=SignalKind.CHECKIN, sent_at=checkin.sent_at, **common
                ), checkin.msg_id
            payload = decode_events(raw, max_bytes=self._max_payload)
        except MqttPayloadError as exc:
            return InboundSignal(kind=SignalKind.REJECTED, reject_reason=str(exc), **common), None
        return (
            signal_from_events(
                payload,
                account=account,
                transport=Transport.MQTT,
                received_at=now,
                peer=serial,
                raw=raw,
                dedupe_key=f"mqtt:{serial}:{payload.msg_id}",
            ),
            payload.msg_id,
        )

    async def _reply(self, client: aiomqtt.Client, serial: str, ack: AckV1) -> None:
        await client.publish(topic(self._prefix, serial, TopicKind.ACK), encode(ack), qos=1)

    @staticmethod
    def _puback(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        if message.qos > 0:
            client._client.ack(message.mid, message.qos)
