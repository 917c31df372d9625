"""SIA DC-09 frames: decode (tolerant of the vendor deviations of PROTOCOLS.md §1.15) and encode (strict).

Layout (§1.1): ``<LF> CCCC 0LLL "<id>" <seq> [R<rcvr>] L<pref> #<acct> [<data>] [<x>]… [_<ts>] <CR>``.
CRC and length cover the opening quote of the ID token through the last timestamp character.

Decoding happens in two steps so a receiver can look up the account's key in between:
:func:`decode_header` (framing, CRC, length, ID token, seq, R, L, account) and :func:`decode_body`
(decrypt, data block, x-data, timestamp). Both raise only :class:`RemoteProtocolError`.

Each step first tries one compiled regex for the standard form nearly every panel sends
(:func:`decode_standard_header`, :func:`parse_standard_tail`); anything else, including every
error, goes to the tolerant parser, which decides. The fast forms return exactly what the
tolerant parser returns for the frames they accept (a property test holds them to it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

import msgspec

from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_timestamp import TIMESTAMP_LENGTH, format_timestamp, parse_timestamp_bytes
from protocols.errors import RemoteProtocolError, Reply
from protocols.signal import XData

# The largest legal frame: LF, 4 CRC characters, 4 length characters ("0LLL"), 0xFFF bytes the
# length counts, CR.
MAX_FRAME_BYTES = 1 + 4 + 4 + 0xFFF + 1
LF, CR = 0x0A, 0x0D

# Header after the CRC and length: "id" seq [R..] [L..] [#acct] [A..] then '['.
# R and L take 0-6 hex digits (bare letters are a vendor quirk, ioBroker.sia#11/#19); the account
# is 1-16 alphanumerics (test plans use "0", Dahua sends "B12345"). A is the NAK's "A0" field.
_HEADER = re.compile(
    rb'"(\*?)([A-Za-z0-9\-]{1,16})"(\d{4})'
    rb"(?:R([0-9A-Fa-f]{0,6}?))?"
    rb"(?:L([0-9A-Fa-f]{0,6}?))?"
    # R after L: pysiaalarm's NAK ("NAK"0000L0R0A0[]ts, PROTOCOLS.md §1.10); taken only when
    # no R came first
    rb"(?:R([0-9A-Fa-f]{0,6}?))?"
    rb"(?:#([0-9A-Za-z]{1,16}))?"
    rb"(?:A([0-9A-Fa-f]{0,6}))?"
    rb"\["
)
# The standard form of a whole frame (LF and CR optional, as in a datagram): hex CRC, 0LLL, then
# the region: "[*]id"seq [R<hex>] [L<hex>] #acct [ body. R, L and the account upper case, no A
# field, no NUL or CR in the body. The groups the tolerant _HEADER finds are the same: R and L
# end where L or '#' begins, neither a hex digit, so its lazy {0,6}? finds the same digits.
_STANDARD_FRAME = re.compile(
    rb"\n?([0-9A-Fa-f]{4})0([0-9A-Fa-f]{3})"
    rb'("(\*?)([A-Za-z0-9\-]{1,16})"(\d{4})'
    rb"(?:R([0-9A-F]{0,6}))?(?:L([0-9A-F]{0,6}))?#([0-9A-Z]{1,16})\[([^\r\x00]*))\r?"
)
# The standard tail after the data block's '[': data ']' then x-data blocks each starting with a
# letter, then an optional timestamp. Exactly what _parse_tail_tolerant accepts, minus its limits.
_STANDARD_TAIL = re.compile(
    rb"([^\]]*)\]((?:\[[A-Za-z][^\]]*\])*)(_\d\d:\d\d:\d\d,\d\d-\d\d-\d\d\d\d)?"
)
# The end of a decrypted region when the key was right (every encrypted frame has a timestamp).
_ENDS_WITH_TIMESTAMP = re.compile(rb"_\d\d:\d\d:\d\d,\d\d-\d\d-\d\d\d\d\Z")
MAX_XDATA_BLOCKS = 32
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
_BLANK = b"\x00\r\n "  # bytes between frames that are noise, not garbage


class CrcStyle(StrEnum):
    """How the CRC was written."""

    HEX = "hex"  # 4 ASCII hex characters (the standard)
    BINARY = "binary"  # 2 raw bytes, big-endian (Lupusec, Jablotron, Trikdis "DC-09_2012")


class FrameHeader(msgspec.Struct, frozen=True, kw_only=True):
    """A frame whose framing, CRC, length and header fields are valid; the body is not yet read."""

    token: str
    encrypted: bool
    seq: str
    receiver: str | None
    line: str | None
    account: str | None
    crc_style: CrcStyle
    crc_includes_cr: bool
    body: bytes  # from '[' (exclusive) to the end of the CRC region
    raw: bytes


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """A fully decoded DC-09 frame."""

    token: str  # ID without quotes and '*', as sent ("SIA-DCS", "NULL", "ACK", …)
    encrypted: bool
    seq: str  # 4 digits as sent
    receiver: str | None  # None: no R field; "": a bare R
    line: str | None  # None: no L field; "": a bare L (§1.15)
    account: str | None  # None: no #acct (NAK)
    data: str  # inside the data brackets, pad and '|' removed; "" for []
    xdata: tuple[XData, ...]
    timestamp: datetime | None  # aware UTC, exactly as written (local-time panels: see receiver)
    crc_style: CrcStyle
    crc_includes_cr: bool  # Eldes: CRC and length count the trailing CR
    raw: bytes  # LF … CR as received, trailing NULs removed


class FrameInspection(msgspec.Struct, kw_only=True):
    """Everything that could be read from a frame, valid or not (for ``alarmrelay frame decode``)."""

    crc_ok: bool = False
    length_ok: bool = False
    id: str | None = None
    encrypted: bool | None = None
    seq: str | None = None
    receiver: str | None = None
    line: str | None = None
    account: str | None = None
    timestamp: datetime | None = None
    xdata: tuple[XData, ...] = ()
    error: str | None = None
    frame: Frame | None = None


def _none(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reply=Reply.NONE)


def _duh(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reply=Reply.DUH)


def _split_envelope(raw: bytes) -> tuple[bytes, bytes, CrcStyle, int]:
    """Return (crc_field, region, style, declared_length) from one frame's bytes."""
    if len(raw) > MAX_FRAME_BYTES:
        raise _none(f"frame of {len(raw)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    text = raw.rstrip(b"\x00")  # trailing NULs (ioBroker.sia#11)
    if text[:1] == b"\n":
        text = text[1:]
    if text[-1:] == b"\r":
        text = text[:-1]
    if (
        len(text) >= 9
        and text[8:9] == b'"'
        and text[4:5] == b"0"
        and all(b in _HEX_DIGITS for b in text[:4])
    ):
        crc_field, length_field, region, style = text[:4], text[4:8], text[8:], CrcStyle.HEX
    elif len(text) >= 7 and text[6:7] == b'"' and text[2:3] == b"0":
        # Binary CRC: detected the ioBroker.sia way, '0' of the length at [2] and '"' at [6].
        crc_field, length_field, region, style = text[:2], text[2:6], text[6:], CrcStyle.BINARY
    else:
        raise _none("not a DC-09 frame: expected CRC, 0LLL length and a quoted ID token")
    if not all(b in _HEX_DIGITS for b in length_field[1:]):
        raise _none(f"bad length field {length_field!r}")
    return crc_field, region, style, int(length_field[1:], 16)


def _crc_value(crc_field: bytes, style: CrcStyle) -> int:
    return int(crc_field, 16) if style is CrcStyle.HEX else int.from_bytes(crc_field, "big")


def _verify(raw: bytes) -> tuple[bytes, CrcStyle, bool]:
    """Check CRC and length; return (region, style, crc_includes_cr)."""
    crc_field, region, style, declared = _split_envelope(raw)
    expected = _crc_value(crc_field, style)
    computed = crc16_arc(region)
    if computed == expected and declared == len(region):
        return region, style, False
    # Eldes counts the trailing CR in both CRC and length (pysiaalarm#17, sia-ha#3).
    if crc16_arc(region + b"\r") == expected and declared == len(region) + 1:
        return region, style, True
    if computed != expected:
        raise _none(f"CRC mismatch: frame says {expected:04X}, computed {computed:04X} (no reply)")
    raise _none(f"length mismatch: frame says {declared:03X}, counted {len(region):03X} (no reply)")


def _ascii(value: bytes | None) -> str | None:
    # R, L and the account are hex: upper-cased so lookups and echoes use one spelling.
    return None if value is None else value.decode("ascii").upper()


def decode_header(raw: bytes) -> FrameHeader:
    """Framing, CRC, length and header fields of one frame (LF/CR optional).

    Blank bytes (CR, LF, NUL, space) right after the LF are dropped when the frame fails as it
    stands ("\\n\\r\\n…" from chatty senders); not before, because a binary CRC may start with
    any of them (§1.15).
    """
    return decode_standard_header(raw) or decode_header_tolerant(raw)


def decode_standard_header(raw: bytes) -> FrameHeader | None:
    """:func:`decode_header` of a frame in the standard form with a good CRC and length, else None.

    None means "not decided here": the tolerant parser handles the frame (and every error).
    """
    if len(raw) > MAX_FRAME_BYTES:
        return None
    match = _STANDARD_FRAME.fullmatch(raw)
    if match is None:
        return None
    crc, length, region, star, token, seq, receiver, line, account, body = match.groups()
    if len(region) != int(length, 16) or crc16_arc(region) != int(crc, 16):
        return None  # the Eldes CRC, or an error: the tolerant parser says which
    return FrameHeader(
        token=token.decode("ascii"),
        encrypted=bool(star),
        seq=seq.decode("ascii"),
        receiver=None if receiver is None else receiver.decode("ascii"),
        line=None if line is None else line.decode("ascii"),
        account=account.decode("ascii"),
        crc_style=CrcStyle.HEX,
        crc_includes_cr=False,
        body=body,
        raw=raw,
    )


def decode_header_tolerant(raw: bytes) -> FrameHeader:
    """:func:`decode_header` by the tolerant parser alone (every accepted form and every error)."""
    try:
        return _decode_header_strict(raw)
    except RemoteProtocolError as exc:
        body = raw[1:] if raw[:1] == b"\n" else raw
        stripped = body.lstrip(_BLANK)
        if exc.reply is not Reply.NONE or stripped == body or not stripped:
            raise
        try:
            return _decode_header_strict(b"\n" + stripped)
        except RemoteProtocolError:
            raise exc from None


def _decode_header_strict(raw: bytes) -> FrameHeader:
    region, style, includes_cr = _verify(raw)
    match = _HEADER.match(region)
    if match is None:
        raise _duh('unparsable header: expected "id"seq[R..][L..]#acct[')
    star, token, seq, receiver, line, late_receiver, account, _a = match.groups()
    if receiver is None:
        receiver = late_receiver
    elif late_receiver is not None:
        raise _duh("unparsable header: R given twice")
    return FrameHeader(
        token=token.decode("ascii"),
        encrypted=bool(star),
        seq=seq.decode("ascii"),
        receiver=_ascii(receiver),
        line=_ascii(line),
        account=_ascii(account),
        crc_style=style,
        crc_includes_cr=includes_cr,
        body=region[match.end() :],
        raw=raw.rstrip(b"\x00"),
    )


def _text(data: bytes) -> str:
    # DC-09 2017+ text fields may be Windows-1252 (ioBroker.sia#63); undefined bytes map 1:1.
    # ASCII first: 6x faster, and cp1252 decodes bytes 0-127 as ASCII does.
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_Tail = tuple[str, tuple[XData, ...], datetime | None]


def _parse_tail(tail: bytes) -> _Tail:
    """Parse ``data]`` + ``[x…]``* + optional ``_timestamp`` (the part after the opening '[')."""
    return parse_standard_tail(tail) or parse_tail_tolerant(tail)


def parse_standard_tail(tail: bytes) -> _Tail | None:
    """:func:`parse_tail_tolerant` of a tail in the standard form, else None (not decided here)."""
    match = _STANDARD_TAIL.fullmatch(tail)
    if match is None:
        return None
    data, blocks, stamp = match.groups()
    xdata: tuple[XData, ...] = ()
    if blocks:
        parts = blocks[1:-1].split(b"][")  # values hold no ']', so "][" only joins two blocks
        if len(parts) > MAX_XDATA_BLOCKS:
            return None
        xdata = tuple(XData(id=chr(part[0]).upper(), value=_text(part[1:])) for part in parts)
    timestamp = None
    if stamp is not None:
        try:
            timestamp = parse_timestamp_bytes(stamp)
        except ValueError:  # a date that does not exist (month 13): the tolerant parser says so
            return None
    return _text(data), xdata, timestamp


def parse_tail_tolerant(tail: bytes) -> _Tail:
    """The tail parser that decides every form and every error (DUH)."""
    close = tail.find(b"]")
    if close == -1:
        raise _duh("data block is not closed with ']'")
    data = _text(tail[:close])
    rest = tail[close + 1 :]
    xdata: list[XData] = []
    while rest[:1] == b"[":
        end = rest.find(b"]")
        if end == -1:
            raise _duh("x-data block is not closed with ']'")
        block = rest[1:end]
        if not block or not (0x41 <= block[0] <= 0x5A or 0x61 <= block[0] <= 0x7A):
            # its beginning only: the reason is logged, and an encrypted frame's content is not
            raise _duh(
                f"x-data block {_text(block[:16])!r} does not start with an identifier letter"
            )
        xdata.append(XData(id=chr(block[0]).upper(), value=_text(block[1:])))
        rest = rest[end + 1 :]
        if len(xdata) > MAX_XDATA_BLOCKS:
            raise _duh("too many x-data blocks")
    timestamp: datetime | None = None
    if rest:
        if rest[:1] != b"_" or len(rest) != TIMESTAMP_LENGTH:
            raise _duh(f"unexpected bytes after the data: {_text(rest[:40])!r}")
        try:
            timestamp = parse_timestamp_bytes(rest)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise _duh(str(exc)) from None
    return data, tuple(xdata), timestamp


def decode_body(header: FrameHeader, key: AesKey | None) -> Frame:
    """Decrypt (when ``*``) and parse the data block, x-data and timestamp."""
    if header.encrypted:
        if key is None:
            raise _duh("encrypted frame but no key is configured for this account")
        try:
            tail = key.decrypt_region(header.body.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _duh(f"decrypt failed: {exc}") from None
        try:
            data, xdata, timestamp = _parse_tail(tail)
        except RemoteProtocolError as exc:
            # The right key gives the timestamp every encrypted frame ends with (§1.9); a wrong
            # one gives random bytes, which end so by no chance worth counting. Saying "wrong
            # key" for a frame the key did decrypt sends field support after the wrong fault.
            if _ENDS_WITH_TIMESTAMP.search(tail) is None:
                raise _duh("decrypt failed: wrong key or key format (hex vs ascii)?") from None
            raise _duh(f"decrypted with the account key, but {exc.message}") from None
    else:
        data, xdata, timestamp = _parse_tail(header.body)
    return Frame(
        token=header.token,
        encrypted=header.encrypted,
        seq=header.seq,
        receiver=header.receiver,
        line=header.line,
        account=header.account,
        data=data,
        xdata=xdata,
        timestamp=timestamp,
        crc_style=header.crc_style,
        crc_includes_cr=header.crc_includes_cr,
        raw=header.raw,
    )


def decode_frame(raw: bytes, *, key: AesKey | None = None) -> Frame:
    """Decode one frame completely. Raises only RemoteProtocolError."""
    return decode_body(decode_header(raw), key)


def inspect_frame(raw: bytes, key: AesKey | None = None) -> FrameInspection:
    """Report what can be read from ``raw`` without raising (the field-support view)."""
    out = FrameInspection()
    try:
        crc_field, region, style, declared = _split_envelope(raw)
    except RemoteProtocolError as exc:
        out.error = exc.message
        return out
    expected = _crc_value(crc_field, style)
    standard = crc16_arc(region) == expected
    eldes = not standard and crc16_arc(region + b"\r") == expected
    out.crc_ok = standard or eldes
    # With the Eldes CRC the length counts the CR too; otherwise it must be exact.
    out.length_ok = declared == len(region) + (1 if eldes else 0)
    match = _HEADER.match(region)
    if match is not None:
        star, token, seq, receiver, line, late_receiver, account, _a = match.groups()
        receiver = receiver if receiver is not None else late_receiver
        out.id = token.decode("ascii")
        out.encrypted = bool(star)
        out.seq = seq.decode("ascii")
        out.receiver = _ascii(receiver)
        out.line = _ascii(line)
        out.account = _ascii(account)
    try:
        frame = decode_frame(raw, key=key)
    except RemoteProtocolError as exc:
        out.error = exc.message
        return out
    out.timestamp = frame.timestamp
    out.xdata = frame.xdata
    out.frame = frame
    return out


class FrameSplitter:
    """Cut a TCP byte stream into frames (LF … CR), independent of how the stream was split.

    :meth:`feed` returns, in order, each complete frame's bytes and a
    :class:`RemoteProtocolError` (reply NONE) for each run of garbage between frames, each frame
    cut short by a new LF and each frame over ``max_frame_bytes``; an oversized frame is skipped
    up to the next LF. Blank bytes between frames (CR, LF, NUL, space) are ignored. The buffer
    never holds more than ``max_frame_bytes`` between calls (one recv() is not one frame: Dahua
    sends several per segment, pysiaalarm#54).
    """

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES, max_buffer_bytes: int = 65_536):
        """Limits: the largest frame accepted and the most bytes appended before parsing."""
        self.max_frame_bytes = max_frame_bytes
        self.max_buffer_bytes = max(1, max_buffer_bytes)
        self._buffer = bytearray()  # starts with LF while inside a frame, else empty
        self._in_frame = False
        self._skip_reported = False  # the current run of bytes outside a frame was reported

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | RemoteProtocolError]:
        """Add stream bytes; return complete frames and framing errors in stream order."""
        if (
            not self._buffer
            and data[:1] == b"\n"
            and len(data) <= self.max_frame_bytes
            and len(data) <= self.max_buffer_bytes
            and data.find(b"\r", 3) == len(data) - 1
            and data.find(b"\n", 3) == -1
        ):
            # One whole frame in one read, the usual case: what _drain returns for it.
            self._skip_reported = False
            return [bytes(data)]
        out: list[bytes | RemoteProtocolError] = []
        step = self.max_buffer_bytes
        for offset in range(0, len(data), step):
            self._buffer += data[offset : offset + step]
            self._drain(out)
        return out

    def _drain(self, out: list[bytes | RemoteProtocolError]) -> None:
        buffer = self._buffer
        limit = self.max_frame_bytes
        pos = 0  # consumed prefix; deleted once at the end (no quadratic front deletes)
        while pos < len(buffer):
            if not self._in_frame:
                start = buffer.find(b"\n", pos)
                stop = len(buffer) if start == -1 else start
                if not self._skip_reported and buffer[pos:stop].strip(_BLANK):
                    out.append(_none("bytes outside a frame (expected LF)"))
                    self._skip_reported = True
                if start == -1:
                    pos = len(buffer)
                    break
                pos = start
                self._in_frame = True
                self._skip_reported = False
            # Inside a frame: buffer[pos] is its LF. Bytes 1-2 may be a binary CRC holding CR or
            # LF, so the search for the end starts at 3 (§1.15).
            cr = buffer.find(b"\r", pos + 3)
            lf = buffer.find(b"\n", pos + 3)
            if lf != -1 and (cr == -1 or lf < cr):
                if lf - pos > limit:
                    pos = self._oversized(out, pos)
                    continue
                # A new LF before this frame's CR: the frame was cut short; resync there. Stray
                # line ends or NULs between frames ("\r\n" keep-alives) are not worth a report.
                if buffer[pos + 1 : lf].strip(_BLANK):
                    out.append(_none("truncated frame: a new LF came before its CR"))
                pos = lf
                continue
            if cr == -1:
                if len(buffer) - pos > limit:
                    pos = self._oversized(out, pos)
                    continue
                break  # wait for more bytes
            if cr + 1 - pos > limit:
                pos = self._oversized(out, pos)
                continue
            out.append(bytes(buffer[pos : cr + 1]))
            pos = cr + 1
            self._in_frame = False
        del buffer[:pos]

    def take_rest(self) -> bytes:
        """The bytes of a frame begun but not ended (no CR yet), handed over and forgotten: a
        UDP datagram's last frame, whose CR is optional."""
        rest = bytes(self._buffer) if self._in_frame else b""
        self._buffer.clear()
        self._in_frame = False
        return rest

    def _oversized(self, out: list[bytes | RemoteProtocolError], pos: int) -> int:
        """Report a frame over the size limit; the rest of it is skipped up to the next LF."""
        out.append(_none(f"frame exceeds {self.max_frame_bytes} bytes"))
        self._in_frame = False
        self._skip_reported = True
        return pos + 1


