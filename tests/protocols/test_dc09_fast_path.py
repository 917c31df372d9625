"""The fast paths for standard frames decide exactly as the tolerant parser does.

:func:`decode_standard_header`, :func:`parse_standard_tail`, :func:`encode_reply` and the
splitter's whole-frame shortcut either return what the general code returns for the same input
or step aside (None). These properties generate frames in the standard form and in every
deviation near it (case, bare R/L, A field, Eldes and binary CRC, missing LF/CR, NULs, broken
tails, wrong keys) and compare the outcome with the fast paths switched off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from unittest import mock
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import dc09_crypto, dc09_frame
from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import (
    CrcStyle,
    FrameSplitter,
    decode_frame,
    decode_header_tolerant,
    decode_standard_header,
    encode_frame,
    encode_reply,
    parse_standard_tail,
    parse_tail_tolerant,
)
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    ReceiverConfig,
    ReceiverEvent,
)
from protocols.dc09_timestamp import TimestampWindow, format_timestamp
from protocols.errors import RemoteProtocolError
from protocols.signal import XData

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY = AesKey.from_ascii("1234567890123456")
OTHER_KEY = AesKey.from_hex("000102030405060708090A0B0C0D0E0F")


@contextmanager
def tolerant_only() -> Iterator[None]:
    """Switch the fast paths off: every frame goes through the tolerant parser."""
    with (
        mock.patch.object(dc09_frame, "decode_standard_header", return_value=None),
        mock.patch.object(dc09_frame, "parse_standard_tail", return_value=None),
    ):
        yield


# -- generated frames ---------------------------------------------------------------------------

hex_field = st.text("0123456789ABCDEF", max_size=7) | st.text("0123456789abcdefABCDEF", max_size=3)
tokens = st.sampled_from(
    ["SIA-DCS", "ADM-CID", "NULL", "ACK", "NAK", "DUH", "RSP", "sia-dcs", "X" * 17, "A B", ""]
)
seqs = st.integers(0, 9999).map(lambda n: f"{n:04d}") | st.sampled_from(["123", "12a4", "00001"])
accounts = (
    st.none()
    | st.text("0123456789ABCDEF", min_size=1, max_size=17)
    | st.text("0123456789abcdefXYZ", min_size=1, max_size=6)
)
text_chars = st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from(
    list("äöüß€é\x00\r\n")
)
xdata_block = st.builds(
    lambda ident, value: f"[{ident}{value}]",
    st.sampled_from(list("AHIKLMNVXZahz1_ ")) | st.just(""),
    st.text(text_chars, max_size=12),
)
timestamps = st.one_of(
    st.just(""),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)).map(
        lambda d: format_timestamp(d.replace(tzinfo=UTC))
    ),
    st.just(format_timestamp(NOW)),
    st.sampled_from(
        [
            "_12:00:00,13-22-2026",  # month 13
            "_12:00:00,02-30-2026",  # no such day
            "_25:00:00,11-22-2026",
            "12:00:00,11-22-2026",  # no underscore
            "_12:00:00,11-22-26",
            "_12:00:00,11-22-20261",
            "_١٢:00:00,11-22-2026",
        ]
    ),
)


@st.composite
def tails(draw: st.DrawFn) -> str:
    """What follows the data block's '[': data ']' [x-data…] [_timestamp], often broken."""
    data = draw(st.text(text_chars, max_size=30))
    blocks = draw(st.lists(xdata_block, max_size=3) | st.just(["[X1]"] * 33))
    close = draw(st.sampled_from(["]", "]", "]", ""]))
    junk = draw(st.sampled_from(["", "", "", "x", "]", "[", "_"]))
    return data + close + "".join(blocks) + draw(timestamps) + junk


