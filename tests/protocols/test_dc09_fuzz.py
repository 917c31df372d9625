"""Property tests: hostile bytes never raise anything but the protocol error; encode/decode round-trips."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import decode_frame, encode_frame
from protocols.dc09_payload import parse_payload
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    ReceiverConfig,
)
from protocols.errors import RemoteProtocolError
from protocols.signal import XData

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class AnyAccount:
    def __init__(self, key: AesKey | None = None) -> None:
        self.key = key

    def lookup(self, account: str) -> AccountCrypto | None:
        return AccountCrypto(key=self.key)


frame_prefix = st.sampled_from(
    [b"", b"\n", b'\n96ED0016"SIA-DCS"0001L0#1234[', b"\nE5690029", b'"ADM-CID"']
)


class TestHostileBytes:
    @given(st.binary(max_size=600))
    @settings(max_examples=300)
    def test_decode_frame_raises_only_protocol_error(self, data: bytes) -> None:
        """decode_frame on arbitrary bytes raises RemoteProtocolError or returns a frame."""
        try:
            decode_frame(data)
        except RemoteProtocolError:
            pass

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
        try:
            parse_payload(token, data)
        except RemoteProtocolError:
            pass


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
data_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="[]"), max_size=60
)
xdata = st.lists(
    st.builds(
        XData,
        id=st.sampled_from(list("AHIKLMNORSVXYZ")),
        value=st.text(
            st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="[]"), max_size=20
        ),
    ),
    max_size=3,
)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)


class TestRoundTrip:
    @given(
        token=st.sampled_from(["SIA-DCS", "ADM-CID", "NULL", "ACK", "DUH", "RSP"]),
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