def _check_field(name: str, value: str | None, *, max_len: int, allowed: frozenset[str]) -> None:
    if value is None:
        return
    if len(value) > max_len or not set(value) <= allowed:
        raise ValueError(
            f"{name} {value!r} must be up to {max_len} characters from {''.join(sorted(allowed))}"
        )


_HEX_CHARS = frozenset("0123456789ABCDEF")
_ACCOUNT_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def encode_frame(
    *,
    token: str,
    seq: str,
    account: str | None,
    data: str,
    receiver: str | None = None,
    line: str | None = "0",
    xdata: Sequence[XData] = (),
    timestamp: datetime | None = None,
    key: AesKey | None = None,
    pad: bytes | None = None,
    extra_fields: str = "",
    crc_style: CrcStyle = CrcStyle.HEX,
) -> bytes:
    """Build one frame (LF … CR) in the standard form. Raises ValueError on bad arguments.

    With ``key`` the frame is encrypted (``*`` token) and must carry a timestamp (§1.9).
    ``crc_style`` BINARY exists only to answer a binary-CRC sender in its own style.
    """
    if len(seq) != 4 or not seq.isdigit():
        raise ValueError(f"seq must be 4 digits, got {seq!r}")
    if not 1 <= len(token) <= 16 or not set(token) <= _TOKEN_CHARS:
        raise ValueError(f"bad ID token {token!r}")
    if "[" in data or "]" in data:
        raise ValueError("data must not contain '[' or ']'")
    for block in xdata:
        if len(block.id) != 1 or not block.id.isascii() or not block.id.isalpha():
            raise ValueError(f"x-data id {block.id!r} must be one letter")
        if "[" in block.value or "]" in block.value:
            raise ValueError(f"x-data {block.id} value must not contain '[' or ']'")
    _check_field("receiver", receiver, max_len=6, allowed=_HEX_CHARS)
    _check_field("line", line, max_len=6, allowed=_HEX_CHARS)
    if account is not None and not (1 <= len(account) <= 16 and set(account) <= _ACCOUNT_CHARS):
        raise ValueError(f"account {account!r} must be 1-16 characters 0-9, A-Z")
    header = f'"{"*" if key is not None else ""}{token}"{seq}'
    if receiver is not None:
        header += f"R{receiver}"
    if line is not None:
        header += f"L{line}"
    if account is not None:
        header += f"#{account}"
    header += extra_fields
    tail = "".join(f"[{x.id}{x.value}]" for x in xdata)
    stamp = format_timestamp(timestamp) if timestamp is not None else ""
    if key is not None:
        if timestamp is None:
            raise ValueError("an encrypted frame needs a timestamp")
        content = f"{data}]{tail}{stamp}".encode("cp1252")
        region = (header + "[").encode("ascii") + key.encrypt_region(content, pad=pad).encode(
            "ascii"
        )
    else:
        region = f"{header}[{data}]{tail}{stamp}".encode("cp1252")
    if len(region) > 0xFFF:
        raise ValueError(f"frame content of {len(region)} bytes exceeds the 0xFFF length limit")
    crc = crc16_arc(region)
    if crc_style is CrcStyle.BINARY:
        crc_field = crc.to_bytes(2, "big")
    else:
        crc_field = f"{crc:04X}".encode("ascii")
    return b"\n" + crc_field + f"0{len(region):03X}".encode("ascii") + region + b"\r"