def _header(
    star: bool,
    token: str,
    seq: str,
    receiver: str | None,
    line: str | None,
    account: str | None,
    a_field: bool,
) -> str:
    return (
        f'"{"*" if star else ""}{token}"{seq}'
        + ("" if receiver is None else f"R{receiver}")
        + ("" if line is None else f"L{line}")
        + ("" if account is None else f"#{account}")
        + ("A0" if a_field else "")
        + "["
    )


@st.composite
def regions(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(CRC region, encrypted?) in the standard form or near it."""
    star = draw(st.booleans())
    header = _header(
        star,
        draw(tokens),
        draw(seqs),
        draw(st.none() | hex_field),
        draw(st.none() | hex_field),
        draw(accounts),
        draw(st.integers(0, 9)) == 0,  # the NAK's A field, now and then
    )
    tail = draw(tails()).encode("cp1252", "replace")
    if not star:
        return header.encode("ascii") + tail, False
    kind = draw(st.sampled_from(["key", "key", "key", "other_key", "lower", "garbage", "short"]))
    if kind in ("key", "lower", "other_key"):
        key = OTHER_KEY if kind == "other_key" else KEY
        body = key.encrypt_region(tail, pad=draw(st.sampled_from([None, b"P", b"0"])))
        body = body.lower() if kind == "lower" else body
    elif kind == "garbage":
        body = draw(st.text("0123456789ABCDEFG x", max_size=70))
    else:
        body = "00" * draw(st.integers(0, 15))
    return header.encode("ascii") + body.encode("ascii"), True


SIA_DATA = ["#1234|Nri1/BA017", "NBA01", "#1234|NRP", "#1234|Nri1/CL501^Smith^", "#1234|NZZ"]
SIA_DATA += ["#1234|Nid12/ti10:30/OP01|AEntrance", "#1234|Nri1/BA1/BR2"]
CID_DATA = ["#1234|1130 01 015", "1401 02 003", "#1234|3602 00 000", " #1234|1130 01 015 "]
BAD_DATA = ["", " ", "not an event", "#1234|1130 01", "#1234|N", "#1234|Nri1"]
token_payloads = st.one_of(
    st.tuples(st.just("SIA-DCS"), st.sampled_from(SIA_DATA)),
    st.tuples(st.just("ADM-CID"), st.sampled_from(CID_DATA)),
    st.tuples(st.just("NULL"), st.sampled_from(["", "#0000|0000 00 000"])),
    st.tuples(
        st.sampled_from(["SIA-DCS", "ADM-CID", "NULL", "ACK"]),
        st.sampled_from(SIA_DATA + CID_DATA + BAD_DATA),
    ),
)
clean_timestamps = st.one_of(
    st.just(""),
    st.integers(-60, 60).map(lambda s: format_timestamp(NOW + timedelta(seconds=s))),
)


@st.composite
def clean_regions(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(CRC region, encrypted?) as panels write it: mostly accepted, sometimes NAK or DUH."""
    star = draw(st.booleans())
    token, payload = draw(token_payloads)
    header = _header(
        star,
        token,
        draw(st.integers(0, 9999).map(lambda n: f"{n:04d}")),
        draw(st.none() | st.text("0123456789ABCDEF", min_size=1, max_size=6)),
        draw(st.none() | st.text("0123456789ABCDEF", min_size=1, max_size=6)),
        draw(st.sampled_from(["1234", "0", "B12345", "FFFF", "0123456789ABCDEF"])),
        False,
    )
    blocks = draw(st.lists(st.sampled_from(["[X1]", "[Vwww]", "[Hää]", "[a]"]), max_size=3))
    tail = (payload + "]" + "".join(blocks) + draw(clean_timestamps)).encode("cp1252")
    if not star:
        return header.encode("ascii") + tail, False
    pad = draw(st.sampled_from([None, b"P"]))
    return header.encode("ascii") + KEY.encrypt_region(tail, pad=pad).encode("ascii"), True


ENVELOPES = [
    "standard",
    "standard",
    "standard",
    "no_lf",
    "no_cr",
    "bare",
    "trailing_nul",
    "lower_crc",
    "eldes",
    "binary",
    "bad_crc",
    "bad_length",
    "blank_prefix",
    "double_cr",
    "nul_counted",
]


def envelope(region: bytes, kind: str) -> bytes:
    """Wrap a region as LF CRC 0LLL region CR, or one of the deviations."""
    if kind == "nul_counted":  # CRC and length over trailing NULs, no CR: NULs are not the frame
        region += b"\x00"
    crc, length = crc16_arc(region), len(region)
    if kind == "eldes":
        crc, length = crc16_arc(region + b"\r"), length + 1
    if kind == "bad_crc":
        crc ^= 0x0101
    if kind == "bad_length":
        length += 1
    if kind == "binary":
        head = crc.to_bytes(2, "big") + f"0{length:03X}".encode()
    else:
        head = f"{crc:04X}0{length:03X}".encode()
        if kind == "lower_crc":
            head = head.lower()
    raw = b"\n" + head + region + b"\r"
    if kind in ("no_lf", "bare"):
        raw = raw[1:]
    if kind in ("no_cr", "bare", "nul_counted"):
        raw = raw[:-1]
    if kind == "trailing_nul":
        raw += b"\x00\x00"
    if kind == "blank_prefix":
        raw = b"\n\r\n" + raw[1:]
    if kind == "double_cr":
        raw += b"\r"
    return raw


frames = st.builds(
    lambda region, kind: (envelope(region[0], kind), region[1]),
    clean_regions() | regions(),
    st.sampled_from(ENVELOPES),
)


def _outcome(call: object) -> object:
    assert callable(call)
    try:
        return call()
    except RemoteProtocolError as exc:
        return ("error", exc.reply, exc.message)


class TestHeaderAndTail:
    @given(frames)
    @settings(max_examples=600)
    def test_standard_header_is_the_tolerant_header_or_none(
        self, frame: tuple[bytes, bool]
    ) -> None:
        """decode_standard_header returns what decode_header_tolerant returns, or steps aside."""
        raw, _ = frame
        fast = decode_standard_header(raw)
        slow = _outcome(lambda: decode_header_tolerant(raw))
        assert fast is None or fast == slow

    def test_the_largest_legal_frame_takes_the_fast_path(self) -> None:
        """A region of 0xFFF bytes (the most a length field counts) makes the largest legal
        frame, MAX_FRAME_BYTES long; both parsers decode it, alike."""
        raw = envelope(b'"NULL"0000L0#1234[' + b"x" * (0xFFF - 19) + b"]", "standard")
        assert len(raw.rstrip(b"\r")) + 1 == dc09_frame.MAX_FRAME_BYTES == 4105
        fast = decode_standard_header(raw)
        assert fast is not None
        assert fast == _outcome(lambda: decode_header_tolerant(raw))
        outcome = _outcome(lambda: decode_frame(raw))
        assert not (isinstance(outcome, tuple) and outcome[0] == "error")

    @given(tails() | st.binary(max_size=80).map(lambda b: b.decode("latin-1")))
    @settings(max_examples=600)
    def test_standard_tail_is_the_tolerant_tail_or_none(self, tail: str) -> None:
        """parse_standard_tail returns what parse_tail_tolerant returns, or steps aside."""
        raw = tail.encode("cp1252", "replace")
        fast = parse_standard_tail(raw)
        slow = _outcome(lambda: parse_tail_tolerant(raw))
        assert fast is None or fast == slow

    @given(frames, st.sampled_from([None, KEY, OTHER_KEY]))
    @settings(max_examples=600)
    def test_decode_frame_same_with_and_without_fast_paths(
        self, frame: tuple[bytes, bool], key: AesKey | None
    ) -> None:
        """decode_frame gives the same frame or the same error either way."""
        raw, _ = frame
        fast = _outcome(lambda: decode_frame(raw, key=key))
        with tolerant_only():
            slow = _outcome(lambda: decode_frame(raw, key=key))
        assert fast == slow

    @given(
        token=st.sampled_from(["SIA-DCS", "ADM-CID", "NULL", "ACK", "DUH", "RSP"]),
        seq=st.integers(0, 9999).map(lambda n: f"{n:04d}"),
        receiver=st.none() | st.text("0123456789ABCDEF", min_size=1, max_size=6),
        line=st.none() | st.text("0123456789ABCDEF", min_size=1, max_size=6),
        account=st.text("0123456789ABCDEF", min_size=1, max_size=16),
        data=st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="[]")),
        blocks=st.lists(
            st.builds(
                XData, id=st.sampled_from(list("AHKLVXZ")), value=st.text("abc 19-", max_size=9)
            ),
            max_size=3,
        ),
        timestamp=st.none() | st.just(NOW),
        key=st.none() | st.just(KEY),
    )
    def test_the_standard_form_takes_the_fast_paths(
        self,
        token: str,
        seq: str,
        receiver: str | None,
        line: str | None,
        account: str,
        data: str,
        blocks: list[XData],
        timestamp: datetime | None,
        key: AesKey | None,
    ) -> None:
        """Frames as panels and our encoder write them are decided by the fast paths."""
        raw = encode_frame(
            token=token,
            seq=seq,
            account=account,
            data=data,
            receiver=receiver,
            line=line,
            xdata=blocks,
            timestamp=timestamp if key is None else NOW,
            key=key,
        )
        header = decode_standard_header(raw)
        assert header is not None
        tail = header.body if key is None else key.decrypt_region(header.body.decode())
        assert parse_standard_tail(tail) is not None


