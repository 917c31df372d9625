"""MQTT ingest: a shared subscription, each message committed before it is acknowledged.

Acknowledgement is two-fold and both happen only after the commit: the ``ack`` publish to the
module (QoS 1), and, once the broker has taken that ack (its PUBACK), our PUBACK of the module's
message. PUBACKs leave in the order the messages arrived (MQTT 5 §4.6), so a message is PUBACKed
only when it and every message before it are done. If the commit fails the message is not
PUBACKed: the engine reconnects with its persistent session (clean start false) and the broker
delivers it again (a message committed meanwhile is then acked ``duplicate``).

The client is alarmrelay's own (:mod:`engine.mqtt_client` over :mod:`protocols.mqtt_codec`): each
message is handled in the read callback with no task of its own, the commit is a future from the
sink (:meth:`engine.pipeline.IngestPipeline.enqueue`), and the writes of one loop iteration leave
in one system call. Why not aiomqtt/paho: docs/mqtt.md, "Client". The broker may have at most
``max_inflight`` messages unacknowledged with us (our Receive Maximum); past that (QoS 0 messages
count too) reading pauses. A reconnect loop with exponential backoff keeps the subscriber alive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
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
from engine.mqtt_client import CONNECTION_LOST, MqttConnection, MqttError, connect
from protocols.mqtt_codec import Publish, reason_name
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
_COUNTED: dict[tuple[str, str], Any] = {}  # bound label children: one dict lookup per message


def _count(kind: str, result: str) -> None:
    child = _COUNTED.get((kind, result))
    if child is None:
        child = _COUNTED[kind, result] = MQTT_MESSAGES.labels(kind, result)
    child.inc()


class _Message:
    """One received message until it is acknowledged (or its connection is gone)."""

    __slots__ = ("connection", "done", "packet_id", "puback")

    def __init__(self, connection: MqttConnection, packet_id: int) -> None:
        self.connection = connection
        self.packet_id = packet_id  # 0 for QoS 0: nothing to PUBACK
        self.done = False
        self.puback = False  # done and committed: PUBACK it when its turn comes


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
        max_packet_bytes: int = 1_048_576,
        keep_alive_s: int = 30,
        session_expiry_s: int = 3600,
    ) -> None:
        self._sink = sink
        enqueue = getattr(sink, "enqueue", None)
        # The pipeline's enqueue gives a future per signal (no task); any other sink is awaited.
        self._enqueue: Callable[[InboundSignal], asyncio.Future[IngestResult]] = (
            enqueue if callable(enqueue) else self._submit_task
        )
        self._resolver = resolver
        self._host, self._port = host, port
        self._username, self._password = username, password
        self._client_id = client_id
        self._group = shared_group
        self._prefix = topic_prefix.rstrip("/")
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._max_inflight = min(max_inflight, 65_535)
        self._max_payload = max_payload_bytes
        self._max_packet = max(max_packet_bytes, max_payload_bytes + 1024)
        self._keep_alive_s = keep_alive_s
        self._session_expiry_s = session_expiry_s
        self._current: MqttConnection | None = None  # the connection messages now come on
        self._order: deque[_Message] = deque()  # its QoS 1 messages, in arrival order
        self._paused = False
        self._inflight = 0  # messages being committed and acked, all connections
        self._drained = asyncio.Event()
        self._drained.set()
        self._reconnect_now = asyncio.Event()
        self._stopping = False
        self.connected = False
        self.subscribed = asyncio.Event()
        self._active: MqttConnection | None = None
        self._ack_topics: dict[str, str] = {}

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
            max_packet_bytes=settings.max_packet_bytes,
            keep_alive_s=settings.keep_alive_s,
        )

    # -- connection loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe and process messages until :meth:`stop`; reconnect on failure."""
        delay = self._reconnect_min_s
        while not self._stopping:
            connection: MqttConnection | None = None
            try:
                connection = await connect(
                    self._host,
                    self._port,
                    client_id=self._client_id,
                    on_publish=self._on_publish,
                    clean_start=False,  # resume the session: unacknowledged messages come again
                    session_expiry_s=self._session_expiry_s,
                    receive_maximum=self._max_inflight,
                    max_packet_size=self._max_packet,
                    keep_alive_s=self._keep_alive_s,
                    username=self._username,
                    password=self._password,
                )
                self._active = connection
                base = f"$share/{self._group}/{self._prefix}/modules/+"
                await connection.subscribe([(f"{base}/checkin", 1), (f"{base}/events", 1)])
                self.connected = True
                self.subscribed.set()
                delay = self._reconnect_min_s
                log.info(
                    "mqtt_connected",
                    host=self._host,
                    port=self._port,
                    client_id=self._client_id,
                    session_present=bool(connection.connack and connection.connack.session_present),
                )
                reason = await self._until_closed(connection)
                if reason is not None and not self.stopping:
                    log.warning("mqtt_disconnected", error=str(reason), retry_in_s=delay)
            except MqttError as exc:
                if self.stopping:
                    break
                log.warning("mqtt_disconnected", error=str(exc), retry_in_s=delay)
            finally:
                self.connected = False
                self._active = None
                self.subscribed.clear()
                if connection is not None and connection.is_open:
                    connection.disconnect()
            if self.stopping:
                break
            MQTT_RECONNECTS.inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)

    async def _until_closed(self, connection: MqttConnection) -> BaseException | None:
        """Wait for the connection to end, or for a reconnect or stop request (then close it)."""
        self._reconnect_now.clear()
        closed = asyncio.ensure_future(connection.wait_closed())
        asked = asyncio.ensure_future(self._reconnect_now.wait())
        try:
            await asyncio.wait({closed, asked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
        if closed.done():
            return closed.result()
        closed.cancel()
        if self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 10)
            connection.disconnect()
            return None
        # A commit failed: drop the connection so the broker delivers what we did not PUBACK.
        connection.disconnect()
        return MqttError("reconnecting so the broker redelivers an uncommitted message")

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping

    async def stop(self) -> None:
        """Stop consuming; in-flight messages finish first (at most 10 s)."""
        self._stopping = True
        if self._active is not None:
            self._active.pause_reading()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), 10)
        self._reconnect_now.set()

    async def send_command(self, serial: str, command: StartVoiceSessionV1) -> None:
        """Publish a command (QoS 1) on the module's commands topic and wait for the PUBACK."""
        connection = self._active
        if connection is None or not connection.is_open:
            raise RuntimeError("not connected to the MQTT broker")
        await connection.publish_wait(
            topic(self._prefix, serial, TopicKind.COMMANDS), encode(command)
        )

    # -- one message ---------------------------------------------------------------------------

    def _on_publish(self, connection: MqttConnection, packet: Publish) -> None:
        """A message from the broker (in the read callback): start its commit."""
        if connection is not self._current:
            # The first message of a new connection (it may come before connect() returns).
            self._current = connection
            self._order = deque()
            self._paused = False
        message = _Message(connection, packet.packet_id)
        if packet.packet_id:
            self._order.append(message)
        self._inflight += 1
        if self._inflight == 1:
            self._drained.clear()
        if self._inflight > self._max_inflight and not self._paused:
            # Only QoS 0 messages get past our Receive Maximum: stop reading until they drain.
            self._paused = True
            connection.pause_reading()
        try:
            serial, kind = parse_topic(packet.topic, self._prefix)
        except MqttPayloadError as exc:
            log.warning("mqtt_bad_topic", topic=packet.topic, error=str(exc))
            self._finish(message, puback=True)
            return
        account = self._resolver(serial)
        if account is None:
            # Unknown module: nothing to store it under; told so, and counted.
            _count(kind.value, "unknown_module")
            self._reply(
                message,
                serial,
                AckV1(msg_id=None, status=AckStatus.REJECTED, reason="unknown module"),
            )
            return
        signal, msg_id = self._signal(serial, account, kind, packet.payload)
        try:
            future = self._enqueue(signal)
        except IngestUnavailable as exc:
            self._not_committed(message, packet.topic, exc)
            return
        future.add_done_callback(
            lambda done: self._committed(done, message, serial, kind, msg_id, signal)
        )

    def _committed(
        self,
        future: asyncio.Future[IngestResult],
        message: _Message,
        serial: str,
        kind: TopicKind,
        msg_id: str | None,
        signal: InboundSignal,
    ) -> None:
        if future.cancelled():
            self._not_committed(message, serial, IngestUnavailable("commit cancelled"))
            return
        error = future.exception()
        if error is not None:
            if not isinstance(error, IngestUnavailable):
                log.error("mqtt_commit_error", error=repr(error))
            self._not_committed(message, serial, error)
            return
        status = _RESULT_STATUS[future.result()]
        _count(kind.value, status.value)
        self._reply(
            message, serial, AckV1(msg_id=msg_id, status=status, reason=signal.reject_reason)
        )

    def _not_committed(self, message: _Message, where: str, exc: BaseException) -> None:
        # Not committed: no ack, no PUBACK. Reconnect so the broker redelivers it.
        _count("any", "not_committed")
        log.warning("mqtt_not_committed", topic=where, reason=str(exc))
        self._finish(message, puback=False)
        self._reconnect_now.set()

    def _reply(self, message: _Message, serial: str, ack: AckV1) -> None:
        """Publish the ack; PUBACK the module's message once the broker has the ack."""
        connection = message.connection
        if not connection.is_open:
            self._finish(message, puback=False)  # redelivered after the reconnect
            return
        ack_topic = self._ack_topics.get(serial)
        if ack_topic is None:
            ack_topic = topic(self._prefix, serial, TopicKind.ACK)
            if len(self._ack_topics) < 100_000:
                self._ack_topics[serial] = ack_topic

        def acked(code: int) -> None:
            if code == CONNECTION_LOST:
                self._finish(message, puback=False)
                return
            if code >= 0x80:
                # Committed, but the broker refused the ack (ACL?): redelivery would not help.
                log.warning("mqtt_ack_refused", serial=serial, reason=reason_name(code))
            self._finish(message, puback=True)

        try:
            connection.publish(ack_topic, encode(ack), 1, acked)
        except MqttError as exc:
            log.warning("mqtt_ack_failed", error=str(exc))
            self._finish(message, puback=False)

    def _finish(self, message: _Message, *, puback: bool) -> None:
        message.done = True
        message.puback = puback
        self._inflight -= 1
        if not self._inflight:
            self._drained.set()
        if message.connection is self._current:
            if message.packet_id:
                self._release_in_order()
            if self._paused and self._inflight <= self._max_inflight * 3 // 4:
                self._paused = False
                if not self._stopping:
                    message.connection.resume_reading()

    def _release_in_order(self) -> None:
        """PUBACK the done messages at the head of the arrival order (MQTT 5 §4.6)."""
        order = self._order
        while order and order[0].done:
            head = order[0]
            if not head.puback:
                return  # not committed: it and everything after it come again after a reconnect
            order.popleft()
            head.connection.puback(head.packet_id)

    def _submit_task(self, signal: InboundSignal) -> asyncio.Future[IngestResult]:
        return asyncio.ensure_future(self._sink.submit(signal))

    def _signal(
        self, serial: str, account: str, kind: TopicKind, raw: bytes
    ) -> tuple[InboundSignal, str | None]:
        now = datetime.now(UTC)
        try:
            if kind is TopicKind.CHECKIN:
                checkin = decode_checkin(raw, max_bytes=self._max_payload)
                return InboundSignal(
                    account=account,
                    transport=Transport.MQTT,
                    kind=SignalKind.CHECKIN,
                    received_at=now,
                    peer=serial,
                    raw=raw,
                    sent_at=checkin.sent_at,
                ), checkin.msg_id
            payload = decode_events(raw, max_bytes=self._max_payload)
        except MqttPayloadError as exc:
            return InboundSignal(
                account=account,
                transport=Transport.MQTT,
                kind=SignalKind.REJECTED,
                received_at=now,
                peer=serial,
                raw=raw,
                reject_reason=str(exc),
            ), None
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
