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

from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import (
    CrcStyle,
    Frame,
    FrameSplitter,
    decode_frame,
    encode_frame,
    encode_reply,
)
from protocols.dc09_timestamp import format_timestamp
from protocols.errors import RemoteProtocolError
from protocols.signal import XData

_SEQ_MAX = 9999
_HEADS_MAX = 4096  # (token, account) headers remembered per transmitter


# The largest receiver clock offset a NAK may make us adopt (a receiver set years wrong is
# broken, not skewed; its time would soon overflow the frames' timestamps).
MAX_CLOCK_OFFSET = timedelta(days=3660)


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


class SequenceNumbers:
    """DC-09 sequence numbers: 0001 … 9999, then 0001 again (§1.5). ``last`` is the number the
    first :meth:`next` follows (0: it is 0001)."""

    def __init__(self, last: int = 0) -> None:
        self._last = last % _SEQ_MAX

    def next(self) -> str:
        self._last = self._last % _SEQ_MAX + 1
        return f"{self._last:04d}"


class Dc09Transmitter:
    """Transmitter-side DC-09 state for one path to one receiver: sequence, clock offset, key."""

    def __init__(
        self, *, receiver: str | None, line: str | None, key: AesKey | None = None
    ) -> None:
        """``receiver``/``line`` are the R and L fields written into every frame (None: omitted)."""
        self.receiver = receiver
        self.line = line
        self.key = key
        self._numbers = SequenceNumbers()
        self._clock_offset = timedelta(0)
        self._splitter = FrameSplitter()
        # (token, account) → (quoted token, "R…L…#account[") for frames encode_frame accepted.
        self._heads: dict[tuple[str, str], tuple[str, str]] = {}
        self._stamp_for: datetime | None = None  # the timestamp _stamp is formatted from
        self._stamp = ""

    @property
    def clock_offset(self) -> timedelta:
        """Receiver clock minus ours, as learned from the last NAK (0 until then)."""
        return self._clock_offset

    def next_seq(self) -> str:
        """The next sequence number: 0001 … 9999, then 0001 again (§1.5)."""
        return self._numbers.next()

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
        head = None if xdata else self._heads.get((token, account))
        if head is None or len(seq) != 4 or not (seq.isascii() and seq.isdigit()):
            raw = self._encode_general(token, seq, account, data, xdata, timestamp)
        else:
            raw = self._encode_cached(head, seq, data, timestamp)
        return OutgoingFrame(
            seq=seq,
            token=token,
            account=account,
            timestamp=timestamp,
            encrypted=self.key is not None,
            bytes=raw,
        )

    def _encode_general(
        self,
        token: str,
        seq: str,
        account: str,
        data: str,
        xdata: Sequence[XData],
        timestamp: datetime,
    ) -> bytes:
        """:func:`encode_frame`, which validates everything; a valid (token, account) is
        remembered with its header so :meth:`_encode_cached` builds its next frames."""
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
        if (token, account) not in self._heads:
            if len(self._heads) >= _HEADS_MAX:
                self._heads.clear()
            fields = "" if self.receiver is None else f"R{self.receiver}"
            fields += "" if self.line is None else f"L{self.line}"
            self._heads[(token, account)] = (
                f'"{"*" if self.key is not None else ""}{token}"',
                f"{fields}#{account}[",
            )
        return raw

    def _encode_cached(
        self, head: tuple[str, str], seq: str, data: str, timestamp: datetime
    ) -> bytes:
        """``encode_frame`` without x-data for a (token, account) it accepted before: the same
        bytes (only the seq and data are checked again; the timestamp is formatted once a second)."""
        if "[" in data or "]" in data:
            raise ValueError("data must not contain '[' or ']'")
        if timestamp != self._stamp_for:
            self._stamp = format_timestamp(timestamp)
            self._stamp_for = timestamp
        quoted, fields = head
        if self.key is None:
            region = f"{quoted}{seq}{fields}{data}]{self._stamp}".encode("cp1252")
        else:
            cipher_hex = self.key.encrypt_region(f"{data}]{self._stamp}".encode("cp1252"))
            region = f"{quoted}{seq}{fields}{cipher_hex}".encode("ascii")
        if len(region) > 0xFFF:
            raise ValueError(f"frame content of {len(region)} bytes exceeds the 0xFFF length limit")
        return b"\n%04X0%03X" % (crc16_arc(region), len(region)) + region + b"\r"

    def build_null(self, *, account: str, now: datetime, seq: str | None = None) -> OutgoingFrame:
        """A ``NULL`` link test (``*NULL`` when keyed) with empty data (§1.11)."""
        return self.build(token="NULL", account=account, data="", seq=seq, now=now)

    def receive_data(self, data: bytes, *, sent: OutgoingFrame | None = None) -> list[ReplyEvent]:
        """Feed bytes read from the TCP connection; replies may be split or several per read.

        ``sent``: the frame awaiting its reply. Its plain ACK in the standard form (echoing our
        R and L and its seq and account) is recognised by its bytes: the same event, undecoded.
        """
        items = self._splitter.feed(data)
        if sent is not None and len(items) == 1 and not sent.encrypted:
            [item] = items
            if isinstance(item, bytes) and item == encode_reply(
                token="ACK",
                seq=sent.seq,
                account=sent.account,
                receiver=self.receiver,
                line=self.line,
            ):
                return [ReplyReceived(frame=self._plain_ack(item, sent))]
        return [
            ReplyRejected(error=item)
            if isinstance(item, RemoteProtocolError)
            else self._decode(item)
            for item in items
        ]

    def _plain_ack(self, raw: bytes, sent: OutgoingFrame) -> Frame:
        """What :func:`decode_frame` returns for ``raw``, the standard plain ACK of ``sent``."""
        return Frame(
            token="ACK",
            encrypted=False,
            seq=sent.seq,
            receiver=self.receiver,
            line=self.line,
            account=sent.account,
            data="",
            xdata=(),
            timestamp=None,
            crc_style=CrcStyle.HEX,
            crc_includes_cr=False,
            raw=raw,
        )

    def reset_stream(self) -> None:
        """Forget any partial reply held back (a new TCP connection starts a new stream)."""
        self._splitter = FrameSplitter()

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
            if abs(offset) > MAX_CLOCK_OFFSET:
                # A receiver clock years off (a NAK dated 9999) would make every later frame's
                # time overflow: not adopted, the attempt fails (the group may fail over).
                return Mismatch(
                    frame=reply,
                    reason=f"NAK time {reply.timestamp.isoformat()} is {offset} from ours: not adopted",
                )
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
        if sent.encrypted and not reply.encrypted:
            # §1.4: the ACK (or RSP) to an encrypted message is encrypted; a plain one proves
            # nothing (anyone on the path can send it), so it never counts as delivered.
            return Mismatch(frame=reply, reason=f"plain {token} to an encrypted frame")
        if token == "RSP":
            return RspReceived(frame=reply)
        return Acked(frame=reply)
