"""DC-09 listeners: thin asyncio adapters over :class:`protocols.dc09_receiver.Dc09ReceiverConnection`.

TCP and UDP share one port. Each accepted frame becomes an :class:`InboundSignal` handed to the
ingest sink; the ACK is written only when the sink says the signal is committed. Rejected frames
get the reply the protocol layer built (NAK, DUH) or silence. No parsing happens here.

Flow control: when the sink is saturated a TCP connection stops reading (``pause_reading``) until
the pipeline drains; a per-connection token bucket bounds a runaway module; every signal not
accepted is counted and gets no ACK, so the module retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import structlog

from engine import metrics
from engine.errors import UserFacingError
from engine.ingest_types import (
    InboundSignal,
    IngestRefused,
    IngestResult,
    IngestSink,
    IngestUnavailable,
    SignalKind,
    Transport,
)
from engine.listen_sockets import dual_stack_tcp, dual_stack_udp, is_ipv6_wildcard, peer_text
from engine.rate_limit import SourceRateLimit, TokenBucket
from protocols.dc09_frame import Frame
from protocols.dc09_receiver import (
    AccountDirectory,
    Dc09ReceiverConnection,
    FrameReceived,
    FrameRejected,
    ReceiverConfig,
)
from protocols.errors import Reply

log = structlog.get_logger("engine.dc09")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The runtime's clock (the protocol layer never reads it)."""
    return datetime.now(UTC)


