"""A thin MQTT 5 client over asyncio: one :class:`MqttConnection` per TCP connection.

The packets are :mod:`protocols.mqtt_codec`'s; this module adds the socket, the timers and the
session rules a client must follow:

- CONNECT / CONNACK with a timeout; a refused CONNACK raises :class:`MqttConnectError`.
- Received PUBLISHes go to ``on_publish(connection, packet)`` synchronously, in order. QoS 1 ones are PUBACKed only when
  the caller says so (:meth:`MqttConnection.puback`): that is how alarmrelay acknowledges after the
  commit. More unacknowledged QoS 1 messages than our Receive Maximum (Mosquitto does that at
  times) are taken and counted (``overruns``), not answered with a disconnect.
- QoS 1 publishes respect the broker's Receive Maximum: past it they wait, in order, for a PUBACK.
  Each may carry a callback called with the PUBACK's reason code, or :data:`CONNECTION_LOST`.
- Writes made in one loop iteration leave in one ``transport.write``.
- Keep-alive: a PINGREQ when we sent nothing for 3/4 of the keep-alive; the connection is closed
  when nothing at all came from the broker for 1.5 keep-alives.
- Any codec error closes the connection with a DISCONNECT carrying its reason code; it never
  escapes into the caller's code. Reconnecting (with backoff, and clean start false so the broker
  redelivers what we did not PUBACK) is the caller's loop: see :mod:`engine.mqtt_listener`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, cast

import structlog

from protocols.mqtt_codec import (
    MAX_PACKET_ID,
    PINGREQ,
    Connack,
    Connect,
    Disconnect,
    MqttCodecError,
    MqttDecoder,
    PingResp,
    Properties,
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    reason_name,
    subscriptions,
)

log = structlog.get_logger("engine.mqtt_client")

CONNECTION_LOST: Final = -1  # passed to publish callbacks whose PUBACK will never come

PublishCallback = Callable[[int], None]


class MqttError(Exception):
    """The MQTT connection failed or was refused."""


class MqttConnectError(MqttError):
    """The broker refused the connection (CONNACK reason code ≥ 0x80)."""

    def __init__(self, reason_code: int) -> None:
        super().__init__(f"broker refused the connection: {reason_name(reason_code)}")
        self.reason_code = reason_code


class MqttConnectionLost(MqttError):
    """The connection ended (``reason`` says why)."""


class MqttConnection(asyncio.Protocol):
    """One MQTT 5 connection as an asyncio Protocol. Build it with :func:`connect`."""

    def __init__(
        self,
        *,
        on_publish: Callable[[MqttConnection, Publish], None],
        receive_maximum: int,
        max_packet_size: int,
        keep_alive_s: int,
    ) -> None:
        self._on_publish = on_publish
        self._receive_maximum = receive_maximum
        self._keep_alive_s = keep_alive_s
        self._decoder = MqttDecoder(max_packet_size=max_packet_size)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._connack: asyncio.Future[Connack] = self._loop.create_future()
        self._subacks: dict[int, asyncio.Future[tuple[int, ...]]] = {}
        self._pending: dict[int, PublishCallback | None] = {}  # our QoS 1 publishes awaiting PUBACK
        self._waiting: deque[tuple[str, bytes, PublishCallback | None, Properties | None]] = deque()
        self._send_quota = 65_535  # the broker's Receive Maximum, from CONNACK
        self._server_max_packet = 0  # 0: no limit announced
        self._next_id = 0
        self._unacked_in = 0  # QoS 1 messages received and not yet PUBACKed by us
        self._last_sent = self._last_received = self._loop.time()
        self._keepalive: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._reading = True
        self.connack: Connack | None = None
        self.reads = self.writes = 0  # socket reads and writes (how well writes coalesce)
        self.overruns = 0  # QoS 1 messages received beyond our Receive Maximum

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        self._last_received = self._loop.time()
        try:
            packets = self._decoder.feed(data)
        except MqttCodecError as exc:
            self._protocol_error(exc)
            return
        for packet in packets:
            if self._transport is None:
                return
            if type(packet) is Publish:
                if packet.qos:
                    self._unacked_in += 1
                    if self._unacked_in > self._receive_maximum:
                        self._overrun()
                try:
                    self._on_publish(self, packet)
                except Exception:  # a bug in the caller: drop the connection, the broker redelivers
                    log.exception("mqtt_on_publish_failed", topic=packet.topic)
                    self.abort()
                    return
            elif type(packet) is Puback:
                self._puback_received(packet)
            else:
                self._control(packet)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._finish(exc or MqttConnectionLost("connection closed"))

    def pause_writing(self) -> None:  # the kernel buffer is full: writes stay in the transport
        pass

    def resume_writing(self) -> None:
        pass

    # -- what the caller uses ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """False once the connection is closing or closed."""
        return self._transport is not None and not self._closed.done()

    async def wait_closed(self) -> BaseException | None:
        """Wait until the connection ends; why it ended (None after our own disconnect)."""
        return await asyncio.shield(self._closed)

    def puback(self, packet_id: int, reason_code: int = 0) -> None:
        """Acknowledge a received QoS 1 message (no-op once the connection is gone)."""
        if self._transport is None:
            return
        self._unacked_in -= 1
        self._send(encode_puback(packet_id, reason_code))

    def pause_reading(self) -> None:
        """Stop reading from the broker (flow control); :meth:`resume_reading` undoes it."""
        if self._reading and self._transport is not None:
            self._reading = False
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        if not self._reading and self._transport is not None:
            self._reading = True
            self._transport.resume_reading()

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        callback: PublishCallback | None = None,
        *,
        properties: Properties | None = None,
    ) -> None:
        """Send a PUBLISH. QoS 1: ``callback`` gets the PUBACK's reason code (or CONNECTION_LOST).

        Raises MqttConnectionLost when the connection is gone (the callback is then not called).
        """
        if self._transport is None or self._closed.done():
            raise MqttConnectionLost("not connected")
        if not qos:
            self._send(encode_publish(topic, payload, properties=properties))
            return
        if self._send_quota <= 0 or self._waiting:
            size = self._server_max_packet and len(
                encode_publish(topic, payload, 1, 1, properties=properties)
            )
            if size and size > self._server_max_packet:
                # Refused now, to the caller: sent later from the PUBACK of another message,
                # the error would escape the read callback and lose this one's callback.
                raise MqttError(f"packet of {size} bytes exceeds the broker's maximum")
            self._waiting.append((topic, payload, callback, properties))
            return
        self._send_qos1(topic, payload, callback, properties)

    async def publish_wait(
        self,
        topic: str,
        payload: bytes,
        *,
        timeout_s: float = 10.0,
        properties: Properties | None = None,
    ) -> int:
        """Publish at QoS 1 and wait for the PUBACK; its reason code. MqttError on failure."""
        done: asyncio.Future[int] = self._loop.create_future()

        def resolve(code: int) -> None:
            if not done.done():
                done.set_result(code)

        self.publish(topic, payload, 1, resolve, properties=properties)
        try:
            code = await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            raise MqttError(f"no PUBACK within {timeout_s} s") from None
        if code == CONNECTION_LOST:
            raise MqttConnectionLost("connection lost before the PUBACK")
        if code >= 0x80:
            raise MqttError(f"publish refused: {reason_name(code)}")
        return code

    async def subscribe(
        self,
        filters: Sequence[tuple[str, int]],
        *,
        retain_handling: int = 0,
        timeout_s: float = 10.0,
    ) -> tuple[int, ...]:
        """SUBSCRIBE and wait for the SUBACK; MqttError when a filter is refused."""
        packet_id = self._allocate_id()
        future: asyncio.Future[tuple[int, ...]] = self._loop.create_future()
        self._subacks[packet_id] = future
        entries = subscriptions(filters, retain_handling=retain_handling)
        self._send(encode_subscribe(Subscribe(packet_id=packet_id, subscriptions=entries)))
        try:
            codes = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise MqttError(f"no SUBACK within {timeout_s} s") from None
        finally:
            self._subacks.pop(packet_id, None)
        refused = [(f, c) for (f, _), c in zip(filters, codes, strict=False) if c >= 0x80]
        if refused or len(codes) != len(filters):
            raise MqttError(
                "subscription refused: " + ", ".join(f"{f} ({reason_name(c)})" for f, c in refused)
            )
        return codes

    def disconnect(self, reason_code: int = 0) -> None:
        """Send DISCONNECT and close (the session stays on the broker for its expiry)."""
        if self._transport is None:
            return
        self._send(encode_disconnect(reason_code))
        self._flush()
        transport = self._transport
        self._finish(None)
        transport.close()

    def abort(self) -> None:
        """Drop the connection without a DISCONNECT."""
        if self._transport is not None:
            transport = self._transport
            self._finish(MqttConnectionLost("aborted"))
            transport.abort()

    # -- internals --------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        if self._transport is not None:
            self.writes += 1
            self._transport.write(data)
            self._last_sent = self._loop.time()

    def _allocate_id(self) -> int:
        for _ in range(MAX_PACKET_ID):
            self._next_id = self._next_id % MAX_PACKET_ID + 1
            if self._next_id not in self._pending and self._next_id not in self._subacks:
                return self._next_id
        raise MqttError("no free packet identifier")

    def _send_qos1(
        self,
        topic: str,
        payload: bytes,
        callback: PublishCallback | None,
        properties: Properties | None = None,
    ) -> None:
        packet_id = self._allocate_id()
        data = encode_publish(topic, payload, 1, packet_id, properties=properties)
        if self._server_max_packet and len(data) > self._server_max_packet:
            raise MqttError(f"packet of {len(data)} bytes exceeds the broker's maximum")
        self._send_quota -= 1
        self._pending[packet_id] = callback
        self._send(data)

    def _puback_received(self, packet: Puback) -> None:
        try:
            callback = self._pending.pop(packet.packet_id)
        except KeyError:
            self._protocol_error(
                MqttCodecError(
                    f"PUBACK for unknown packet {packet.packet_id}", ReasonCode.PROTOCOL_ERROR
                )
            )
            return
        self._send_quota += 1
        waiting = self._waiting
        while waiting and self._send_quota > 0 and self._transport is not None:
            self._send_qos1(*waiting.popleft())
        if callback is not None:
            callback(packet.reason_code)

    def _control(self, packet: object) -> None:
        if isinstance(packet, Connack):
            if self._connack.done():
                self._protocol_error(MqttCodecError("second CONNACK", ReasonCode.PROTOCOL_ERROR))
                return
            props = packet.properties
            if props.receive_maximum is not None:
                self._send_quota = props.receive_maximum
            if props.maximum_packet_size is not None:
                self._server_max_packet = props.maximum_packet_size
            if props.server_keep_alive is not None:
                self._keep_alive_s = props.server_keep_alive
            self.connack = packet
            self._connack.set_result(packet)
            if packet.reason_code < 0x80:
                self._arm_keepalive()
        elif isinstance(packet, Suback):
            future = self._subacks.get(packet.packet_id)
            if future is not None and not future.done():
                future.set_result(packet.reason_codes)
        elif isinstance(packet, PingResp):
            pass
        elif isinstance(packet, Disconnect):
            reason = packet.properties.reason_string
            error = MqttConnectionLost(
                f"broker disconnected: {reason_name(packet.reason_code)}"
                + (f" ({reason})" if reason else "")
            )
            transport = self._transport
            self._finish(error)
            if transport is not None:
                transport.close()
        else:
            self._protocol_error(
                MqttCodecError(
                    f"unexpected {type(packet).__name__} from the broker",
                    ReasonCode.PROTOCOL_ERROR,
                )
            )

    def _overrun(self) -> None:
        # MQTT 5 §4.9 lets us disconnect with 0x93 here, but Mosquitto 2.0 overruns a client's
        # Receive Maximum at times (on session resume, with shared subscriptions): a disconnect
        # would only bring the same burst again. Take the messages (the ingest pipeline bounds
        # what waits for a commit) and count it.
        self.overruns += 1
        if self.overruns == 1:
            log.warning(
                "mqtt_receive_maximum_exceeded",
                receive_maximum=self._receive_maximum,
                unacknowledged=self._unacked_in,
            )

    def _protocol_error(self, exc: MqttCodecError) -> None:
        log.warning("mqtt_protocol_error", error=str(exc), reason=reason_name(exc.reason_code))
        if self._transport is None:
            return
        self._out.clear()
        self._transport.write(encode_disconnect(exc.reason_code))
        transport = self._transport
        self._finish(MqttConnectionLost(f"protocol error: {exc}"))
        transport.close()

    def _arm_keepalive(self) -> None:
        if self._keep_alive_s > 0:
            period = max(0.25, self._keep_alive_s / 4)
            self._keepalive = self._loop.call_later(period, self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        if self._transport is None:
            return
        now = self._loop.time()
        if now - self._last_received > self._keep_alive_s * 1.5:
            log.warning("mqtt_keepalive_timeout", keep_alive_s=self._keep_alive_s)
            transport = self._transport
            self._finish(MqttConnectionLost("keep-alive timeout: the broker went silent"))
            transport.abort()
            return
        if now - self._last_sent >= self._keep_alive_s * 0.75:
            self._send(PINGREQ)
        self._arm_keepalive()

    def _finish(self, reason: BaseException | None) -> None:
        """The connection is over: fail what waits on it (once)."""
        self._transport = None
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._closed.done():
            return
        self._closed.set_result(reason)
        if not self._connack.done():
            self._connack.set_exception(
                reason if reason is not None else MqttConnectionLost("closed before CONNACK")
            )
            self._connack.exception()  # retrieved: the caller may be gone
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(MqttConnectionLost("connection lost before the SUBACK"))
                future.exception()
        pending = list(self._pending.values())
        waiting = [item[2] for item in self._waiting]
        self._pending.clear()
        self._waiting.clear()
        for callback in pending + waiting:
            if callback is not None:
                callback(CONNECTION_LOST)


async def connect(
    host: str,
    port: int,
    *,
    client_id: str,
    on_publish: Callable[[MqttConnection, Publish], None],
    clean_start: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int = 65_535,
    max_packet_size: int = 1_048_576,
    keep_alive_s: int = 30,
    username: str | None = None,
    password: str | None = None,
    timeout_s: float = 10.0,
) -> MqttConnection:
    """Open a TCP connection, send CONNECT and wait for a successful CONNACK."""
    loop = asyncio.get_running_loop()
    protocol = MqttConnection(
        on_publish=on_publish,
        receive_maximum=receive_maximum,
        max_packet_size=max_packet_size,
        keep_alive_s=keep_alive_s,
    )
    try:
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(lambda: protocol, host, port)
    except (OSError, TimeoutError) as exc:
        raise MqttError(f"cannot connect to {host}:{port}: {exc or 'timeout'}") from exc
    protocol._send(
        encode_connect(
            Connect(
                client_id=client_id,
                clean_start=clean_start,
                keep_alive=keep_alive_s,
                username=username,
                password=password.encode() if password is not None else None,
                properties=Properties(
                    session_expiry_interval=session_expiry_s or None,
                    receive_maximum=min(receive_maximum, 65_535),
                    maximum_packet_size=max_packet_size,
                ),
            )
        )
    )
    try:
        connack = await asyncio.wait_for(asyncio.shield(protocol._connack), timeout_s)
    except TimeoutError:
        protocol.abort()
        raise MqttError(f"no CONNACK from {host}:{port} within {timeout_s} s") from None
    except MqttError:
        raise
    except OSError as exc:
        raise MqttConnectionLost(str(exc)) from exc
    if connack.reason_code >= 0x80:
        with contextlib.suppress(Exception):
            protocol.abort()
        raise MqttConnectError(connack.reason_code)
    return protocol
