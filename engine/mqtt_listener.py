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
``max_inflight`` messages unacknowledged with us (our Receive Maximum, split over the sessions).
Each session has a reconnect loop with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from engine.background_task import restart_on_failure
from engine.events_signal import mqtt_dedupe_key, signal_from_events
from engine.ingest_types import (
    InboundSignal,
    IngestRefused,
    IngestResult,
    IngestSink,
    IngestUnavailable,
    SignalKind,
    Transport,
)
from engine.mqtt_client import CONNECTION_LOST, MqttConnection, MqttError, connect
from protocols.mqtt_codec import Properties, Publish, reason_name
from protocols.mqtt_payloads import (
    AckStatus,
    AckV1,
    MqttPayloadError,
    StartVoiceSessionV1,
    TopicKind,
    bounded_reason,
    decode_checkin,
    decode_events,
    encode,
    msg_id_of,
    parse_topic,
    topic,
)

REJECTED_RAW_KEPT = 1024  # bytes of an oversized payload stored with its rejection
# Parsed topics and ack topics remembered, of known modules only (one per module and kind):
# bounded all the same, a module swapped for another leaves its entries behind.
_TOPICS_KEPT = 200_000
_ACK_TOPICS_KEPT = 100_000

log = structlog.get_logger("engine.mqtt")

MQTT_MESSAGES = Counter(
    "alarmrelay_mqtt_messages_total",
    "MQTT messages from modules, by kind and result.",
    ["kind", "result"],
)
MQTT_RECONNECTS = Counter("alarmrelay_mqtt_reconnects_total", "Reconnections to the MQTT broker.")
MQTT_CONNECTED = Gauge(
    "alarmrelay_mqtt_connected",
    "1 while every MQTT session of the engine is connected to the broker and subscribed.",
)
MQTT_OVERRUNS = Counter(
    "alarmrelay_mqtt_receive_maximum_exceeded_total",
    "QoS 1 messages the broker sent beyond our Receive Maximum (taken, not refused).",
)

# At 0 from the start (see engine.metrics): a refused message alerts on its first occurrence.
for _kind in (TopicKind.CHECKIN, TopicKind.EVENTS):
    MQTT_MESSAGES.labels(_kind.value, "refused")

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


_REDELIVER = MqttError("reconnecting so the broker redelivers an uncommitted message")


class _Message:
    """One received message until it is acknowledged (or its connection is gone)."""

    __slots__ = ("connection", "done", "packet_id", "puback", "session")

    def __init__(self, session: _Session, connection: MqttConnection, packet_id: int) -> None:
        self.session = session
        self.connection = connection
        self.packet_id = packet_id  # 0 for QoS 0: nothing to PUBACK
        self.done = False
        self.puback = False  # done and committed: PUBACK it when its turn comes