# -- the receiver ------------------------------------------------------------------------------


class Accounts:
    """Known accounts with their crypto; "1234" is keyed when the test says so."""

    def __init__(self, crypto: AccountCrypto) -> None:
        self.crypto = crypto

    def lookup(self, account: str) -> AccountCrypto | None:
        return None if account.startswith("F") else self.crypto


@st.composite
def receiver_cases(draw: st.DrawFn) -> tuple[bytes, AccountCrypto, ReceiverConfig]:
    """A frame, its account's crypto (mostly the right key) and the receiver's rules."""
    raw, encrypted = draw(frames)
    if draw(st.integers(0, 3)):
        key = KEY if encrypted else None
    else:
        key = draw(st.sampled_from([None, KEY, OTHER_KEY]))
    crypto = AccountCrypto(
        key=key,
        window=draw(st.sampled_from([None, None, TimestampWindow(past_s=10**9, future_s=10**9)])),
        local_time_zone=draw(st.sampled_from([None, None, None, ZoneInfo("Europe/Vilnius")])),
    )
    config = ReceiverConfig(
        check_plain_timestamps=draw(st.booleans()),
        max_frame_bytes=draw(st.sampled_from([4096, 4096, 4096, 64])),
    )
    return raw, crypto, config


def _view(events: list[ReceiverEvent]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, FrameReceived):
            out.append((e.frame, e.events))
        else:
            out.append((e.error.reply, e.error.message, e.error.reply_bytes, e.header))
    return out


