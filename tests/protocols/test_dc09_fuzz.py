"""Property tests: hostile bytes never raise anything but the protocol error; encode/decode round-trips."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import decode_frame, encode_frame, inspect_frame
from protocols.dc09_payload import parse_payload
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    FrameRejected,
    ReceiverConfig,
    ReceiverEvent,
)
from protocols.dc09_transmitter import Dc09Transmitter
from protocols.errors import RemoteProtocolError
from protocols.signal import XData

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY = AesKey.from_ascii("1234567890123456")


class AnyAccount:
    def __init__(self, key: AesKey | None = None) -> None:
        self.key = key

    def lookup(self, account: str) -> AccountCrypto | None:
        return AccountCrypto(key=self.key)


frame_prefix = st.sampled_from(
    [b"", b"\n", b'\n96ED0016"SIA-DCS"0001L0#1234[', b"\nE5690029", b'"ADM-CID"']
)


def _view(events: list[ReceiverEvent]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, FrameReceived):
            out.append((e.frame, e.events))
        else:
            out.append((e.error.reply, e.error.message, e.error.reply_bytes, e.header))
    return out


def _framed(region: bytes) -> bytes:
    """Wrap ``region`` with a correct CRC and length so the fuzz reaches the parsers behind them."""
    return b"\n" + f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region + b"\r"


frame_shaped = st.builds(
    lambda head, rest: _framed(head + rest),
    st.sampled_from(
        [
            b'"SIA-DCS"0001L0#1234[',
            b'"ADM-CID"0002R1L1#1234[',
            b'"NULL"0000L0#1234[',
            b'"*SIA-DCS"0001L0#1234[',
            b'"*NULL"0000L0#1234[',
            b'"*ADM-CID"0001L0#1234[' + b"0" * 32,
            b'"',
            b"",
        ]
    ),
    st.binary(max_size=120) | st.text("0123456789ABCDEF]|[_:,-#N", max_size=96).map(str.encode),
)


class TestHostileBytes:
    @given(st.binary(max_size=600))
    @settings(max_examples=300)
    def test_decode_frame_raises_only_protocol_error(self, data: bytes) -> None:
        """decode_frame on arbitrary bytes raises RemoteProtocolError or returns a frame."""
        with contextlib.suppress(RemoteProtocolError):
            decode_frame(data)

    @given(frame_prefix, st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=8))
    @settings(max_examples=300)
    def test_receive_data_never_raises(self, prefix: bytes, data: bytes, cuts: list[int]) -> None:
        """The stream receiver turns any bytes, however chunked, into events without raising."""
        conn = Dc09ReceiverConnection(ReceiverConfig(max_frame_bytes=512), AnyAccount())
        stream = prefix + data
        pos = 0
        for cut in [*cuts, len(stream)]:
            conn.receive_data(stream[pos : pos + cut], now=NOW)
            pos += cut
        conn.receive_data(stream[pos:] + b"\r", now=NOW)
        assert conn._splitter.buffered <= 512

    @given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=10))
    @settings(max_examples=300)
    def test_receive_data_is_chunking_independent(self, data: bytes, cuts: list[int]) -> None:
        """Any bytes give the same events whole, byte by byte and in random chunks."""
        stream = b"\n" + data

        def fresh() -> Dc09ReceiverConnection:
            return Dc09ReceiverConnection(ReceiverConfig(max_frame_bytes=128), AnyAccount())

        whole = _view(fresh().receive_data(stream, now=NOW))
        conn = fresh()
        bytewise = [e for b in stream for e in conn.receive_data(bytes([b]), now=NOW)]
        conn = fresh()
        chunked: list[ReceiverEvent] = []
        pos = 0
        for cut in [*cuts, len(stream)]:
            chunked += conn.receive_data(stream[pos : pos + cut], now=NOW)
            pos += cut
        assert _view(bytewise) == whole == _view(chunked)

    @given(frame_shaped, st.booleans())
    @settings(max_examples=400)
    def test_crc_valid_garbage_raises_only_protocol_error(self, raw: bytes, keyed: bool) -> None:
        """Frames with a correct CRC and length but hostile content only raise RemoteProtocolError."""
        with contextlib.suppress(RemoteProtocolError):
            decode_frame(raw, key=KEY if keyed else None)
        inspect_frame(raw, KEY if keyed else None)
        conn = Dc09ReceiverConnection(ReceiverConfig(), AnyAccount(KEY if keyed else None))
        for event in conn.receive_data(raw, now=NOW) + conn.receive_datagram(raw, now=NOW):
            assert isinstance(event, FrameReceived | FrameRejected)

    @given(st.binary(max_size=400))
    @settings(max_examples=200)
    def test_inspect_frame_never_raises(self, data: bytes) -> None:
        """inspect_frame reports on any bytes without raising."""
        result = inspect_frame(data, KEY)
        assert result.frame is None or result.error is None

    @given(st.binary(max_size=400), st.integers(1, 30))
    @settings(max_examples=200)
    def test_transmitter_reply_stream_never_raises(self, data: bytes, chunk: int) -> None:
        """The transmitter turns any reply bytes into events without raising."""
        tx = Dc09Transmitter(receiver=None, line="0", key=KEY)
        for i in range(0, len(data), chunk):
            tx.receive_data(data[i : i + chunk])
        tx.receive_datagram(data)

    @given(st.binary(max_size=600))
    @settings(max_examples=200)
    def test_receive_datagram_never_raises(self, data: bytes) -> None:
        """A datagram of arbitrary bytes yields events, never an exception (keyed account too)."""
        conn = Dc09ReceiverConnection(
            ReceiverConfig(), AnyAccount(AesKey.from_ascii("1234567890123456"))
        )
        conn.receive_datagram(data, now=NOW)

    @given(st.sampled_from(["SIA-DCS", "ADM-CID", "NULL", "XYZ"]), st.text(max_size=200))
    @settings(max_examples=300)
    def test_payload_parsers_raise_only_protocol_error(self, token: str, data: str) -> None:
        """Payload parsing of arbitrary text raises only RemoteProtocolError."""
        with contextlib.suppress(RemoteProtocolError):
            parse_payload(token, data)


keys = st.one_of(
    st.binary(min_size=16, max_size=16).map(lambda b: AesKey.from_hex(b.hex())),
    st.binary(min_size=24, max_size=24).map(lambda b: AesKey.from_hex(b.hex().upper())),
    st.binary(min_size=32, max_size=32).map(lambda b: AesKey.from_hex(b.hex())),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16, max_size=16).map(
        AesKey.from_ascii
    ),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=24, max_size=24).map(
        AesKey.from_ascii
    ),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=32, max_size=32).map(
        AesKey.from_ascii
    ),
)
hexes = st.text("0123456789ABCDEF", min_size=0, max_size=6)
accounts = st.text("0123456789ABCDEF", min_size=3, max_size=16)
# Printable ASCII plus Windows-1252 letters (x-data text may be cp1252, ioBroker.sia#63).
text_chars = st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="[]") | (
    st.sampled_from(list("äöüÄÖÜß€éèñ"))
)
data_text = st.text(text_chars, max_size=60)
xdata = st.lists(
    st.builds(
        XData,
        id=st.sampled_from(list("AHIKLMNORSVXYZ")),
        value=st.text(text_chars, max_size=20),
    ),
    max_size=3,
)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)


class TestRoundTrip:
    @given(
        token=st.sampled_from(["SIA-DCS", "ADM-CID", "NULL", "ACK", "NAK", "DUH", "RSP", "ACR-SF"]),
        seq=st.integers(0, 9999).map(lambda n: f"{n:04d}"),
        receiver=st.one_of(st.none(), hexes),
        line=st.one_of(st.none(), hexes.filter(bool)),
        account=accounts,
        data=data_text,
        blocks=xdata,
        timestamp=st.one_of(st.none(), times),
        key=st.one_of(st.none(), keys),
    )
    @settings(max_examples=300)
    def test_encode_then_decode(
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
        """Every generated frame (plain or AES-128/192/256, hex or ASCII key) decodes to what was encoded."""
        if key is not None and timestamp is None:
            timestamp = NOW
        raw = encode_frame(
            token=token,
            seq=seq,
            account=account,
            data=data,
            receiver=receiver,
            line=line,
            xdata=blocks,
            timestamp=timestamp,
            key=key,
        )
        frame = decode_frame(raw, key=key)
        assert (frame.token, frame.seq, frame.receiver, frame.line, frame.account) == (
            token,
            seq,
            receiver,
            line,
            account,
        )
        assert frame.data == data
        assert list(frame.xdata) == [XData(id=b.id, value=b.value) for b in blocks]
        assert frame.timestamp == timestamp
        assert frame.encrypted is (key is not None)

    @given(seq=st.integers(0, 9999).map(lambda n: f"{n:04d}"), zone=st.integers(0, 999), key=keys)
    @settings(max_examples=100)
    def test_receiver_accepts_what_we_encode(self, seq: str, zone: int, key: AesKey) -> None:
        """Frames we build are accepted by our receiver with the event intact."""
        raw = encode_frame(
            token="ADM-CID",
            seq=seq,
            account="1234",
            data=f"#1234|1130 01 {zone:03d}",
            timestamp=NOW,
            key=key,
        )
        [event] = Dc09ReceiverConnection(ReceiverConfig(), AnyAccount(key)).receive_data(
            raw, now=NOW
        )
        assert isinstance(event, FrameReceived)
        assert event.events[0].zone == (zone or None)
