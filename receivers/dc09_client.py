"""A DC-09 transmitter to one monitoring-station receiver: a thin asyncio adapter over
:class:`protocols.dc09_transmitter.Dc09Transmitter`.

One persistent TCP connection (or a UDP socket), stop-and-wait: one frame outstanding, replies
paired by seq. ACK → acked; NAK → the receiver's clock offset is adopted and the frame resent once
with the same seq; DUH → refused (the caller dead-letters); no answer → failed (the caller retries
with the same seq). NULL polls keep the link supervised and drive the link-state metric.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import msgspec
import structlog

from engine.station_model import ReceiverConfig
from protocols.cid_sia_conversion import ConversionError, to_cid, to_sia
from protocols.contact_id import format_cid_block
from protocols.dc09_crypto import AesKey
from protocols.dc09_transmitter import (
    Acked,
    Dc09Transmitter,
    Duhed,
    Mismatch,
    Naked,
    OutgoingFrame,
    ReplyReceived,
    ReplyRejected,
    RspReceived,
)
from protocols.sia_dc03 import format_sia_block
from protocols.signal import Event, Family
from receivers import metrics

log = structlog.get_logger("receivers.dc09")


def utc_now() -> datetime:
    return datetime.now(UTC)


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one frame sent to a receiver."""

    outcome: str  # "acked" | "duh" | "failed"
    receiver: str
    seq: str
    sent_at: datetime | None = None
    acked_at: datetime | None = None
    error: str | None = None
    family_sent: str | None = None
    note: str | None = None  # e.g. why the event went in its own family to a one-family receiver