class TestReceiver:
    @given(receiver_cases(), st.sampled_from([0, 0, 5, -30, 3600]))
    @settings(max_examples=600)
    def test_receive_data_and_datagram_same_with_and_without_fast_paths(
        self, case: tuple[bytes, AccountCrypto, ReceiverConfig], skew_s: int
    ) -> None:
        """TCP and UDP give the same events (frames, event lists, errors, reply bytes) either way."""
        raw, crypto, config = case
        now = NOW + timedelta(seconds=skew_s)

        def run() -> list[tuple[object, ...]]:
            conn = Dc09ReceiverConnection(config, Accounts(crypto))
            events = conn.receive_data(raw, now=now) + conn.receive_datagram(raw, now=now)
            view = _view(events)
            for event in events:  # the ACK each accepted frame gets, keys remembered or not
                if isinstance(event, FrameReceived):
                    view.append((_acked(conn, event),))
            return view

        with mock.patch.object(dc09_crypto, "random_pad", lambda n, _random: b"P" * n):
            fast = run()
            with tolerant_only():
                slow = run()
        assert fast == slow


def _acked(conn: Dc09ReceiverConnection, event: FrameReceived) -> object:
    try:
        return conn.ack(event.frame, now=NOW)
    except ValueError as exc:
        return ("ValueError", str(exc))


