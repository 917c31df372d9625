"""``alarmrelay frame decode`` / ``frame encode``: the field-support view of one DC-09 frame."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from engine.errors import UserFacingError
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import FrameInspection, encode_frame, inspect_frame
from protocols.dc09_payload import parse_payload
from protocols.dc09_timestamp import TimestampWindow, as_local_time
from protocols.errors import RemoteProtocolError
from protocols.signal import XData

_REPLY_TOKENS = frozenset({"ACK", "NAK", "DUH", "RSP"})


class EventOut(msgspec.Struct, kw_only=True):
    family: str
    code: str
    qualifier: str | None
    zone: int | None
    partition: int | None
    user: int | None
    text: str | None
    category: str
    fire: bool
    co: bool
    restore: bool
    status: bool


class DecodeOut(msgspec.Struct, kw_only=True):
    crc_ok: bool
    length_ok: bool
    id: str | None
    encrypted: bool | None
    seq: str | None
    receiver: str | None
    line: str | None
    account: str | None
    timestamp: str | None
    timestamp_ok: bool | None
    xdata: list[XData]
    events: list[EventOut]
    error: str | None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("frame", help="decode or build one DC-09 frame")
    sub = parser.add_subparsers(dest="frame_command", metavar="ACTION", required=True)

    dec = sub.add_parser(
        "decode",
        help="decode a captured frame and print one JSON object",
        description="FRAME is the text between LF and CR; \\r, \\n and \\xNN escapes are accepted. Exit 0 if valid, 1 if not.",
    )
    dec.add_argument("frame", help="the frame text (escapes allowed)")
    # Not an argparse mutually exclusive group: its error is a usage block, ours is one line.
    dec.add_argument("--key-hex", help="AES key as 32/48/64 hex characters")
    dec.add_argument("--key-ascii", help="AES key as a 16/24/32-character string")
    dec.add_argument("--now", help="check the timestamp window against this time (ISO 8601)")
    dec.add_argument(
        "--past", type=_seconds, default=40, help="window seconds before now (default 40)"
    )
    dec.add_argument(
        "--future", type=_seconds, default=20, help="window seconds after now (default 20)"
    )
    dec.add_argument("--local-time-zone", help="the panel writes local time in this IANA zone")
    dec.set_defaults(func=run_decode)

    enc = sub.add_parser("encode", help="build a frame and print it (escaped) or write it raw")
    enc.add_argument(
        "--token", default="SIA-DCS", help="ID token: SIA-DCS, ADM-CID, NULL, ACK, DUH, …"
    )
    enc.add_argument("--account", required=True, help="the #account (1-16 characters 0-9 A-Z)")
    enc.add_argument("--data", default="", help="the data block content, e.g. '#1234|Nri1/BA01'")
    enc.add_argument("--seq", default="0001")
    enc.add_argument("--receiver", default=None, help="R field (hex); omitted when not given")
    enc.add_argument("--line", default="0", help="L field (hex; default 0)")
    enc.add_argument(
        "--xdata",
        action="append",
        default=[],
        metavar="IDVALUE",
        help="x-data block, e.g. M0026B9E4268B",
    )
    enc.add_argument("--timestamp", help="timestamp to write (ISO 8601); required with a key")
    enc.add_argument(
        "--now",
        nargs="?",
        const="",
        metavar="ISO8601",
        help="write this time (ISO 8601), or the current UTC time when no value is given",
    )
    enc.add_argument("--key-hex", help="AES key as 32/48/64 hex characters")
    enc.add_argument("--key-ascii", help="AES key as a 16/24/32-character string")
    enc.add_argument(
        "--raw", action="store_true", help="write the bytes with LF and CR instead of escaped text"
    )
    enc.set_defaults(func=run_encode)


_MAX_WINDOW_S = 10 * 366 * 86400  # ten years: beyond any clock drift, and within datetime


def _seconds(text: str) -> int:
    """A window width for argparse: 0 up to ten years of seconds."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= value <= _MAX_WINDOW_S:
        raise argparse.ArgumentTypeError(f"{value} is not in 0-{_MAX_WINDOW_S} seconds")
    return value


_SIMPLE_ESCAPES = {"r": 0x0D, "n": 0x0A, "t": 0x09, "0": 0x00, "\\": 0x5C}


def unescape(text: str) -> bytes:
    """The bytes of a frame typed on a command line: \\r, \\n, \\t, \\0, \\\\ and \\xNN escapes.

    Other characters are encoded as Windows-1252, the charset of DC-09 text fields (§1.8);
    raises UnicodeEncodeError for a character outside it.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "x" and _is_hex(text[i + 2 : i + 4]):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            if nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                i += 2
                continue
        out += ch.encode("cp1252")
        i += 1
    return bytes(out)


def escape(raw: bytes) -> str:
    """Printable form of a frame: the text between LF and CR, other bytes as \\xNN."""
    body = raw[1:-1] if raw.startswith(b"\n") and raw.endswith(b"\r") else raw
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b != 0x5C else ("\\\\" if b == 0x5C else f"\\x{b:02X}")
        for b in body
    )


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdefABCDEF" for c in text)


def _key(key_hex: str | None, key_ascii: str | None) -> AesKey | None:
    if key_hex is not None and key_ascii is not None:
        raise UserFacingError("give one key: --key-hex or --key-ascii, not both")
    try:
        if key_hex is not None:
            return AesKey.from_hex(key_hex)
        if key_ascii is not None:
            return AesKey.from_ascii(key_ascii)
    except ValueError as exc:
        raise UserFacingError(f"bad key: {exc}") from None
    return None


def _time(text: str, option: str) -> datetime:
    """The time as UTC (naive: UTC already); frames carry UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserFacingError(f"{option}: not an ISO 8601 time: {text!r}") from None
    try:
        return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except OverflowError:  # 0001-01-01T00:00+05:00 is in year 0 in UTC
        raise UserFacingError(f"{option}: {text!r} is out of range in UTC (years 1-9999)") from None


