"""Protocol micro-benchmark: parse + CRC + validate + classify per frame, plain and AES-128, vs pysiaalarm.

Run: ``python -m bench.micro_protocols`` (prints Markdown tables; ``--stages`` adds where the time
of one plain and one AES-128 frame goes). Targets on this machine: ≤ 15 µs per plain frame and
≤ 30 µs per AES-128 frame (parse + validate + classify). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import timeit
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import (
    FrameSplitter,
    decode_body,
    decode_frame,
    decode_header,
    decode_header_tolerant,
    encode_frame,
    encode_reply,
)
from protocols.dc09_payload import parse_payload
from protocols.dc09_receiver import AccountCrypto, Dc09ReceiverConnection, ReceiverConfig
from protocols.dc09_timestamp import (
    TimestampWindow,
    format_timestamp,
    parse_timestamp,
    parse_timestamp_bytes,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY_ASCII = (
    "BenchKey16chars!"  # ASCII key: the form pysiaalarm uses, so both sides read the same frame
)
KEY = AesKey.from_ascii(KEY_ASCII)

SIA = encode_frame(
    token="SIA-DCS", seq="0042", account="1234", data="#1234|Nri1/BA017", timestamp=NOW
)
CID = encode_frame(
    token="ADM-CID", seq="0043", account="1234", data="#1234|1130 01 017", timestamp=NOW
)
AES = encode_frame(
    token="SIA-DCS", seq="0044", account="1234", data="#1234|Nri1/BA017", timestamp=NOW, key=KEY
)
# More distinct timestamps than the parse memo holds, so every frame misses it (as at low rates,
# when no two frames share a second); each frame is received at its own time.
MISS_SECONDS = 2048


def _distinct_seconds(key: AesKey | None) -> list[tuple[bytes, datetime]]:
    out = []
    for n in range(MISS_SECONDS):
        at = NOW + timedelta(seconds=n)
        frame = encode_frame(
            token="SIA-DCS",
            seq="0045",
            account="1234",
            data="#1234|Nri1/BA017",
            timestamp=at,
            key=key,
        )
        out.append((frame, at))
    return out


def _cycling(
    conn: Dc09ReceiverConnection, frames: list[tuple[bytes, datetime]]
) -> Callable[[], object]:
    """receive_data over ``frames`` in turn (the turn itself costs ~0.1 µs per call)."""
    turn = itertools.cycle(frames)

    def call() -> object:
        frame, at = next(turn)
        return conn.receive_data(frame, now=at)

    return call


class Directory:
    """Every account has the same crypto settings (the lookup itself is not what is measured)."""

    def __init__(self, key: AesKey | None) -> None:
        self.crypto = AccountCrypto(key=key)

    def lookup(self, account: str) -> AccountCrypto | None:
        return self.crypto


class Timing:
    """µs per call: median and minimum over the repeats (the minimum is the least disturbed)."""

    def __init__(self, fn: Callable[[], object], *, number: int, repeat: int) -> None:
        runs = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
        self.median = statistics.median(runs)
        self.best = min(runs)


def _check(frame: bytes, key: AesKey | None, *, now: datetime = NOW) -> None:
    # Every measured frame must really be accepted, or the numbers measure an error path.
    conn = Dc09ReceiverConnection(ReceiverConfig(), Directory(key))
    events = conn.receive_data(frame, now=now)
    assert len(events) == 1, events
    assert type(events[0]).__name__ == "FrameReceived", events[0]
    assert len(getattr(events[0], "events", ())) == 1, events[0]


def ours(number: int, repeat: int) -> list[tuple[str, Timing]]:
    """Our receive paths (TCP stream, UDP datagram, decode_frame + parse_payload) and replies."""
    for frame, key in ((SIA, None), (CID, None), (AES, KEY)):
        _check(frame, key)
    plain_miss, aes_miss = _distinct_seconds(None), _distinct_seconds(KEY)
    for frames, key in ((plain_miss, None), (aes_miss, KEY)):
        _check(frames[0][0], key, now=frames[0][1])
    plain = Dc09ReceiverConnection(ReceiverConfig(), Directory(None))
    keyed = Dc09ReceiverConnection(ReceiverConfig(), Directory(KEY))
    sia_frame = decode_frame(SIA)
    aes_frame = decode_frame(AES, key=KEY)
    keyed.receive_data(AES, now=NOW)  # remembers the key for the *ACK
    cases: list[tuple[str, Callable[[], object]]] = [
        ("receiver.receive_data (TCP): SIA-DCS plain", lambda: plain.receive_data(SIA, now=NOW)),
        ("receiver.receive_data (TCP): ADM-CID plain", lambda: plain.receive_data(CID, now=NOW)),
        ("receiver.receive_data (TCP): SIA-DCS AES-128", lambda: keyed.receive_data(AES, now=NOW)),
        (
            "receiver.receive_data (TCP): SIA-DCS plain, a new second every frame",
            _cycling(plain, plain_miss),
        ),
        (
            "receiver.receive_data (TCP): SIA-DCS AES-128, a new second every frame",
            _cycling(keyed, aes_miss),
        ),
        (
            "receiver.receive_datagram (UDP): SIA-DCS plain",
            lambda: plain.receive_datagram(SIA, now=NOW),
        ),
        (
            "receiver.receive_datagram (UDP): SIA-DCS AES-128",
            lambda: keyed.receive_datagram(AES, now=NOW),
        ),
        (
            "decode_frame + parse_payload: SIA-DCS plain",
            lambda: parse_payload("SIA-DCS", decode_frame(SIA).data),
        ),
        (
            "decode_frame + parse_payload: ADM-CID plain",
            lambda: parse_payload("ADM-CID", decode_frame(CID).data),
        ),
        (
            "decode_frame + parse_payload: SIA-DCS AES-128",
            lambda: parse_payload("SIA-DCS", decode_frame(AES, key=KEY).data),
        ),
        ("reply: ACK", lambda: plain.ack(sia_frame, now=NOW)),
        ("reply: *ACK (AES-128)", lambda: keyed.ack(aes_frame, now=NOW)),
    ]
    return [(f"alarmrelay {name}", Timing(fn, number=number, repeat=repeat)) for name, fn in cases]


def peer(number: int, repeat: int) -> list[tuple[str, Timing]]:
    """pysiaalarm's synchronous parser on the same frames (CRC, decrypt, parse, code lookup)."""
    try:
        from pysiaalarm import SIAAccount  # the peer is optional
        from pysiaalarm.event import SIAEvent
    except ImportError:
        return []
    # No time band: the frames carry a fixed time, and the window check is not what is compared.
    plain = {"1234": SIAAccount("1234", None, allowed_timeband=None)}
    keyed = {"1234": SIAAccount("1234", KEY_ASCII, allowed_timeband=None)}
    sia_line, cid_line, aes_line = (f.decode()[1:-1] for f in (SIA, CID, AES))
    for line, accounts in ((sia_line, plain), (cid_line, plain), (aes_line, keyed)):
        event = SIAEvent.from_line(line, accounts)
        assert event.valid_message, line
        assert event.code == "BA", (line, event.code)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("SIA-DCS plain", lambda: SIAEvent.from_line(sia_line, plain)),
        ("ADM-CID plain", lambda: SIAEvent.from_line(cid_line, plain)),
        ("SIA-DCS AES-128", lambda: SIAEvent.from_line(aes_line, keyed)),
    ]
    small = max(1, number // 4)  # it is slower; fewer calls per run keep the run time alike
    return [
        (f"pysiaalarm SIAEvent.from_line: {name}", Timing(fn, number=small, repeat=repeat))
        for name, fn in cases
    ]


def stages(number: int, repeat: int) -> list[tuple[str, Timing]]:
    """Where the time of one frame goes, stage by stage, through public functions."""
    splitter = FrameSplitter()
    header = decode_header(SIA)
    aes_header = decode_header(AES)
    frame = decode_body(header, None)
    cid_frame = decode_frame(CID)
    aes_frame = decode_frame(AES, key=KEY)
    stamp_text = "_12:00:00,11-22-2026"
    stamp_bytes = stamp_text.encode()
    window = TimestampWindow()
    stamp = parse_timestamp(stamp_text)
    cipher_hex = aes_header.body.decode("ascii")
    cipher = bytes.fromhex(cipher_hex)
    two_frames = SIA + CID
    cases: list[tuple[str, Callable[[], object]]] = [
        ("FrameSplitter.feed (one whole frame: the shortcut)", lambda: splitter.feed(SIA)),
        ("FrameSplitter.feed (two frames in one read, both)", lambda: splitter.feed(two_frames)),
        ("decode_header (standard form: the fast path)", lambda: decode_header(SIA)),
        (
            "decode_header_tolerant (the same frame, the fallback)",
            lambda: decode_header_tolerant(SIA),
        ),
        ("decode_body plain (data, x-data, timestamp)", lambda: decode_body(header, None)),
        ("  of which parse_timestamp_bytes (memo hit)", lambda: parse_timestamp_bytes(stamp_bytes)),
        ("parse_timestamp (a memo miss costs this)", lambda: parse_timestamp(stamp_text)),
        ("TimestampWindow.check", lambda: window.check(stamp, NOW)),
        ("parse_payload SIA-DCS (parse + classify)", lambda: parse_payload("SIA-DCS", frame.data)),
        (
            "parse_payload ADM-CID (parse + classify)",
            lambda: parse_payload("ADM-CID", cid_frame.data),
        ),
        ("decode_body AES-128 (decrypt + parse)", lambda: decode_body(aes_header, KEY)),
        ("  of which AesKey.decrypt_region", lambda: KEY.decrypt_region(cipher_hex)),
        ("  of which AesKey.decrypt (context kept open)", lambda: KEY.decrypt(cipher)),
        (
            "encode_reply *ACK (AES-128)",
            lambda: encode_reply(
                token="ACK",
                seq=aes_frame.seq,
                account=aes_frame.account,
                line=aes_frame.line,
                timestamp=NOW,
                key=KEY,
            ),
        ),
        ("  of which format_timestamp", lambda: format_timestamp(NOW)),
        (
            "  of which AesKey.encrypt_region (random pad)",
            lambda: KEY.encrypt_region(b"]_12:00:00,11-22-2026"),
        ),
        (
            "encode_frame *ACK (AES-128), the general encoder",
            lambda: encode_frame(
                token="ACK",
                seq=aes_frame.seq,
                account=aes_frame.account,
                data="",
                line=aes_frame.line,
                timestamp=NOW,
                key=KEY,
            ),
        ),
    ]
    return [(name, Timing(fn, number=number, repeat=repeat)) for name, fn in cases]


def table(title: str, rows: list[tuple[str, Timing]], *, rate: bool) -> str:
    head = "| measurement | µs median | µs best |" + (
        " frames/s (median, one core) |" if rate else ""
    )
    lines = [f"### {title}", "", head, "|---|---|---|" + ("---|" if rate else "")]
    for name, timing in rows:
        line = f"| {name} | {timing.median:.1f} | {timing.best:.1f} |"
        if rate:
            line += f" {1e6 / timing.median:,.0f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_protocols", description=__doc__)
    parser.add_argument("--number", type=int, default=20_000, help="calls per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement (default 7)")
    parser.add_argument("--stages", action="store_true", help="also time each stage of one frame")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}; {args.repeat} runs of {args.number} calls each")
    print()
    print(
        table(
            "Per frame", ours(args.number, args.repeat) + peer(args.number, args.repeat), rate=True
        )
    )
    if args.stages:
        print()
        print(table("Stages of one frame", stages(args.number, args.repeat), rate=False))


if __name__ == "__main__":
    main()
