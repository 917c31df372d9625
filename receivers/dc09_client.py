"""A DC-09 transmitter to one monitoring-station receiver: a thin asyncio adapter over
:class:`protocols.dc09_transmitter.Dc09Transmitter`.

One persistent TCP connection (or a UDP socket), stop-and-wait: one frame outstanding, replies
paired by seq. ACK → acked; NAK → the receiver's clock offset is adopted and the frame resent once
with the same seq; DUH → refused (the caller dead-letters); no answer → failed (the caller retries
with the same seq). NULL polls keep the link supervised and drive the link-state metric.

The I/O is an :class:`asyncio.Protocol` (a datagram protocol for UDP) per connection, without
streams: a frame is written and its sender waits on one future, which ``data_received`` resolves
with the matching reply (or which the connection's loss, or one ``loop.call_at`` timer for the ACK
timeout, fails). Replies that answer no outstanding frame are dropped. Writes need no flow
control: at most one frame per connection is ever unanswered.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import secrets
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import structlog

from engine.station_model import ReceiverConfig
from protocols.cid_sia_conversion import ConversionError, to_cid, to_sia
from protocols.contact_id import cid_fits, format_cid_block
from protocols.dc09_crypto import AesKey
from protocols.dc09_transmitter import (
    Acked,
    Dc09Transmitter,
    Duhed,
    Mismatch,
    Naked,
    OutgoingFrame,
    ReplyEvent,
    ReplyRejected,
    RspReceived,
    SequenceNumbers,
)
from protocols.sia_dc03 import format_sia_block
from protocols.signal import Event, Family
from receivers import metrics

log = structlog.get_logger("receivers.dc09")


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one frame sent to a receiver."""

    outcome: str  # "acked" | "duh" | "failed" | "unsendable" (no frame could be built)
    receiver: str
    seq: str
    sent_at: datetime | None = None
    acked_at: datetime | None = None
    error: str | None = None
    family_sent: str | None = None
    note: str | None = None  # e.g. why the event went in its own family to a one-family receiver
    # The primary's attempt when this same delivery went on to the backup: it failed (its
    # group failed over) or the primary refused the frame (DUH).
    failed_over_from: DeliveryAttempt | None = None


Outcome = Acked | Naked | Duhed | RspReceived | Mismatch
_ACCEPTED = (Acked, RspReceived)
_TAKEN = (Acked, RspReceived, Duhed)  # replies that say the link works


