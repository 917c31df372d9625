"""The transmitter role of DC-09, sans-I/O: build frames for a monitoring-station receiver and
judge its replies.

The runtime sends :attr:`OutgoingFrame.bytes`, feeds what comes back to :meth:`receive_data`
(TCP) or :meth:`receive_datagram` (UDP) and asks :meth:`Dc09Transmitter.match` what each reply
means for the frame it sent. A retransmission is built again with ``seq=sent.seq`` (§1.5), so
it carries a fresh timestamp but the same sequence number.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import Frame, FrameSplitter, decode_frame, encode_frame
from protocols.errors import RemoteProtocolError
from protocols.signal import XData

_SEQ_MAX = 9999


class OutgoingFrame(msgspec.Struct, frozen=True, kw_only=True):
    """A frame built for sending, with what is needed to pair its reply."""

    seq: str
    token: str
    account: str
    timestamp: datetime  # as written into the frame (our clock plus the adopted offset)
    encrypted: bool
    bytes: bytes  # LF … CR, ready to send


class ReplyReceived(msgspec.Struct, frozen=True, kw_only=True):
    """A reply frame that decoded (and decrypted, for ``*ACK``)."""

    frame: Frame


class ReplyRejected(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes from the receiver that are not a valid reply frame (bad CRC, wrong key, …)."""

    error: RemoteProtocolError


ReplyEvent = ReplyReceived | ReplyRejected


class Acked(msgspec.Struct, frozen=True, kw_only=True):
    """The receiver accepted the frame."""

    frame: Frame


class Naked(msgspec.Struct, frozen=True, kw_only=True):
    """The receiver refused our timestamp; ``offset`` (receiver time − our time) was adopted.

    Both are None when the NAK carried no timestamp; resend the frame with the same seq.
    """

    frame: Frame
    receiver_time: datetime | None
    offset: timedelta | None


class Duhed(msgspec.Struct, frozen=True, kw_only=True):
    """The receiver got the frame but cannot process it; resending will not help."""

    frame: Frame


class RspReceived(msgspec.Struct, frozen=True, kw_only=True):
    """The receiver answered with data (``RSP``: key exchange or programming, 2013+)."""

    frame: Frame


class Mismatch(msgspec.Struct, frozen=True, kw_only=True):
    """A reply that does not answer the frame sent (wrong seq, wrong account, unexpected token)."""

    frame: Frame
    reason: str


ReplyOutcome = Acked | Naked | Duhed | RspReceived | Mismatch


class Dc09Transmitter:
    """Transmitter-side DC-09 state for one path to one receiver: sequence, clock offset, key."""

    def __init__(
        self, *, receiver: str | None, line: str | None, key: AesKey | None = None
    ) -> None:
        """``receiver``/``line`` are the R and L fields written into every frame (None: omitted)."""
        self.receiver = receiver
        self.line = line
        self.key = key
        self._seq = 0  # last sequence number used
        self._clock_offset = timedelta(0)
        self._splitter = FrameSplitter()

    @property
    def clock_offset(self) -> timedelta:
        """Receiver clock minus ours, as learned from the last NAK (0 until then)."""
        return self._clock_offset

    def next_seq(self) -> str:
        """The next sequence number: 0001 … 9999, then 0001 again (§1.5)."""
        self._seq = self._seq % _SEQ_MAX + 1
        return f"{self._seq:04d}"

    def build(
        self,
        *,
        token: str,
        account: str,
        data: str,
        xdata: Sequence[XData] = (),
        seq: str | None = None,
        now: datetime,
    ) -> OutgoingFrame:
        """A frame with the next seq (or ``seq`` for a retransmission) and our corrected time.

        The timestamp is always written: it is required when encrypted and lets the receiver
        NAK a drifting clock otherwise. Raises ValueError on arguments that make no valid frame.
        """
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime (DC-09 timestamps are UTC)")
        seq = self.next_seq() if seq is None else seq
        timestamp = (now + self._clock_offset).replace(microsecond=0)
        raw = encode_frame(
            token=token,
            seq=seq,
            account=account,
            data=data,
            receiver=self.receiver,
            line=self.line,
            xdata=xdata,
            timestamp=timestamp,
            key=self.key,
        )
        return OutgoingFrame(
            seq=seq,
            token=token,
            account=account,
            timestamp=timestamp,
            encrypted=self.key is not None,
            bytes=raw,
        )

    def build_null(self, *, account: str, now: datetime, seq: str | None = None) -> OutgoingFrame:
        """A ``NULL`` link test (``*NULL`` when keyed) with empty data (§1.11)."""
        return self.build(token="NULL", account=account, data="", seq=seq, now=now)

    def receive_data(self, data: bytes) -> list[ReplyEvent]:
        """Feed bytes read from the TCP connection; replies may be split or several per read."""
        return [
            ReplyRejected(error=item)
            if isinstance(item, RemoteProtocolError)
            else self._decode(item)
            for item in self._splitter.feed(data)
        ]

    def receive_datagram(self, data: bytes) -> list[ReplyEvent]:
        """Feed one UDP reply datagram (LF and CR optional)."""
        raw = data.strip(b"\x00")
        return [self._decode(raw)] if raw else []

    def _decode(self, raw: bytes) -> ReplyEvent:
        try:
            # A *ACK is decrypted with our key; plain replies need none.
            return ReplyReceived(frame=decode_frame(raw, key=self.key))
        except RemoteProtocolError as exc:
            return ReplyRejected(error=exc)

    def match(self, reply: Frame, sent: OutgoingFrame, *, now: datetime) -> ReplyOutcome:
        """What ``reply`` means for ``sent``; a NAK's time is adopted as :attr:`clock_offset`.

        ``now`` is our clock when the reply arrived. ACK, DUH and RSP must echo the seq and
        account of the frame sent (North Latitude Q&A); NAK always says 0000 and has no account.
        """
        token = reply.token
        if token == "NAK":
            if reply.encrypted:
                return Mismatch(frame=reply, reason="NAK must not be encrypted")
            if reply.timestamp is None:
                return Naked(frame=reply, receiver_time=None, offset=None)
            offset = reply.timestamp - now
            self._clock_offset = offset
            return Naked(frame=reply, receiver_time=reply.timestamp, offset=offset)
        if token not in ("ACK", "DUH", "RSP"):
            return Mismatch(frame=reply, reason=f"unexpected reply token {token!r}")
        if reply.seq != sent.seq:
            return Mismatch(frame=reply, reason=f"reply seq {reply.seq} != sent {sent.seq}")
        if reply.account is not None and reply.account != sent.account.upper():
            return Mismatch(
                frame=reply, reason=f"reply account {reply.account} != sent {sent.account}"
            )
        if token == "DUH":
            return Duhed(frame=reply)
        if token == "RSP":
            return RspReceived(frame=reply)
        if sent.encrypted and not reply.encrypted:
            # §1.4: the ACK to an encrypted message is encrypted; a plain one proves nothing.
            return Mismatch(frame=reply, reason="plain ACK to an encrypted frame")
        return Acked(frame=reply)