class _Session:
    """One MQTT session (client id) of the engine: its connection, reconnect loop and PUBACK order."""

    def __init__(self, listener: MqttListener, client_id: str, receive_maximum: int) -> None:
        self.listener = listener
        self.client_id = client_id
        self.receive_maximum = receive_maximum
        self.active: MqttConnection | None = None  # connected and subscribed
        self.current: MqttConnection | None = None  # the connection messages now come on
        self.order: deque[_Message] = deque()  # its QoS 1 messages, in arrival order
        self.overruns_seen = 0
        self.reconnect_now = asyncio.Event()
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Connect, subscribe and wait for the connection to end; again, with backoff."""
        owner = self.listener
        loop = asyncio.get_running_loop()
        delay = owner._reconnect_min_s
        while not owner._stopping:
            connection: MqttConnection | None = None
            # Cleared here, before the connection exists, not once it is subscribed: a resumed
            # session's redelivered messages arrive right after CONNACK, and one that cannot be
            # committed asks for a reconnect while we still wait for the SUBACK. Clearing after
            # that would lose the request and leave the session stalled behind it for good.
            self.reconnect_now.clear()
            redelivery = False  # dropped on purpose, so that the broker redelivers
            try:
                connection = await connect(
                    owner._host,
                    owner._port,
                    client_id=self.client_id,
                    on_publish=self.on_publish,
                    clean_start=False,  # resume the session: unacknowledged messages come again
                    session_expiry_s=owner._session_expiry_s,
                    receive_maximum=self.receive_maximum,
                    max_packet_size=owner._max_packet,
                    keep_alive_s=owner._keep_alive_s,
                    username=owner._username,
                    password=owner._password,
                )
                base = f"{owner._prefix}/modules/+"
                if owner._group:
                    base = f"$share/{owner._group}/{base}"
                # Retain Handling 2: no retained message at subscription. A module's retained
                # check-in or alarm is taken when it is published; sent again at each
                # resubscription it would be a new contact (hiding a dead module from
                # supervision) and, past its dedupe window, an alarm forwarded again.
                await connection.subscribe(
                    [(f"{base}/checkin", 1), (f"{base}/events", 1)], retain_handling=2
                )
                self.active = connection
                self.subscribed.set()
                owner._session_up()
                up_since = loop.time()
                log.info(
                    "mqtt_connected",
                    host=owner._host,
                    port=owner._port,
                    client_id=self.client_id,
                    session_present=bool(connection.connack and connection.connack.session_present),
                )
                reason = await self._until_closed(connection)
                if loop.time() - up_since >= owner._reconnect_max_s:
                    # It was working: come back fast. A connection dropped soon after it was
                    # made (a message the database refused at once, redelivered, refused
                    # again) keeps the backoff growing: no reconnect loop during an outage.
                    delay = owner._reconnect_min_s
                if reason is _REDELIVER and not owner.stopping:
                    reason = await self._redeliver_after(connection, delay)
                    redelivery = reason is _REDELIVER
                if reason is not None and not owner.stopping:
                    log.warning(
                        "mqtt_disconnected",
                        client_id=self.client_id,
                        error=str(reason),
                        retry_in_s=0 if redelivery else delay,
                    )
            except MqttError as exc:
                if owner.stopping:
                    break
                log.warning(
                    "mqtt_disconnected", client_id=self.client_id, error=str(exc), retry_in_s=delay
                )
            finally:
                self.active = None
                self.subscribed.clear()
                owner._session_down()
                if connection is not None and connection.is_open:
                    connection.disconnect()
            if owner.stopping:
                break
            MQTT_RECONNECTS.inc()
            if not redelivery:  # (a redelivery waited its turn while still subscribed)
                # Jittered: engines that lost the same broker do not all come back in one instant.
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - not a secret
            delay = min(delay * 2, owner._reconnect_max_s)

    async def _until_closed(self, connection: MqttConnection) -> BaseException | None:
        """Wait for the connection to end (why), or for a reconnect request (:data:`_REDELIVER`,
        the connection still open) or a stop (None, the connection closed)."""
        closed = asyncio.ensure_future(connection.wait_closed())
        asked = asyncio.ensure_future(self.reconnect_now.wait())
        try:
            await asyncio.wait({closed, asked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
        if closed.done():
            return closed.result()
        closed.cancel()
        if self.listener.stopping:
            await self._close_for_stop(connection)
            return None
        return _REDELIVER

    async def _redeliver_after(
        self, connection: MqttConnection, delay: float
    ) -> BaseException | None:
        """A message was not committed: drop the connection so that the broker delivers it
        again, after the backoff ``delay`` (jittered). The wait is spent still subscribed:
        during a database outage the session is not seen as cut from the broker (metric,
        alert, readiness), commands can still be published, and a message committed meanwhile
        still gets its ``ack``. Returns :data:`_REDELIVER`, or why the connection ended first
        (None: stopped)."""
        closed = asyncio.ensure_future(connection.wait_closed())
        stop = asyncio.ensure_future(self.listener._stop_requested.wait())
        wait_s = delay * random.uniform(0.5, 1.0)  # noqa: S311 - not a secret
        try:
            await asyncio.wait({closed, stop}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if closed.done():
            return closed.result()
        closed.cancel()
        if self.listener.stopping:
            await self._close_for_stop(connection)
            return None
        connection.disconnect()
        return _REDELIVER

    async def _close_for_stop(self, connection: MqttConnection) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listener._drained.wait(), 10)
        connection.disconnect()

    def on_publish(self, connection: MqttConnection, packet: Publish) -> None:
        """A message from the broker (in the read callback)."""
        if self.listener.stopping:
            return  # not PUBACKed: the broker sends it again to this session after the restart
        if connection is not self.current:
            # The first message of a new connection (it may come before connect() returns).
            self.current = connection
            self.order = deque()
            self.overruns_seen = 0
        message = _Message(self, connection, packet.packet_id)
        if packet.packet_id:
            self.order.append(message)
        if connection.overruns != self.overruns_seen:
            MQTT_OVERRUNS.inc(connection.overruns - self.overruns_seen)
            self.overruns_seen = connection.overruns
        self.listener._process(message, packet)

    def finished(self, message: _Message) -> None:
        """``message`` is done: PUBACK what the arrival order allows.

        Reading never pauses to wait for in-flight messages: finishing one takes the PUBACK of its
        ack, read from this same connection. The broker's respect of our Receive Maximum and the
        ingest pipeline's own bound (it refuses past ``max_pending``) limit the work in flight.
        """
        if (
            message.connection is not self.current
            or not message.packet_id
            or not message.connection.is_open
        ):
            # QoS 0, or its connection is gone: the broker sends it again on the new one. (A
            # closed connection stays ``current`` until the new one's first message; its late
            # commits must not ask the new, healthy connection to reconnect.)
            return
        order = self.order
        while order and order[0].done:
            head = order[0]
            if not head.puback:
                # Not committed: it (and everything after it) must come again, which takes a
                # new connection.
                self.reconnect_now.set()
                break
            order.popleft()
            head.connection.puback(head.packet_id)


class MqttListener:
    """Subscribes to module topics through ``$share/<group>/…`` and feeds the ingest sink.

    ``connections`` sessions (client ids ``client_id``, ``client_id-1``, …) share the
    subscription: each has its own Receive Maximum towards the broker, and the broker's towards
    us (Mosquitto's ``max_inflight_messages``, 20 by default) bounds the acks each can have in
    flight.
    """

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
        shared_group: str | None = "alarmrelay",
        topic_prefix: str = "alarmrelay/v1",
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_inflight: int = 1000,
        max_payload_bytes: int = 16_384,
        max_packet_bytes: int = 1_048_576,
        keep_alive_s: int = 30,
        session_expiry_s: int = 3600,
        connections: int = 1,
        command_expiry_s: float = 60.0,
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
        self._group = shared_group
        self._prefix = topic_prefix.rstrip("/")
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._max_payload = max_payload_bytes
        self._max_packet = max(max_packet_bytes, max_payload_bytes + 1024)
        self._keep_alive_s = keep_alive_s
        self._session_expiry_s = session_expiry_s
        # A command is of use only while the station's operator waits for it (the voice
        # session after an alarm): the broker drops it after this, instead of delivering it
        # to a module that comes back later (its siren turned off long after the alarm).
        self._command_properties = Properties(
            message_expiry_interval=max(1, math.ceil(command_expiry_s))
        )
        count = max(1, connections)
        per_session = max(1, min(65_535, -(-max_inflight // count)))
        self._sessions = [
            _Session(self, client_id if n == 0 else f"{client_id}-{n}", per_session)
            for n in range(count)
        ]
        self._inflight = 0  # messages being committed and acked, all sessions
        self._drained = asyncio.Event()
        self._drained.set()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self.subscribed = asyncio.Event()  # every session is connected and subscribed
        self._ack_topics: dict[str, str] = {}
        self._topics: dict[str, tuple[str, TopicKind]] = {}  # topic → (serial, kind), parsed once

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
            connections=settings.connections,
            command_expiry_s=settings.command_retry_s,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every session until :meth:`stop` (each reconnects on failure by itself).

        A session that ends on an error nobody foresaw (not an MqttError) is logged, counted
        (``mqtt-session``) and started again: left alone it ended MQTT ingest for good, silently.
        """
        await asyncio.gather(
            *(
                restart_on_failure("mqtt-session", session.run, pause_s=self._reconnect_max_s)
                for session in self._sessions
            )
        )

    @property
    def connected(self) -> bool:
        """True while every session is connected and subscribed."""
        return self.subscribed.is_set()

    def _session_up(self) -> None:
        if all(session.active is not None for session in self._sessions):
            self.subscribed.set()
            MQTT_CONNECTED.set(1)

    def _session_down(self) -> None:
        self.subscribed.clear()
        MQTT_CONNECTED.set(0)

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping

    @property
    def _active(self) -> MqttConnection | None:
        """An open connection (the first session's when it has one)."""
        for session in self._sessions:
            if session.active is not None and session.active.is_open:
                return session.active
        return None

    async def stop(self) -> None:
        """Stop taking messages; those in flight finish first (at most 10 s)."""
        self._stopping = True
        self._stop_requested.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), 10)
        for session in self._sessions:
            session.reconnect_now.set()

    async def send_command(self, serial: str, command: StartVoiceSessionV1) -> None:
        """Publish a command (QoS 1) on the module's commands topic and wait for the PUBACK.

        It expires on the broker after ``command_expiry_s``: a module offline longer never
        gets it."""
        connection = self._active
        if connection is None:
            raise RuntimeError("not connected to the MQTT broker")
        await connection.publish_wait(
            topic(self._prefix, serial, TopicKind.COMMANDS),
            encode(command),
            properties=self._command_properties,
        )

    # -- one message ---------------------------------------------------------------------------

    def _process(self, message: _Message, packet: Publish) -> None:
        """Start the commit of a received message."""
        self._inflight += 1
        if self._inflight == 1:
            self._drained.clear()
        parsed = self._topics.get(packet.topic)
        cached = parsed is not None
        if parsed is None:
            try:
                parsed = parse_topic(packet.topic, self._prefix)
            except MqttPayloadError as exc:
                log.warning("mqtt_bad_topic", topic=packet.topic, error=str(exc))
                self._finish(message, puback=True)
                return
        serial, kind = parsed
        account = self._resolver(serial)
        if account is None:
            # Unknown module: nothing to store it under; told so, and counted. Its topic is not
            # remembered: a serial is whatever a client puts in the topic (up to 64 KiB).
            _count(kind.value, "unknown_module")
            self._reply(
                message,
                serial,
                AckV1(msg_id=None, status=AckStatus.REJECTED, reason="unknown module"),
                known=False,
            )
            return
        if not cached and len(self._topics) < _TOPICS_KEPT:
            self._topics[packet.topic] = parsed  # one per known module and kind
        signal, msg_id = self._signal(serial, account, kind, packet.payload)
        try:
            future = self._enqueue(signal)
        except IngestUnavailable as exc:
            self._not_committed(message, serial, exc)
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
        if isinstance(error, IngestRefused):
            # Its own data cannot be stored (logged with the payload): redelivery would fail the
            # same way, so the module gets a rejected ack and the message its PUBACK.
            _count(kind.value, "refused")
            self._reply(
                message,
                serial,
                AckV1(
                    msg_id=msg_id,
                    status=AckStatus.REJECTED,
                    reason=bounded_reason(f"not stored: {error}"),
                ),
            )
            return
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

    def _not_committed(self, message: _Message, serial: str, exc: BaseException) -> None:
        # Not committed: no ack, no PUBACK; the session reconnects so the broker redelivers it.
        _count("any", "not_committed")
        log.warning("mqtt_not_committed", serial=serial, reason=str(exc))
        self._finish(message, puback=False)

    def _reply(self, message: _Message, serial: str, ack: AckV1, *, known: bool = True) -> None:
        """Publish the ack; PUBACK the module's message once the broker has the ack.

        ``known``: the serial is a module's (its ack topic is remembered)."""
        connection = message.connection
        if not connection.is_open:
            self._finish(message, puback=False)  # redelivered after the reconnect
            return
        ack_topic = self._ack_topics.get(serial)
        if ack_topic is None:
            ack_topic = topic(self._prefix, serial, TopicKind.ACK)
            if known and len(self._ack_topics) < _ACK_TOPICS_KEPT:
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
        message.session.finished(message)

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
                # An oversized payload is kept for audit by its beginning only (its size is in
                # the reason): a flood of large ones must not fill the database.
                raw=raw if len(raw) <= self._max_payload else raw[:REJECTED_RAW_KEPT],
                reject_reason=str(exc),
            ), msg_id_of(raw, max_bytes=self._max_payload)
        return (
            signal_from_events(
                payload,
                account=account,
                transport=Transport.MQTT,
                received_at=now,
                peer=serial,
                raw=raw,
                dedupe_key=mqtt_dedupe_key(serial, payload),
                # The broker delivers a committed message again when its PUBACK was lost, up to
                # the session's expiry later: a copy must still be known as one then.
                dedupe_window_s=self._session_expiry_s,
            ),
            payload.msg_id,
        )