class _TcpConnection(asyncio.Protocol):
    """One TCP connection to the receiver; hands what it reads to its client."""

    def __init__(self, client: Dc09ReceiverClient) -> None:
        self._client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False  # EOF or lost: the client reconnects before its next frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._client._on_data(self, data)

    def eof_received(self) -> bool:
        self.closed = True
        self._client._on_lost(self, None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client._on_lost(self, exc)


class _UdpEndpoint(asyncio.DatagramProtocol):
    """The UDP socket to the receiver; hands each datagram to its client."""

    def __init__(self, client: Dc09ReceiverClient) -> None:
        self._client = client

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._client._on_datagram(self, data)

    def error_received(self, exc: Exception) -> None:
        # E.g. ICMP port unreachable: nothing listens at the receiver's port.
        self._client._on_udp_error(self, exc)


def _expire(waiter: asyncio.Future[Outcome]) -> None:
    """The ACK timeout of one frame (a ``call_at`` handle, cancelled when the reply comes)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Dc09ReceiverClient:
    """Sends frames to one receiver; callers are serialised (stop-and-wait)."""

    def __init__(
        self,
        config: ReceiverConfig,
        *,
        clock: Callable[[], datetime] = utc_now,
        next_seq: Callable[[], str] | None = None,
    ) -> None:
        """``next_seq``: numbers frames sent without a seq (shared by a pool's connections);
        by default this connection's own 0001, 0002, …"""
        if config.kind != "ip" or not config.host or config.port is None:
            raise ValueError(f"receiver {config.name!r} is not an IP receiver with host and port")
        self.config = config
        self.name = config.name
        self._clock = clock
        key = AesKey.parse(config.key, config.key_format) if config.key else None
        # L is required since DC-09 2013 (North Latitude); L0 is the common default.
        self._tx = Dc09Transmitter(
            receiver=config.receiver_number, line=config.line_prefix or "0", key=key
        )
        self._next_seq = next_seq or self._tx.next_seq
        self._udp_mode = config.protocol == "udp"
        self._timeout = config.ack_timeout_s
        self._lock = asyncio.Lock()
        self._tcp: _TcpConnection | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_endpoint: _UdpEndpoint | None = None
        # The frame outstanding and the future its sender waits on (None between frames).
        self._sent: OutgoingFrame | None = None
        self._waiter: asyncio.Future[Outcome] | None = None
        self._replied_at: datetime | None = None  # when the reply that resolved it arrived
        # The last reply to another frame that came while this one waited ("ACK for seq 0000"),
        # named in a timeout's error: the receiver answers, not with our seq.
        self._other_reply: str | None = None
        self._poller: asyncio.Task[None] | None = None
        # loop.time() of the last exchange that ended (answered or failed); 0 before the first.
        self.last_exchange_at = 0.0
        self._link_changed = asyncio.Event()
        self.link_up = False
        self._link_gauge = metrics.LINK_UP.labels(self.name)
        self._link_gauge.set(0)
        # At 0 before the first failover: increase() sees nothing of a series' first sample.
        metrics.FAILOVERS.labels(self.name)
        metrics.FAILBACKS.labels(self.name)

    @property
    def clock_offset(self) -> timedelta:
        """The receiver's clock minus ours, adopted from its last NAK (§1.10)."""
        return self._tx.clock_offset

    @property
    def busy(self) -> bool:
        """True while a frame is outstanding on this connection."""
        return self._lock.locked()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, *, probe: bool = True) -> None:
        """Start NULL link polls. ``probe``: also while the link is down, to see it come back
        (else polls pause until a send has brought this connection up again)."""
        if self._poller is None:
            self._poller = asyncio.create_task(
                self._poll_loop(probe), name=f"receiver-poll-{self.name}"
            )

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        self._disconnect()

    # -- sending --------------------------------------------------------------------------------

    def _encode_event(self, event: Event, account: str) -> tuple[str, str, str, str | None]:
        """(token, data, family, note) for ``event`` in the family this receiver accepts.

        An event without an equivalent in the accepted family goes in its own family (an alarm
        the station may not parse beats an alarm never sent); ``note`` says so.
        """
        families = self.config.families
        note = None
        try:
            if families == "cid" and event.family is Family.SIA:
                event = to_cid(event)
            elif families == "sia" and event.family is Family.CID:
                event = to_sia(event)
        except ConversionError as exc:
            note = f"sent unconverted to a {families}-only receiver: {exc}"
        if event.family is Family.CID and not cid_fits(event):
            # Zone 1234 or partition 120 (an MQTT module's) does not fit Contact ID: SIA carries
            # it where the receiver takes SIA; a Contact ID-only one gets the event without the
            # number (000 / 00: "none"), never a cut-down, wrong one.
            event, note = self._cid_overflow(event, families)
        if event.family is Family.CID:
            return "ADM-CID", format_cid_block(event, account), "cid", note
        return "SIA-DCS", format_sia_block(event, account), "sia", note

    @staticmethod
    def _cid_overflow(event: Event, families: str) -> tuple[Event, str]:
        """``event`` (Contact ID, a number too large for it) in a form this receiver can take."""
        numbers = f"partition {event.partition}, zone {event.zone}, user {event.user}"
        if families != "cid":
            with contextlib.suppress(ConversionError):
                return to_sia(event), f"sent as SIA: Contact ID cannot hold {numbers}"
        fitted = msgspec.structs.replace(
            event,
            partition=event.partition if 0 <= (event.partition or 0) <= 99 else None,
            zone=event.zone if 0 <= (event.zone or 0) <= 999 else None,
            user=event.user if 0 <= (event.user or 0) <= 999 else None,
        )
        return fitted, f"sent without the numbers Contact ID cannot hold ({numbers})"

    async def send(self, *, account: str, event: Event, seq: str | None = None) -> DeliveryAttempt:
        """Send one event for ``account`` (the station's account number).

        ``seq`` is given for a retransmission (the attempt's ``seq`` from the failed try), so the
        receiver can recognise the copy (§1.5); None takes the next number (its pool's numbering,
        or this connection's own).
        The account is hex (§1.6): one stored in lower case goes out upper case, as a frame's
        ``#acct`` must be.
        """
        account = account.upper()
        token, data, family, note = self._encode_event(event, account)
        if note is not None:
            log.warning("receiver_family_unconverted", receiver=self.name, note=note)
        async with self._lock:
            return await self._send_frame(
                token=token, account=account, data=data, seq=seq, family=family, note=note
            )

    async def wait_for_link(self, up: bool) -> None:
        """Return once :attr:`link_up` equals ``up`` (wrap in a timeout)."""
        while self.link_up != up:
            self._link_changed.clear()
            await self._link_changed.wait()

    async def poll(self) -> bool:
        """Send one NULL link test now; True when the receiver ACKed."""
        async with self._lock:
            attempt = await self._send_frame(
                token="NULL", account=self.config.poll_account.upper(), data="", seq="0000"
            )
        ok = attempt.outcome == "acked"
        metrics.POLLS.labels(self.name, "ok" if ok else "failed").inc()
        return ok

    async def _send_frame(
        self,
        *,
        token: str,
        account: str,
        data: str,
        seq: str | None,
        family: str | None = None,
        note: str | None = None,
    ) -> DeliveryAttempt:
        sent_at: datetime | None = None
        frame_seq = seq or self._next_seq()
        loop = asyncio.get_running_loop()
        for _ in range(2):  # the second round only after a NAK (clock corrected)
            now = self._clock()
            sent_at = sent_at or now
            try:
                out = self._tx.build(
                    token=token, account=account, data=data, seq=frame_seq, now=now
                )
            except (ValueError, OverflowError) as exc:
                # No frame can be made for this delivery (its station account or event does not
                # fit DC-09): nothing was sent, so the link is no worse than before, and no
                # retry or other receiver can help.
                return DeliveryAttempt(
                    outcome="unsendable",
                    receiver=self.name,
                    seq=frame_seq,
                    sent_at=sent_at,
                    error=f"frame not built: {exc}",
                    family_sent=family,
                    note=note,
                )
            try:
                outcome = await self._exchange(out, loop)
            except (OSError, TimeoutError, ConnectionError, UnicodeError) as exc:
                # (UnicodeError: a host name no resolver takes, e.g. with an empty label.)
                self.last_exchange_at = loop.time()
                self._set_link(False)
                self._disconnect()
                return DeliveryAttempt(
                    outcome="failed",
                    receiver=self.name,
                    seq=frame_seq,
                    sent_at=sent_at,
                    error=self._describe_failure(exc),
                    family_sent=family,
                    note=note,
                )
            self.last_exchange_at = loop.time()
            if isinstance(outcome, _TAKEN):
                self._set_link(True)  # the receiver took the frame (or refused it on purpose)
            elif not isinstance(outcome, Naked):
                # Answered, but not usefully (a reply for another frame, a clock not adopted):
                # not a link to fail back to. It is up again once it ACKs (a NULL poll will do).
                self._set_link(False)
            if isinstance(outcome, _ACCEPTED):
                return DeliveryAttempt(
                    outcome="acked",
                    receiver=self.name,
                    seq=frame_seq,
                    sent_at=sent_at,
                    acked_at=self._replied_at,
                    family_sent=family,
                    note=note,
                )
            if isinstance(outcome, Duhed):
                return DeliveryAttempt(
                    outcome="duh",
                    receiver=self.name,
                    seq=frame_seq,
                    sent_at=sent_at,
                    error="DUH",
                    family_sent=family,
                    note=note,
                )
            if isinstance(outcome, Naked):
                log.info(
                    "receiver_nak_clock_adopted",
                    receiver=self.name,
                    offset_s=self._tx.clock_offset.total_seconds(),
                    seq=frame_seq,
                )
                continue
            return DeliveryAttempt(
                outcome="failed",
                receiver=self.name,
                seq=frame_seq,
                sent_at=sent_at,
                error=outcome.reason,
                family_sent=family,
                note=note,
            )
        self._set_link(False)  # NAKs every time: not a link to deliver over
        return DeliveryAttempt(
            outcome="failed",
            receiver=self.name,
            seq=frame_seq,
            sent_at=sent_at,
            error="NAK after clock correction",
            family_sent=family,
            note=note,
        )

    def _describe_failure(self, exc: BaseException) -> str:
        """Why an exchange failed; a host name that cannot be looked up is named (quoted, so a
        stray space or a typo shows), and so is a reply to another frame that came instead."""
        if isinstance(exc, TimeoutError) and self._other_reply is not None:
            return f"{_describe(exc)} (the receiver answered {self._other_reply} instead)"
        if isinstance(exc, UnicodeError):
            return f"receiver host {self.config.host!r} is not a valid host name: {exc}"
        if isinstance(exc, socket.gaierror):
            return f"receiver host {self.config.host!r} not found: {exc}"
        return _describe(exc)

    async def _exchange(self, out: OutgoingFrame, loop: asyncio.AbstractEventLoop) -> Outcome:
        """Send ``out`` and wait for its reply; the ACK timeout covers connecting too.

        Raises TimeoutError (no answer in time), ConnectionError or OSError (connection refused,
        closed or reset before the reply).
        """
        deadline = loop.time() + self._timeout
        self._other_reply = None
        write: Callable[[bytes], None]
        if self._udp_mode:
            udp = self._udp
            if udp is None or udp.is_closing():
                udp = await self._connect_udp(loop)
            write = udp.sendto
        else:
            tcp = self._tcp
            if tcp is None or tcp.closed:
                # Not yet connected, or the receiver closed the idle connection (restart, idle
                # timeout): reconnect before sending rather than lose this attempt to a dead socket.
                tcp = await self._connect_tcp(loop)
            assert tcp.transport is not None
            write = tcp.transport.write
        waiter: asyncio.Future[Outcome] = loop.create_future()
        self._sent = out
        self._waiter = waiter
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            write(out.bytes)
            return await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:
                self._waiter = self._sent = None

    # -- replies (protocol callbacks) -----------------------------------------------------------

    def _on_data(self, conn: _TcpConnection, data: bytes) -> None:
        if conn is not self._tcp:
            return  # a connection already given up (its loss is being reported)
        self._resolve(self._tx.receive_data(data, sent=self._sent))

    def _on_datagram(self, endpoint: _UdpEndpoint, data: bytes) -> None:
        if endpoint is self._udp_endpoint:
            self._resolve(self._tx.receive_datagram(data))

    def _on_udp_error(self, endpoint: _UdpEndpoint, exc: Exception) -> None:
        """The socket reported an error (connection refused): the frame outstanding fails now,
        not at the end of its ACK timeout."""
        waiter = self._waiter
        if endpoint is self._udp_endpoint and waiter is not None and not waiter.done():
            waiter.set_exception(exc if isinstance(exc, OSError) else OSError(str(exc)))

    def _on_lost(self, conn: _TcpConnection, exc: Exception | None) -> None:
        if conn is not self._tcp:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                exc
                if isinstance(exc, OSError)
                else ConnectionError("receiver closed the connection")
            )

    def _resolve(self, events: list[ReplyEvent]) -> None:
        """Pair replies with the frame outstanding; late replies to earlier frames are dropped."""
        waiter = self._waiter
        sent = self._sent
        for event in events:
            if isinstance(event, ReplyRejected):
                log.warning("receiver_bad_reply", receiver=self.name, error=event.error.message)
                continue
            if waiter is None or sent is None or waiter.done():
                log.debug("receiver_reply_unexpected", receiver=self.name, seq=event.frame.seq)
                continue
            now = self._clock()
            outcome = self._tx.match(event.frame, sent, now=now)
            if (
                isinstance(outcome, Mismatch)
                and event.frame.seq != sent.seq
                and event.frame.token != "NAK"  # a NAK always says 0000: it answers ours
            ):
                # A late reply to an earlier frame: keep waiting for ours.
                self._other_reply = f"{event.frame.token} for seq {event.frame.seq}"
                continue
            self._replied_at = now  # the reply's arrival: acked_at
            waiter.set_result(outcome)
            return

    # -- connections ----------------------------------------------------------------------------

    async def _connect_tcp(self, loop: asyncio.AbstractEventLoop) -> _TcpConnection:
        self._disconnect()
        assert self.config.host is not None
        assert self.config.port is not None
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: _TcpConnection(self), self.config.host, self.config.port
            ),
            self._timeout,
        )
        if conn.closed:  # lost between connecting and now
            raise ConnectionError("receiver closed the connection")
        self._tx.reset_stream()  # no half frame from an earlier connection
        self._tcp = conn
        return conn

    async def _connect_udp(self, loop: asyncio.AbstractEventLoop) -> asyncio.DatagramTransport:
        self._disconnect()
        assert self.config.host is not None
        assert self.config.port is not None
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: _UdpEndpoint(self), remote_addr=(self.config.host, self.config.port)
        )
        self._udp = transport
        self._udp_endpoint = endpoint
        return transport

    def _disconnect(self) -> None:
        """Drop the connection; a frame still outstanding on it fails at once."""
        tcp, self._tcp = self._tcp, None
        if tcp is not None and tcp.transport is not None:
            tcp.transport.abort()
        udp, self._udp, self._udp_endpoint = self._udp, None, None
        if udp is not None:
            udp.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed"))

    def _set_link(self, up: bool) -> None:
        if up != self.link_up:
            log.info("receiver_link", receiver=self.name, up=up)
            self._link_changed.set()
            self.link_up = up
        # Set on every exchange: the pool's connections share the receiver's gauge, which shows
        # the latest exchange on any of them (as Dc09ReceiverPool.link_up does).
        self._link_gauge.set(1 if up else 0)

    async def _poll_loop(self, probe: bool) -> None:
        """NULL polls while idle (any answered frame supervises the link, §1.11); while the link
        is down, reconnect attempts (a poll each) back off exponentially up to the poll interval,
        or, without ``probe``, none until a send brings the link up."""
        loop = asyncio.get_running_loop()
        interval = self.config.null_poll_interval_s
        backoff = min(_FIRST_RETRY_S, interval)
        while True:
            if self.link_up:
                backoff = min(_FIRST_RETRY_S, interval)
                delay = self.last_exchange_at + interval - loop.time()
            elif not probe:
                await self.wait_for_link(True)
                continue
            else:
                delay = backoff
                backoff = min(backoff * 2, interval)
            if delay > 0:
                await asyncio.sleep(delay)
            if self._lock.locked():
                async with self._lock:  # traffic is flowing: it supervises the link
                    continue
            if self.link_up and loop.time() - self.last_exchange_at < interval:
                continue
            try:
                up_before = self.link_up
                if not await self.poll() and up_before and not probe and not self.link_up:
                    # This connection's own flow may be what died (a NAT or firewall dropped
                    # it): one more poll, on a new connection, says whether the receiver is.
                    await self.poll()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("receiver_poll_error", receiver=self.name)
                # ... and never spin: the next one only after a pause (an error raised before
                # the poll's first await would otherwise hold the event loop).
                await asyncio.sleep(backoff)