# -- replies and the splitter ------------------------------------------------------------------


class TestReplies:
    @given(
        token=st.sampled_from(["ACK", "NAK", "DUH", "RSP", "A CK"]),
        seq=st.sampled_from(["0000", "0042", "9999", "123", "12a4", "١٢٣٤", "00001"]),
        account=st.none() | st.text("0123456789ABCDEFXYZ", min_size=1, max_size=17) | st.just("ab"),
        receiver=st.none() | st.text("0123456789ABCDEFG", max_size=7),
        line=st.none() | st.text("0123456789ABCDEFG", max_size=7),
        extra_fields=st.sampled_from(["", "A0", "Aä"]),
        timestamp=st.none() | st.datetimes(timezones=st.just(UTC)),
        key=st.none() | st.just(KEY),
        crc_style=st.sampled_from(list(CrcStyle)),
    )
    @settings(max_examples=600)
    def test_encode_reply_is_encode_frame_without_data(
        self,
        token: str,
        seq: str,
        account: str | None,
        receiver: str | None,
        line: str | None,
        extra_fields: str,
        timestamp: datetime | None,
        key: AesKey | None,
        crc_style: CrcStyle,
    ) -> None:
        """Same bytes, or the same exception, as encode_frame(data=""), also the second time."""
        args = {
            "token": token,
            "seq": seq,
            "account": account,
            "receiver": receiver,
            "line": line,
            "extra_fields": extra_fields,
            "timestamp": timestamp,
            "key": key,
            "crc_style": crc_style,
        }

        def run(build: object) -> object:
            assert callable(build)
            try:
                return build(**args)
            except ValueError as exc:
                return (type(exc), str(exc))

        with mock.patch.object(dc09_crypto, "random_pad", lambda n, _random: b"P" * n):
            expected = run(lambda **kw: encode_frame(data="", **kw))
            assert run(encode_reply) == expected
            assert run(encode_reply) == expected  # now with R/L/account memoised


class TestSplitter:
    @given(
        st.binary(max_size=80).map(lambda b: b"\n" + b)
        | frames.map(lambda f: f[0])
        | st.sampled_from([b"\n\r", b"\n12\r", b"\n123\r", b"\n\r\r\r\r", b"\n\n\n\n"]),
        st.binary(max_size=10),
        st.sampled_from([4096, 16]),
    )
    @settings(max_examples=400)
    def test_whole_frame_shortcut_is_what_drain_returns(
        self, data: bytes, earlier: bytes, limit: int
    ) -> None:
        """feed() with the shortcut leaves the same frames, errors and state as _drain()."""
        fast, slow = (FrameSplitter(max_frame_bytes=limit) for _ in range(2))
        fast.feed(earlier)
        slow.feed(earlier)
        got = fast.feed(data)
        slow._buffer += data
        expected: list[bytes | RemoteProtocolError] = []
        slow._drain(expected)

        def view(items: list[bytes | RemoteProtocolError]) -> list[object]:
            return [i if isinstance(i, bytes) else (i.reply, i.message) for i in items]

        assert view(got) == view(expected)
        assert (fast._buffer, fast._in_frame, fast._skip_reported) == (
            slow._buffer,
            slow._in_frame,
            slow._skip_reported,
        )