def dedupe_key(frame: Frame) -> str:
    """Same account + receiver + line + seq + content (not the timestamp, not the AES pad)."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(frame.token.encode())
    digest.update(b"\x00")
    digest.update(frame.data.encode("utf-8", "surrogateescape"))
    for x in frame.xdata:
        digest.update(b"\x00" + x.id.encode() + x.value.encode("utf-8", "surrogateescape"))
    return f"dc09:{frame.account}:{frame.receiver or ''}:{frame.line or ''}:{frame.seq}:{digest.hexdigest()}"


def signal_from_frame(
    received: FrameReceived, *, transport: Transport, peer: str, now: datetime
) -> InboundSignal:
    """The InboundSignal for an accepted frame."""
    frame = received.frame
    is_null = not received.events  # NULL, or an event token with an empty data block
    return InboundSignal(
        account=(frame.account or "").upper(),
        transport=transport,
        kind=SignalKind.LINK_TEST if is_null else SignalKind.EVENT,
        received_at=now,
        peer=peer,
        events=received.events,
        raw=frame.raw,
        token=frame.token,
        encrypted=frame.encrypted,
        seq=frame.seq,
        receiver=frame.receiver,
        line=frame.line,
        xdata=frame.xdata,
        sent_at=received.sent_at,  # UTC (a local-time panel's time converted)
        dedupe_key=None if is_null else dedupe_key(frame),
    )


class Dc09Handler:
    """What both transports share: rejection replies, submit, ACK after commit, metrics."""

    def __init__(
        self,
        *,
        sink: IngestSink,
        directory: AccountDirectory,
        config: ReceiverConfig,
        clock: Clock = utc_now,
    ) -> None:
        self.sink = sink
        self.directory = directory
        self.config = config
        self.clock = clock

    def new_connection(self) -> Dc09ReceiverConnection:
        """A protocol connection object for one TCP connection (or the UDP socket)."""
        return Dc09ReceiverConnection(self.config, self.directory)

    def enqueue(self, signal: InboundSignal) -> asyncio.Future[IngestResult]:
        """Hand ``signal`` to the sink; the future resolves after the commit, or fails (no ACK)."""
        enqueue = getattr(self.sink, "enqueue", None)
        if enqueue is None:
            return asyncio.ensure_future(self.sink.submit(signal))
        try:
            future: asyncio.Future[IngestResult] = enqueue(signal)
        except IngestUnavailable as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
        return future

    def finish(
        self,
        conn: Dc09ReceiverConnection,
        received: FrameReceived,
        signal: InboundSignal,
        future: asyncio.Future[IngestResult],
        *,
        transport: Transport,
        started: float,
        reply: bool = True,
    ) -> bytes | None:
        """After the commit: count, log, and build the ACK (None: not committed, no ACK).

        ``reply`` False: the module is gone (its connection closed while the commit ran), so no
        ACK is built or timed; the signal is committed all the same and its resend, if any,
        is a duplicate."""
        family = _family_label(received)
        error = future.exception()
        if isinstance(error, IngestRefused):
            # Its own data cannot be stored (logged with the raw frame): a resend would fail
            # the same way, so the module is told, as for any frame it cannot have processed.
            metrics.child(metrics.SIGNALS_RECEIVED, transport.value, family, "refused").inc()
            log.error(
                "signal_refused_duh",
                account=signal.account,
                seq=signal.seq,
                transport=transport.value,
                reason=str(error),
            )
            return conn.duh(received.frame)
        if error is not None:
            metrics.child(metrics.SIGNALS_RECEIVED, transport.value, family, "not_committed").inc()
            log.warning(
                "signal_not_committed",
                account=signal.account,
                seq=signal.seq,
                transport=transport.value,
                reason=str(error),
            )
            return None
        result = future.result()
        metrics.child(metrics.SIGNALS_RECEIVED, transport.value, family, result.value).inc()
        if not reply:
            log.info(
                "ack_not_sent",
                account=signal.account,
                seq=signal.seq,
                transport=transport.value,
                reason="connection closed before the commit",
            )
            return None
        ack = conn.ack(received.frame, now=self.clock())
        metrics.child(metrics.ACK_LATENCY, transport.value).observe(time.perf_counter() - started)
        if result is IngestResult.DUPLICATE:
            log.info(
                "duplicate_acked", account=signal.account, seq=signal.seq, transport=transport.value
            )
        return ack

    def rejected(self, event: FrameRejected, *, transport: Transport, peer: str) -> bytes:
        """Count and log a rejected frame; return the reply bytes (empty: stay silent)."""
        reply = event.error.reply
        metrics.FRAMES_REJECTED.labels(transport.value, reply.value).inc()
        metrics.SIGNALS_RECEIVED.labels(transport.value, "none", f"rejected_{reply.value}").inc()
        header = event.header
        log.info(
            "frame_rejected",
            transport=transport.value,
            peer=peer,
            reply=reply.value,
            error=event.error.message,
            account=getattr(header, "account", None),
            seq=getattr(header, "seq", None),
        )
        return event.error.reply_bytes if reply is not Reply.NONE else b""


def _family_label(received: FrameReceived) -> str:
    token = received.frame.token
    if token == "SIA-DCS":
        return "sia"
    if token == "ADM-CID":
        return "cid"
    return "null"


class _Reply:
    """One reply owed to the module: ready bytes, or an ACK waiting for its commit."""

    __slots__ = ("data", "future", "received", "signal", "started")

    def __init__(
        self,
        *,
        data: bytes | None = None,
        received: FrameReceived | None = None,
        signal: InboundSignal | None = None,
        future: asyncio.Future[IngestResult] | None = None,
        started: float = 0.0,
    ) -> None:
        self.data = data
        self.received = received
        self.signal = signal
        self.future = future
        self.started = started


class Dc09StreamProtocol(asyncio.Protocol):
    """One TCP connection from a module. Kept open; the module may send many frames."""

    def __init__(self, server: Dc09Server) -> None:
        self._server = server
        self._handler = server.handler
        self._conn = self._handler.new_connection()
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._bucket = TokenBucket(server.rate_limit_per_s, server.rate_limit_burst)
        self._paused = False  # reading paused: the commit queue is saturated
        self._write_blocked = False  # reading paused: the module does not read its replies
        self._eof = False  # the module half-closed: close once every reply owed is written
        self._closing_idle = False  # closed by the idle sweep (closed once, logged once)
        self._shed = 0  # frames dropped by the rate limit since the last one it let through
        self._remove_resume: Callable[[], None] | None = None
        self.last_activity = time.monotonic()  # the last complete frame (not any byte)
        self._outbox: deque[_Reply] = deque()

    # asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(
            asyncio.Transport, transport
        )  # uvloop's TCPTransport is not a subclass
        self._peer = peer_text(transport.get_extra_info("peername"))
        if not self._server.admit(self):
            metrics.CONNECTIONS_REFUSED.inc()
            log.warning("connection_refused", peer=self._peer, reason="max_connections")
            self._transport.abort()
            return
        metrics.ACTIVE_CONNECTIONS.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._server.release(self):
            metrics.ACTIVE_CONNECTIONS.dec()
        if self._remove_resume is not None:
            self._remove_resume()
            self._remove_resume = None

    def data_received(self, data: bytes) -> None:
        started = time.perf_counter()
        events = self._conn.receive_data(data, now=(now := self._handler.clock()))
        if not events:
            return  # part of a frame: not activity (a byte a second must not hold the slot)
        self.last_activity = clock = time.monotonic()
        for event in events:
            # Every frame, rejected ones too, is charged: a module sending frames that all get
            # NAK or DUH must not take the engine's time from the others.
            if not self._bucket.take(clock):
                self._rate_limited(event)
                continue
            if self._shed:
                log.info("rate_limit_ended", peer=self._peer, frames_dropped=self._shed)
                self._shed = 0
            if isinstance(event, FrameRejected):
                reply = self._handler.rejected(event, transport=Transport.TCP, peer=self._peer)
                if reply:
                    self._write_in_order(reply)
                continue
            self._submit(event, now, started)
        if self._handler.sink.saturated and not self._paused and self._transport is not None:
            self._pause()

    def eof_received(self) -> bool:
        """The module half-closed (sent its frames, then shut its side): replies still owed are
        written before the connection is closed."""
        if not self._outbox:
            return False  # nothing owed: asyncio closes the transport
        self._eof = True
        return True

    def pause_writing(self) -> None:
        """The module does not read its replies (its socket buffer is full): stop reading its
        frames until it does, so replies never pile up in memory."""
        self._write_blocked = True
        if self._transport is not None and not self._transport.is_closing():
            metrics.READ_PAUSES.inc()
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_blocked = False
        if not self._paused and self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # internals ----------------------------------------------------------------------------------

    def _rate_limited(self, event: FrameReceived | FrameRejected) -> None:
        """Dropped (no reply: the module resends); logged once per run of dropped frames."""
        metrics.SIGNALS_SHED.labels("tcp", "rate_limited").inc()
        if not self._shed:
            frame = event.frame if isinstance(event, FrameReceived) else event.header
            log.warning(
                "rate_limited",
                peer=self._peer,
                account=getattr(frame, "account", None),
                seq=getattr(frame, "seq", None),
            )
        self._shed += 1

    def _submit(self, event: FrameReceived, now: datetime, started: float) -> None:
        """Queue the signal for commit; its ACK is written, in arrival order, once committed."""
        signal = signal_from_frame(event, transport=Transport.TCP, peer=self._peer, now=now)
        future = self._handler.enqueue(signal)
        self._outbox.append(_Reply(received=event, signal=signal, future=future, started=started))
        future.add_done_callback(self._flush)

    def _write_in_order(self, reply: bytes) -> None:
        self._outbox.append(_Reply(data=reply))
        self._flush()

    def _flush(self, _: object = None) -> None:
        """Write every reply at the head of the queue whose commit has finished."""
        outbox = self._outbox
        while outbox:
            head = outbox[0]
            if head.future is not None:
                if not head.future.done():
                    return
                assert head.received is not None
                assert head.signal is not None
                data = self._handler.finish(
                    self._conn,
                    head.received,
                    head.signal,
                    head.future,
                    transport=Transport.TCP,
                    started=head.started,
                    reply=self._transport is not None and not self._transport.is_closing(),
                )
            else:
                data = head.data
            outbox.popleft()
            if data and self._transport is not None and not self._transport.is_closing():
                self._transport.write(data)
        if self._eof and self._transport is not None:
            self._transport.close()  # after the last reply owed (close flushes the buffer)

    @property
    def pending_replies(self) -> int:
        """Replies still waiting for their commit."""
        return len(self._outbox)

    def _pause(self) -> None:
        assert self._transport is not None
        self._paused = True
        metrics.READ_PAUSES.inc()
        self._transport.pause_reading()
        self._remove_resume = self._handler_resume_hook()

    def _handler_resume_hook(self) -> Callable[[], None] | None:
        on_resume = getattr(self._handler.sink, "on_resume", None)
        if on_resume is None:
            return None
        remover: Callable[[], None] = on_resume(self._resume)
        return remover

    def _resume(self) -> None:
        if self._remove_resume is not None:
            self._remove_resume()
            self._remove_resume = None
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            if not self._write_blocked:
                self._transport.resume_reading()

    def close_idle(self) -> None:
        """Close this connection because it was idle too long.

        Replies it has not read are dropped (abort): a close would wait for them to be written,
        which a module that does not read never allows, and its connection slot would be held
        for good."""
        transport = self._transport
        if transport is None or self._closing_idle:
            return
        self._closing_idle = True
        metrics.CONNECTIONS_CLOSED.labels("idle").inc()
        unread = transport.get_write_buffer_size()
        log.info(
            "connection_idle_closed",
            peer=self._peer,
            idle_timeout_s=self._server.idle_timeout_s,
            unread_reply_bytes=unread,
        )
        if unread:
            transport.abort()
        else:
            transport.close()

    def close(self) -> None:
        """Close at shutdown."""
        if self._transport is not None:
            self._transport.close()


class Dc09DatagramProtocol(asyncio.DatagramProtocol):
    """The UDP side of the DC-09 port: one frame per datagram, reply to the sender."""

    def __init__(self, server: Dc09Server) -> None:
        self._server = server
        self._handler = server.handler
        self._conn = self._handler.new_connection()
        self._transport: asyncio.DatagramTransport | None = None
        # Each source (address and port) gets the per-connection limit TCP modules get.
        self._limits = SourceRateLimit(
            server.rate_limit_per_s, server.rate_limit_burst, max_sources=server.max_connections
        )
        # Shutting down: new datagrams are not taken (the module resends them to the engine that
        # takes over), but the socket stays open for the ACKs of the commits still in flight.
        self.stopping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(
            asyncio.DatagramTransport, transport
        )  # uvloop's UDPTransport is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.stopping:
            metrics.SIGNALS_SHED.labels("udp", "shutting_down").inc()  # not read: no reply
            return
        started = time.perf_counter()
        now = self._handler.clock()
        peer = peer_text(addr)
        clock = time.monotonic()
        bucket = self._limits.bucket(addr, clock)
        if bucket.empty(clock):
            # Dropped unread: a flooding source costs no parsing or AES decryption.
            self._rate_limited(bucket, None, peer)
            return
        for event in self._conn.receive_datagram(data, now=now):
            # Every frame, rejected ones too, is charged, as on TCP: a source flooding the port
            # (or one whose frames all get NAK) must not take the engine's time from the others.
            if not bucket.take(clock):
                self._rate_limited(bucket, event, peer)
                continue
            if bucket.shed:
                log.info("rate_limit_ended", peer=peer, frames_dropped=bucket.shed)
                bucket.shed = 0
            if isinstance(event, FrameRejected):
                reply = self._handler.rejected(event, transport=Transport.UDP, peer=peer)
                if reply and self._transport is not None:
                    self._transport.sendto(reply, addr)
                continue
            if self._handler.sink.saturated:
                # UDP has no flow control: shed now (counted), the module resends.
                metrics.SIGNALS_SHED.labels("udp", "overloaded").inc()
                continue
            # No task per datagram: the commit future's callback sends the ACK.
            signal = signal_from_frame(event, transport=Transport.UDP, peer=peer, now=now)
            future = self._handler.enqueue(signal)
            future.add_done_callback(partial(self._acknowledge, event, signal, addr, started))
            self._server.track(future)

    def _rate_limited(
        self, bucket: TokenBucket, event: FrameReceived | FrameRejected | None, peer: str
    ) -> None:
        """Dropped (no reply: the module resends); logged once per run of dropped frames.
        ``event`` is None for a datagram dropped before it was read."""
        metrics.SIGNALS_SHED.labels("udp", "rate_limited").inc()
        if not bucket.shed:
            frame = (
                None
                if event is None
                else event.frame
                if isinstance(event, FrameReceived)
                else event.header
            )
            log.warning(
                "rate_limited",
                peer=peer,
                account=getattr(frame, "account", None),
                seq=getattr(frame, "seq", None),
            )
        bucket.shed += 1

    def _acknowledge(
        self,
        event: FrameReceived,
        signal: InboundSignal,
        addr: tuple[str | object, int],
        started: float,
        future: asyncio.Future[IngestResult],
    ) -> None:
        """After the commit (or its failure): the ACK, or nothing (not committed)."""
        if future.cancelled():  # shutdown gave up waiting: not acknowledged, the module resends
            return
        ack = self._handler.finish(
            self._conn,
            event,
            signal,
            future,
            transport=Transport.UDP,
            started=started,
            reply=self._transport is not None and not self._transport.is_closing(),
        )
        if ack is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(ack, addr)


class Dc09Server:
    """TCP + UDP listeners on one port, with connection tracking, idle sweep and shutdown."""

    def __init__(
        self,
        handler: Dc09Handler,
        *,
        host: str,
        port: int,
        max_connections: int = 10_000,
        idle_timeout_s: float = 300.0,
        rate_limit_per_s: float = 50.0,
        rate_limit_burst: float | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.rate_limit_per_s = rate_limit_per_s
        self.rate_limit_burst = (
            rate_limit_burst if rate_limit_burst is not None else max(1.0, rate_limit_per_s * 2)
        )
        self._connections: set[Dc09StreamProtocol] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: Dc09DatagramProtocol | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def bound_port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self.port

    @property
    def listening(self) -> bool:
        """True while both sockets are open."""
        return self._tcp is not None and self._tcp.is_serving() and self._udp is not None

    async def start(self) -> None:
        """Bind TCP first (port 0 picks one), then UDP on the same number."""
        loop = asyncio.get_running_loop()
        dual_stack = is_ipv6_wildcard(self.host)  # "::": IPv4 and IPv6 on both transports
        try:
            if dual_stack:
                self._tcp = await loop.create_server(
                    lambda: Dc09StreamProtocol(self),
                    sock=dual_stack_tcp(self.host, self.port, backlog=1024),
                    backlog=1024,
                )
            else:
                self._tcp = await loop.create_server(
                    lambda: Dc09StreamProtocol(self),
                    self.host,
                    self.port,
                    reuse_address=True,
                    backlog=1024,
                )
        except OSError as exc:
            raise self._bind_error("TCP", exc) from None
        self.port = self._tcp.sockets[0].getsockname()[1]
        try:
            if dual_stack:
                udp, protocol = await loop.create_datagram_endpoint(
                    lambda: Dc09DatagramProtocol(self), sock=dual_stack_udp(self.host, self.port)
                )
            else:
                udp, protocol = await loop.create_datagram_endpoint(
                    lambda: Dc09DatagramProtocol(self), local_addr=(self.host, self.port)
                )
        except OSError as exc:
            self._tcp.close()
            raise self._bind_error("UDP", exc) from None
        self._udp = udp
        self._udp_protocol = protocol
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="dc09-idle-sweep")
        log.info("dc09_listening", host=self.host, port=self.port, transports="tcp+udp")

    def _bind_error(self, transport: str, exc: OSError) -> UserFacingError:
        reason = exc.strerror or str(exc)
        return UserFacingError(
            f"cannot listen for DC-09 {transport} on {self.host}:{self.port}: {reason}"
            " (dc09.host, dc09.port)"
        )

    def admit(self, conn: Dc09StreamProtocol) -> bool:
        if len(self._connections) >= self.max_connections:
            return False
        self._connections.add(conn)
        return True

    def release(self, conn: Dc09StreamProtocol) -> bool:
        if conn in self._connections:
            self._connections.discard(conn)
            return True
        return False

    def track(self, task: asyncio.Future[Any]) -> None:
        """Own a per-signal task or commit future until it finishes (drain waits for them)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sweep_idle(self) -> None:
        interval = max(0.5, min(5.0, self.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - self.idle_timeout_s
            for conn in [c for c in self._connections if c.last_activity < cutoff]:
                conn.close_idle()

    async def stop_accepting(self) -> None:
        """Stop taking new connections and datagrams (existing connections stay for draining)."""
        if self._tcp is not None:
            self._tcp.close()
        if self._udp_protocol is not None:
            self._udp_protocol.stopping = True  # the socket closes in drain(), after the ACKs
        elif self._udp is not None:
            self._udp.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for in-flight commits and ACKs, then close every connection."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (  # noqa: ASYNC110 - a bounded shutdown poll over many connections
            any(c.pending_replies for c in self._connections)
            and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.02)
        if self._tasks:
            await asyncio.wait(
                set(self._tasks), timeout=max(0.1, deadline - asyncio.get_running_loop().time())
            )
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._connections):
            conn.close()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)