# R/L/account combinations encode_frame has accepted, as they are written into a reply's header.
_REPLY_FIELDS: dict[tuple[str | None, str | None, str | None], str] = {}
_REPLY_FIELDS_MAX = 4096
_REPLY_TOKENS = frozenset({"ACK", "NAK", "DUH"})


def encode_reply(
    *,
    token: str,
    seq: str,
    account: str | None,
    receiver: str | None = None,
    line: str | None = "0",
    extra_fields: str = "",
    timestamp: datetime | None = None,
    key: AesKey | None = None,
    crc_style: CrcStyle = CrcStyle.HEX,
) -> bytes:
    """``encode_frame(..., data="")`` for an ACK, NAK or DUH: the same bytes, built faster.

    The receiver sends one per signal; the R/L/account of a connection's frames are validated
    by :func:`encode_frame` once and memoised. Anything unusual is left to :func:`encode_frame`.
    """
    fields = _REPLY_FIELDS.get((receiver, line, account))
    if (
        fields is None
        or token not in _REPLY_TOKENS
        or len(seq) != 4
        or not (seq.isascii() and seq.isdigit())
        or not extra_fields.isascii()
        or (key is not None and timestamp is None)
    ):
        return _encode_reply_general(
            token=token,
            seq=seq,
            account=account,
            receiver=receiver,
            line=line,
            extra_fields=extra_fields,
            timestamp=timestamp,
            key=key,
            crc_style=crc_style,
        )
    stamp = "" if timestamp is None else format_timestamp(timestamp)
    if key is None:
        region = f'"{token}"{seq}{fields}{extra_fields}[]{stamp}'.encode("ascii")
    else:
        cipher_hex = key.encrypt_region(f"]{stamp}".encode("ascii"))
        region = f'"*{token}"{seq}{fields}{extra_fields}[{cipher_hex}'.encode("ascii")
    if len(region) > 0xFFF:
        raise ValueError(f"frame content of {len(region)} bytes exceeds the 0xFFF length limit")
    crc = crc16_arc(region)
    if crc_style is CrcStyle.BINARY:
        return b"\n" + crc.to_bytes(2, "big") + b"0%03X" % len(region) + region + b"\r"
    return b"\n%04X0%03X" % (crc, len(region)) + region + b"\r"


def _encode_reply_general(
    *,
    token: str,
    seq: str,
    account: str | None,
    receiver: str | None,
    line: str | None,
    extra_fields: str,
    timestamp: datetime | None,
    key: AesKey | None,
    crc_style: CrcStyle,
) -> bytes:
    raw = encode_frame(
        token=token,
        seq=seq,
        account=account,
        data="",
        receiver=receiver,
        line=line,
        extra_fields=extra_fields,
        timestamp=timestamp,
        key=key,
        crc_style=crc_style,
    )
    # encode_frame validated R, L and the account: remember how they are written.
    if len(_REPLY_FIELDS) >= _REPLY_FIELDS_MAX:
        _REPLY_FIELDS.clear()
    _REPLY_FIELDS[(receiver, line, account)] = (
        ("" if receiver is None else f"R{receiver}")
        + ("" if line is None else f"L{line}")
        + ("" if account is None else f"#{account}")
    )
    return raw