def _event_out(inspection: FrameInspection) -> tuple[list[EventOut], str | None]:
    frame = inspection.frame
    if frame is None or frame.token.upper() in _REPLY_TOKENS:
        return [], None  # replies (ACK/NAK/DUH/RSP) carry no events
    try:
        events = parse_payload(frame.token.upper(), frame.data)
    except RemoteProtocolError as exc:
        return [], exc.message
    return [
        EventOut(
            family=e.family.value,
            code=e.code,
            qualifier=e.qualifier,
            zone=e.zone,
            partition=e.partition,
            user=e.user,
            text=e.text,
            category=e.classification.category.value,
            fire=e.classification.fire,
            co=e.classification.co,
            restore=e.classification.restore,
            status=e.classification.status,
        )
        for e in events
    ], None


def decode(
    raw: bytes, *, key: AesKey | None, now: datetime | None, window: TimestampWindow, zone: Any
) -> DecodeOut:
    """The JSON view of one frame."""
    inspection = inspect_frame(raw, key=key)
    events, payload_error = _event_out(inspection)
    error = inspection.error or payload_error
    if inspection.encrypted and key is None and inspection.crc_ok and inspection.length_ok:
        error = "encrypted frame: give its key with --key-hex or --key-ascii to decrypt it"
    timestamp_ok: bool | None = None
    stamp = inspection.timestamp
    if stamp is not None and zone is not None:
        try:
            stamp = as_local_time(stamp, zone, now)
        except ValueError as exc:
            error = error or f"timestamp: {exc} (NAK)"
            stamp = None
    if now is not None and inspection.frame is not None:
        timestamp_ok = None if stamp is None else window.check(stamp, now)
        if timestamp_ok is False and error is None:
            error = f"timestamp {stamp.isoformat() if stamp else ''} outside the window -{window.past_s}/+{window.future_s} s (NAK)"
    if error is None and not inspection.crc_ok:
        error = "CRC mismatch (no reply)"
    return DecodeOut(
        crc_ok=inspection.crc_ok,
        length_ok=inspection.length_ok,
        id=inspection.id,
        encrypted=inspection.encrypted,
        seq=inspection.seq,
        receiver=inspection.receiver,
        line=inspection.line,
        account=inspection.account,
        timestamp=inspection.timestamp.isoformat() if inspection.timestamp else None,
        timestamp_ok=timestamp_ok,
        xdata=list(inspection.xdata),
        events=events,
        error=error,
    )


def run_decode(args: argparse.Namespace) -> int:
    key = _key(args.key_hex, args.key_ascii)
    now = _time(args.now, "--now") if args.now else None
    if now is not None:
        try:
            _ = (now - timedelta(seconds=args.past), now + timedelta(seconds=args.future))
        except OverflowError:
            raise UserFacingError(
                f"--now: the window -{args.past}/+{args.future} s around {args.now!r} "
                "goes beyond the years 1-9999"
            ) from None
    zone = None
    if args.local_time_zone:
        try:
            zone = ZoneInfo(args.local_time_zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
            raise UserFacingError(
                f"--local-time-zone: unknown time zone {args.local_time_zone!r}"
            ) from None
    try:
        raw = unescape(args.frame)
    except UnicodeEncodeError:
        raise UserFacingError("FRAME: characters outside Windows-1252; use \\xNN escapes") from None
    if raw[:1] == b"\n" and raw[-2:] == b"\r\n":
        raw = raw[:-1]  # a capture pasted with its LF/CR and a line end after it
    out = decode(
        raw,
        key=key,
        now=now,
        window=TimestampWindow(past_s=args.past, future_s=args.future),
        zone=zone,
    )
    sys.stdout.buffer.write(msgspec.json.encode(out) + b"\n")
    return 0 if out.error is None else 1


def _encode_timestamp(args: argparse.Namespace) -> datetime | None:
    if args.timestamp is not None and args.now is not None:
        raise UserFacingError("give one time: --timestamp or --now, not both")
    if args.timestamp is not None:
        return _time(args.timestamp, "--timestamp")
    if args.now is None:
        return None
    if args.now == "":
        return datetime.now(UTC).replace(microsecond=0)  # the CLI is the edge that owns the clock
    return _time(args.now, "--now")


def run_encode(args: argparse.Namespace) -> int:
    key = _key(args.key_hex, args.key_ascii)
    timestamp = _encode_timestamp(args)
    xdata = []
    for item in args.xdata:
        if len(item) < 1:
            raise UserFacingError(
                "--xdata needs an identifier letter and a value, e.g. M0026B9E4268B"
            )
        xdata.append(XData(id=item[0].upper(), value=item[1:]))
    try:
        raw = encode_frame(
            token=args.token,
            seq=args.seq,
            account=args.account.upper(),
            data=args.data,
            receiver=args.receiver,
            line=args.line,
            xdata=xdata,
            timestamp=timestamp,
            key=key,
        )
    except UnicodeEncodeError as exc:  # a ValueError whose codec wording tells a user nothing
        raise UserFacingError(
            f"--data/--xdata: characters outside Windows-1252, the charset of DC-09 text "
            f"(§1.8): {exc.object[exc.start : exc.end]!r}"
        ) from None
    except ValueError as exc:
        raise UserFacingError(str(exc)) from None
    if args.raw:
        sys.stdout.buffer.write(raw)
    else:
        print(escape(raw))
    return 0
