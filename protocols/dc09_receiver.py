"""The receiver role of DC-09, sans-I/O: bytes and ``now`` in, events and reply bytes out.

One :class:`Dc09ReceiverConnection` per TCP connection (or one for a UDP socket). Feed it what the
socket read; it returns :class:`FrameReceived` for each accepted frame (build the ACK with
:meth:`~Dc09ReceiverConnection.ack` once the signal is safe) and :class:`FrameRejected` carrying
the reply to send at once (NAK, DUH) or nothing (bad CRC or length: silence, §1.10).
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Protocol

import msgspec

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import (
    MAX_FRAME_BYTES,
    CrcStyle,
    Frame,
    FrameHeader,
    FrameSplitter,
    decode_body,
    decode_header,
    encode_reply,
)
from protocols.dc09_payload import parse_payload
from protocols.dc09_timestamp import TimestampWindow, local_time_readings
from protocols.errors import RemoteProtocolError, Reply
from protocols.signal import Event

_EVENT_TOKENS = frozenset({"SIA-DCS", "ADM-CID", "NULL"})


class AccountCrypto(msgspec.Struct, frozen=True, kw_only=True):
    """What the receiver needs to know about one account."""

    key: AesKey | None = None
    window: TimestampWindow | None = None  # None: the receiver's default
    local_time_zone: tzinfo | None = None  # the panel writes local time in this zone


class AccountDirectory(Protocol):
    """Account lookup; None means the account is unknown."""

    def lookup(self, account: str) -> AccountCrypto | None: ...


class ReceiverConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Receiver-wide rules."""

    window: TimestampWindow = TimestampWindow()
    check_plain_timestamps: bool = True  # plain frames that carry a timestamp are checked too
    unknown_account_reply: Reply = Reply.DUH  # or Reply.NONE (silent)
    max_frame_bytes: int = MAX_FRAME_BYTES  # LF … CR; no larger frame is legal (length ≤ 0xFFF)
    max_buffer_bytes: int = 65_536  # one read is parsed in slices of this size; the retained
    # buffer between reads never exceeds max_frame_bytes


class FrameReceived(msgspec.Struct, frozen=True, kw_only=True):
    """An accepted frame and the events it carries (empty for NULL)."""

    frame: Frame
    events: tuple[Event, ...]
    # The frame's timestamp as a UTC instant: ``frame.timestamp`` itself, or for an account whose
    # panel writes local time, its reading in UTC. None without a timestamp.
    sent_at: datetime | None = None


class FrameRejected(msgspec.Struct, frozen=True, kw_only=True):
    """A frame (or garbage) not accepted; ``error.reply_bytes`` is the reply to send."""

    error: RemoteProtocolError
    header: FrameHeader | None = None


ReceiverEvent = FrameReceived | FrameRejected