_FIRST_RETRY_S = 0.5  # first reconnect attempt after the link went down


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the ACK timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_Slot = tuple[int, Dc09ReceiverClient]  # (index in the pool, connection)


class Dc09ReceiverPool:
    """Several connections to one receiver, so different lanes can be in flight at once.

    Each connection is stop-and-wait; order within a lane is the dispatcher's job (one delivery
    per lane in flight), so spreading lanes over connections keeps it. A send takes the first
    idle connection (lowest index); when all are busy it waits for whichever becomes free first
    (callers by priority, 0 first, then in arrival order: an alarm does not queue behind a
    backlog of routine signals waiting for the receiver).
    """

    def __init__(self, config: ReceiverConfig, *, connections: int = 4) -> None:
        self.config = config
        self.name = config.name
        # Frames sent without a seq of their own (listen-ins) take one numbering for all the
        # connections, from a random start, so neither two connections nor a restarted engine
        # repeat a number just used for the same account (a station deduplicates on account,
        # seq and data).
        numbering = SequenceNumbers(last=secrets.randbelow(9999))
        self._clients = [
            Dc09ReceiverClient(config, next_seq=numbering.next) for _ in range(max(1, connections))
        ]
        self._idle: list[_Slot] = list(enumerate(self._clients))  # a heap, by index
        # Callers waiting for a connection: a heap of (priority, arrival, waiter).
        self._waiting: list[tuple[int, int, asyncio.Future[_Slot]]] = []
        self._arrivals = itertools.count()

    @property
    def connections(self) -> tuple[Dc09ReceiverClient, ...]:
        """The connections, lowest index first (the order :meth:`send` prefers them in)."""
        return tuple(self._clients)

    @property
    def link_up(self) -> bool:
        """The link state seen by the most recent exchange on any connection.

        (Not "any connection up": a connection idle since before an outage would keep claiming
        the link is up and make the group fail back at once.)
        """
        return max(self._clients, key=lambda c: c.last_exchange_at).link_up

    def start(self) -> None:
        """NULL polls on every connection (PRODUCT.md): an idle connection whose flow died
        silently (a NAT or firewall timeout, a receiver gone without a FIN) is found and
        replaced by its own polls, not by the next alarm waiting out an ACK timeout on it.
        While the link is down only the first probes for its return: the others, closed by
        their failure, reconnect with their next send, and do not hold up sends with polls
        waiting out their timeouts on a receiver that is gone."""
        for index, client in enumerate(self._clients):
            client.start(probe=index == 0)

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def send(
        self, *, account: str, event: Event, seq: str | None = None, priority: int = 0
    ) -> DeliveryAttempt:
        """Send on the first idle connection, or on the first one to become idle.

        ``priority``: while every connection is busy, callers with a lower one get a connection
        first (the outbox's: 0 alarms, panics, fire, and listen-ins; 1 routine)."""
        idle = self._idle
        if idle:
            slot = heapq.heappop(idle)
            if idle and slot[1].busy:
                # A NULL poll is out on it (each connection polls while idle): take the first
                # idle one without a poll, if any.
                free = min((s for s in idle if not s[1].busy), default=None)
                if free is not None:
                    idle.remove(free)
                    idle.append(slot)
                    heapq.heapify(idle)
                    slot = free
        else:
            slot = await self._wait_for_connection(priority)
        return await self._send_on(slot, account=account, event=event, seq=seq)

    async def send_unless(
        self,
        give_up: Callable[[], bool],
        *,
        account: str,
        event: Event,
        seq: str | None = None,
        priority: int = 0,
    ) -> DeliveryAttempt | None:
        """As :meth:`send`; but when it had to wait for a connection and ``give_up()`` has
        become true meanwhile (its group failed over), nothing is sent: None."""
        idle = self._idle
        if idle:
            return await self.send(account=account, event=event, seq=seq, priority=priority)
        slot = await self._wait_for_connection(priority)
        if give_up():
            self._release(slot)
            return None
        return await self._send_on(slot, account=account, event=event, seq=seq)

    async def _send_on(
        self, slot: _Slot, *, account: str, event: Event, seq: str | None
    ) -> DeliveryAttempt:
        try:
            return await slot[1].send(account=account, event=event, seq=seq)
        finally:
            self._release(slot)

    async def _wait_for_connection(self, priority: int) -> _Slot:
        waiter: asyncio.Future[_Slot] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed to us just as we were cancelled
            raise

    def _release(self, slot: _Slot) -> None:
        waiting = self._waiting
        while waiting:
            _, _, waiter = heapq.heappop(waiting)
            if not waiter.done():  # skip callers cancelled while waiting
                waiter.set_result(slot)
                return
        heapq.heappush(self._idle, slot)

    async def poll(self) -> bool:
        return await self._clients[0].poll()