class Dc09ReceiverClient:
    """Sends frames to one receiver; callers are serialised (stop-and-wait)."""

    def __init__(self, config: ReceiverConfig, *, clock: Callable[[], datetime] = utc_now) -> None:
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
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_replies: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
        self._poller: asyncio.Task[None] | None = None
        # loop.time() of the last exchange that ended (answered or failed); 0 before the first.
        self.last_exchange_at = 0.0
        self._link_changed = asyncio.Event()
        self.link_up = False
        metrics.LINK_UP.labels(self.name).set(0)

    @property
    def clock_offset(self) -> timedelta:
        """The receiver's clock minus ours, adopted from its last NAK (§1.10)."""
        return self._tx.clock_offset

    @property
    def busy(self) -> bool:
        """True while a frame is outstanding on this connection."""
        return self._lock.locked()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start NULL link polls."""
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll_loop(), name=f"receiver-poll-{self.name}")

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
        if event.family is Family.CID:
            return "ADM-CID", format_cid_block(event, account), "cid", note
        return "SIA-DCS", format_sia_block(event, account), "sia", note

    async def send(self, *, account: str, event: Event, seq: str | None = None) -> DeliveryAttempt:
        """Send one event for ``account`` (the station's account number).

        ``seq`` is given for a retransmission (the attempt's ``seq`` from the failed try), so the
        receiver can recognise the copy (§1.5); None takes this connection's next number.
        """
        token, data, family, note = self._encode_event(event, account)
        if note is not None:
            log.warning("receiver_family_unconverted", receiver=self.name, note=note)
        async with self._lock:
            attempt = await self._send_frame(token=token, account=account, data=data, seq=seq)
        return msgspec.structs.replace(attempt, family_sent=family, note=note)

    async def wait_for_link(self, up: bool) -> None:
        """Return once :attr:`link_up` equals ``up`` (wrap in a timeout)."""
        while self.link_up != up:
            self._link_changed.clear()
            await self._link_changed.wait()

    async def poll(self) -> bool:
        """Send one NULL link test now; True when the receiver ACKed."""
        async with self._lock:
            attempt = await self._send_frame(token="NULL", account="0000", data="", seq="0000")
        ok = attempt.outcome == "acked"
        metrics.POLLS.labels(self.name, "ok" if ok else "failed").inc()
        return ok

    async def _send_frame(
        self, *, token: str, account: str, data: str, seq: str | None
    ) -> DeliveryAttempt:
        sent_at: datetime | None = None
        frame_seq = seq or self._tx.next_seq()
        for _ in range(2):  # the second round only after a NAK (clock corrected)
            out = self._tx.build(
                token=token, account=account, data=data, seq=frame_seq, now=self._clock()
            )
            sent_at = sent_at or self._clock()
            try:
                outcome = await self._exchange(out)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                self.last_exchange_at = asyncio.get_running_loop().time()
                self._set_link(False)
                self._disconnect()
                return DeliveryAttempt(
                    outcome="failed",
                    receiver=self.name,
                    seq=frame_seq,
                    sent_at=sent_at,
                    error=_describe(exc),
                )
            self.last_exchange_at = asyncio.get_running_loop().time()
            self._set_link(True)
            if isinstance(outcome, Acked | RspReceived):
                return DeliveryAttempt(
                    outcome="acked",
                    receiver=self.name,
                    seq=frame_seq,
                    sent_at=sent_at,
                    acked_at=self._clock(),
                )
            if isinstance(outcome, Duhed):
                return DeliveryAttempt(
                    outcome="duh", receiver=self.name, seq=frame_seq, sent_at=sent_at, error="DUH"
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
            )
        return DeliveryAttempt(
            outcome="failed",
            receiver=self.name,
            seq=frame_seq,
            sent_at=sent_at,
            error="NAK after clock correction",
        )

    async def _exchange(self, out: OutgoingFrame) -> Acked | Naked | Duhed | RspReceived | Mismatch:
        timeout = self.config.ack_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.config.protocol == "udp":
            await self._ensure_udp()
            assert self._udp is not None
            while not self._udp_replies.empty():  # drop late replies to earlier frames
                self._udp_replies.get_nowait()
            self._udp.sendto(out.bytes)
            while True:
                raw = await asyncio.wait_for(
                    self._udp_replies.get(), max(0.0, deadline - loop.time())
                )
                for event in self._tx.receive_datagram(raw):
                    outcome = self._match(event, out)
                    if outcome is not None:
                        return outcome
        await self._ensure_tcp(timeout)
        assert self._writer is not None
        assert self._reader is not None
        self._writer.write(out.bytes)
        await self._writer.drain()
        while True:
            chunk = await asyncio.wait_for(
                self._reader.read(4096), max(0.0, deadline - loop.time())
            )
            if not chunk:
                raise ConnectionError("receiver closed the connection")
            for event in self._tx.receive_data(chunk):
                outcome = self._match(event, out)
                if outcome is not None:
                    return outcome

    def _match(
        self, event: ReplyReceived | ReplyRejected, out: OutgoingFrame
    ) -> Acked | Naked | Duhed | RspReceived | Mismatch | None:
        if isinstance(event, ReplyRejected):
            log.warning("receiver_bad_reply", receiver=self.name, error=event.error.message)
            return None
        outcome = self._tx.match(event.frame, out, now=self._clock())
        if isinstance(outcome, Mismatch) and event.frame.seq != out.seq:
            return None  # a late reply to an earlier frame: keep waiting for ours
        return outcome

    # -- connections ----------------------------------------------------------------------------

    async def _ensure_tcp(self, connect_timeout_s: float) -> None:
        if self._writer is not None and not self._writer.is_closing():
            assert self._reader is not None
            if not self._reader.at_eof() and self._reader.exception() is None:
                return
            # The receiver closed the idle connection (restart, idle timeout): reconnect before
            # sending rather than lose this attempt to a dead socket.
            self._disconnect()
        assert self.config.host is not None
        assert self.config.port is not None
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.config.host, self.config.port), connect_timeout_s
        )

    async def _ensure_udp(self) -> None:
        if self._udp is not None and not self._udp.is_closing():
            return
        queue = self._udp_replies

        class _Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(data)

        assert self.config.host is not None
        assert self.config.port is not None
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            _Proto, remote_addr=(self.config.host, self.config.port)
        )
        self._udp = transport

    def _disconnect(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    def _set_link(self, up: bool) -> None:
        if up != self.link_up:
            log.info("receiver_link", receiver=self.name, up=up)
            self._link_changed.set()
        self.link_up = up
        metrics.LINK_UP.labels(self.name).set(1 if up else 0)

    async def _poll_loop(self) -> None:
        """NULL polls while idle (any answered frame supervises the link, §1.11); while the link
        is down, reconnect attempts (a poll each) back off exponentially up to the poll interval."""
        loop = asyncio.get_running_loop()
        interval = self.config.null_poll_interval_s
        backoff = min(_FIRST_RETRY_S, interval)
        while True:
            if self.link_up:
                backoff = min(_FIRST_RETRY_S, interval)
                delay = self.last_exchange_at + interval - loop.time()
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
                await self.poll()
            except Exception:  # the poller must outlive any one bad poll
                log.exception("receiver_poll_error", receiver=self.name)


_FIRST_RETRY_S = 0.5  # first reconnect attempt after the link went down


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the ACK timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Dc09ReceiverPool:
    """Several connections to one receiver, so different lanes can be in flight at once.

    Each connection is stop-and-wait; order within a lane is the dispatcher's job (one delivery
    per lane in flight), so spreading lanes over connections keeps it.
    """

    def __init__(self, config: ReceiverConfig, *, connections: int = 4) -> None:
        self.config = config
        self.name = config.name
        self._clients = [Dc09ReceiverClient(config) for _ in range(max(1, connections))]
        self._next = 0

    @property
    def connections(self) -> tuple[Dc09ReceiverClient, ...]:
        """The connections, in the order :meth:`send` tries them."""
        return tuple(self._clients)

    @property
    def link_up(self) -> bool:
        """The link state seen by the most recent exchange on any connection.

        (Not "any connection up": a connection idle since before an outage would keep claiming
        the link is up and make the group fail back at once.)
        """
        return max(self._clients, key=lambda c: c.last_exchange_at).link_up

    def start(self) -> None:
        self._clients[0].start()  # one connection's NULL polls supervise the link

    async def close(self) -> None:
        for client in self._clients:
            await client.close()

    async def send(self, *, account: str, event: Event, seq: str | None = None) -> DeliveryAttempt:
        """Send on an idle connection (or the next one in turn when all are busy)."""
        for client in self._clients:
            if not client.busy:
                return await client.send(account=account, event=event, seq=seq)
        self._next = (self._next + 1) % len(self._clients)
        return await self._clients[self._next].send(account=account, event=event, seq=seq)

    async def poll(self) -> bool:
        return await self._clients[0].poll()