class Dc09ReceiverConnection:
    """Receiver-side DC-09 state for one connection: stream buffer and reply builders."""

    def __init__(self, config: ReceiverConfig, directory: AccountDirectory) -> None:
        """One connection's state; ``directory`` gives each account's key and window."""
        self.config = config
        self.directory = directory
        self._splitter = FrameSplitter(
            max_frame_bytes=config.max_frame_bytes, max_buffer_bytes=config.max_buffer_bytes
        )
        self._keys: dict[str, AesKey] = {}  # keys that decrypted a frame here, for the *ACK

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, *, now: datetime) -> list[ReceiverEvent]:
        """Feed bytes read from a TCP stream; frames may be split or several per read.

        The result does not depend on how the stream was cut (see :class:`FrameSplitter`):
        garbage, truncated and oversized frames become silent :class:`FrameRejected` events.
        """
        events: list[ReceiverEvent] = []
        for item in self._splitter.feed(data):
            if isinstance(item, RemoteProtocolError):
                events.append(FrameRejected(error=item))
            else:
                events.append(self._handle(item, now))
        return events

    def receive_datagram(self, data: bytes, *, now: datetime) -> list[ReceiverEvent]:
        """Feed one UDP datagram: one frame, LF and CR optional, NULs around it ignored; as on
        TCP, blank bytes after it (a CR LF line end, spaces) and further frames in the same
        datagram are taken too (one event each)."""
        # The frame limit bounds each frame (the splitter's, _one_frame's): frames under it that
        # came together, or with a NUL or line end after them, are not refused for their sum.
        if len(data) > self.config.max_buffer_bytes:
            return [_rejected_none(f"datagram exceeds {self.config.max_buffer_bytes} bytes")]
        # Blank bytes before the first LF (a line end, spaces) are not a frame's: left on, the
        # datagram was read as one frame without LF, and every frame in it was lost.
        raw = data.strip(b"\x00").lstrip(b"\x00\r ")
        if not raw:
            return []
        if raw[:1] != b"\n":
            # No LF: one frame, its CR optional. A line end or spaces after it are not part of
            # it (no frame ends in one); left on, they broke the CRC and the frame met silence.
            end = len(raw.rstrip(b"\r\n "))
            if raw[end : end + 1] == b"\r":
                end += 1  # the frame's own CR stays in Frame.raw
            return [self._one_frame(raw[:end] or raw, now)]
        if raw.find(b"\r", 3) in (-1, len(raw) - 1) and raw.find(b"\n", 3) == -1:
            return [self._one_frame(raw, now)]  # one frame (the usual case)
        splitter = FrameSplitter(
            max_frame_bytes=self.config.max_frame_bytes,
            max_buffer_bytes=self.config.max_buffer_bytes,
        )
        items = splitter.feed(raw)
        rest = splitter.take_rest()
        if rest.strip(b"\x00\r\n "):
            items.append(rest)
        return [
            FrameRejected(error=item)
            if isinstance(item, RemoteProtocolError)
            else self._handle(item, now)
            for item in items
        ]

    # -- validation ---------------------------------------------------------------------------

    def _one_frame(self, raw: bytes, now: datetime) -> ReceiverEvent:
        """A datagram's single frame: over the frame limit it is dropped, as on TCP."""
        if len(raw) > self.config.max_frame_bytes:
            return _rejected_none(f"frame exceeds {self.config.max_frame_bytes} bytes")
        return self._handle(raw, now)

    def _handle(self, raw: bytes, now: datetime) -> ReceiverEvent:
        try:
            header = decode_header(raw)
        except RemoteProtocolError as exc:
            if exc.reply is Reply.NONE:
                return FrameRejected(error=exc)
            return FrameRejected(error=exc.with_reply_bytes(self._duh_bare()))
        try:
            return self._accept(header, now)
        except RemoteProtocolError as exc:
            return FrameRejected(error=self._with_reply(exc, header, now), header=header)

    def _accept(self, header: FrameHeader, now: datetime) -> FrameReceived:
        if header.token not in _EVENT_TOKENS:
            raise RemoteProtocolError(f"unsupported ID token {header.token!r}", reply=Reply.DUH)
        if not header.account:
            raise RemoteProtocolError("frame has no #account", reply=Reply.DUH)
        crypto = self.directory.lookup(header.account)
        if crypto is None:
            raise RemoteProtocolError(
                f"unknown account {header.account}", reply=self.config.unknown_account_reply
            )
        if crypto.key is not None and not header.encrypted:
            raise RemoteProtocolError(
                "encryption required for this account: plain frame refused", reply=Reply.DUH
            )
        if header.encrypted and crypto.key is None:
            raise RemoteProtocolError("encrypted frame but the account has no key", reply=Reply.DUH)
        try:
            frame = decode_body(header, crypto.key)
            sent_at = self._check_time(frame, crypto, now)
            events = parse_payload(frame.token, frame.data)
        except RemoteProtocolError as exc:
            if header.encrypted:
                raise _without_content(exc) from None
            raise
        if crypto.key is not None and header.account is not None:
            # Remembered so the *ACK uses the key that decrypted the frame even if the directory
            # changes in between; bounded by the number of keyed accounts seen here.
            self._keys[header.account] = crypto.key
        return FrameReceived(frame=frame, events=events, sent_at=sent_at)

    def _check_time(self, frame: Frame, crypto: AccountCrypto, now: datetime) -> datetime | None:
        """The frame's time in UTC (None without one); RemoteProtocolError (NAK) when it is
        checked and outside the window."""
        stamp = frame.timestamp
        if stamp is None:
            if frame.encrypted:
                # §1.9: every encrypted message carries a timestamp.
                raise RemoteProtocolError("encrypted frame without timestamp", reply=Reply.NAK)
            return None
        checked = frame.encrypted or self.config.check_plain_timestamps
        if crypto.local_time_zone is not None:
            try:
                readings = local_time_readings(stamp, crypto.local_time_zone)
            except ValueError as exc:
                raise RemoteProtocolError(f"timestamp: {exc}", reply=Reply.NAK) from None
            if len(readings) > 1:
                # The hour the clocks went back (or skipped): either reading may be meant.
                window = crypto.window or self.config.window
                inside = [r for r in readings if window.check(r, now)]
                if inside or not checked:
                    return (inside or readings)[0]
            stamp = readings[0]
        if checked:
            window = crypto.window or self.config.window
            if not window.check(stamp, now):
                raise RemoteProtocolError(
                    f"timestamp {stamp.isoformat()} outside the window -{window.past_s}/+{window.future_s} s",
                    reply=Reply.NAK,
                )
        return stamp

    def _with_reply(
        self, exc: RemoteProtocolError, header: FrameHeader, now: datetime
    ) -> RemoteProtocolError:
        if exc.reply is Reply.NAK:
            return exc.with_reply_bytes(self.nak(now=now, style=header.crc_style))
        if exc.reply is Reply.DUH:
            return exc.with_reply_bytes(self.duh(header))
        return exc

    # -- replies ------------------------------------------------------------------------------

    def ack(self, frame: Frame, *, now: datetime) -> bytes:
        """ACK (or ``*ACK`` for an encrypted frame) echoing seq, R (only if sent), L and account."""
        key = None
        if frame.encrypted and frame.account:
            key = self._keys.get(frame.account)
            if key is None:
                crypto = self.directory.lookup(frame.account)
                key = crypto.key if crypto is not None else None
            if key is None:
                # Never answer an encrypted frame in clear (§1.10): the caller has no key.
                raise ValueError(f"no key for account {frame.account} to build the *ACK")
        return encode_reply(
            token="ACK",
            seq=frame.seq,
            account=frame.account,
            receiver=frame.receiver,
            line=_echo_line(frame.line),
            timestamp=now if key is not None else None,
            key=key,
            crc_style=frame.crc_style,
        )

    def nak(self, *, now: datetime, style: CrcStyle = CrcStyle.HEX) -> bytes:
        """NAK with our UTC time, never encrypted: ``"NAK"0000R0L0A0[]_HH:MM:SS,MM-DD-YYYY``."""
        return encode_reply(
            token="NAK",
            seq="0000",
            account=None,
            receiver="0",
            line="0",
            extra_fields="A0",
            timestamp=now,
            crc_style=style,
        )

    def duh(self, header: FrameHeader | Frame) -> bytes:
        """DUH echoing seq, R, L and account; never encrypted."""
        return encode_reply(
            token="DUH",
            seq=header.seq,
            account=header.account,
            receiver=header.receiver,
            line=_echo_line(header.line),
            crc_style=header.crc_style,
        )

    def _duh_bare(self) -> bytes:
        return encode_reply(token="DUH", seq="0000", account=None, line="0")


def _echo_line(line: str | None) -> str | None:
    # A bare "L" is accepted but never emitted (§1.15): answer it with L0.
    if line == "":
        return "0"
    return line


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _without_content(exc: RemoteProtocolError) -> RemoteProtocolError:
    """``exc`` without the decrypted content its reason quotes: the reason is logged, and an
    encrypted frame's content (a GPS position, a user's name) is not. The parsers quote content
    as Python literals (``'…'`` or ``"…"``); each becomes ``…``."""
    reason, quoted = _QUOTED.subn("…", exc.message)
    if not quoted:
        return exc
    return RemoteProtocolError(
        f"{reason} (decrypted content not logged: `alarmrelay frame decode` with the key shows it)",
        reply=exc.reply,
        reply_bytes=exc.reply_bytes,
    )


def _rejected_none(message: str) -> FrameRejected:
    return FrameRejected(error=RemoteProtocolError(message, reply=Reply.NONE))
