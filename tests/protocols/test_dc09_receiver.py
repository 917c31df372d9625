"""The sans-I/O DC-09 receiver: stream splitting, inbound rules and the replies it builds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import CrcStyle, decode_frame, encode_frame
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    FrameRejected,
    ReceiverConfig,
    ReceiverEvent,
)
from protocols.dc09_timestamp import TimestampWindow
from protocols.errors import Reply
from protocols.signal import Category, XData
from tests.vectors import load_vectors

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
KEY = AesKey.from_hex("000102030405060708090A0B0C0D0E0F")


class Directory:
    def __init__(
        self, accounts: dict[str, AccountCrypto] | None = None, *, accept_all: bool = False
    ) -> None:
        self.accounts = accounts or {}
        self.accept_all = accept_all

    def lookup(self, account: str) -> AccountCrypto | None:
        if account in self.accounts:
            return self.accounts[account]
        return AccountCrypto() if self.accept_all else None


def connection(
    config: ReceiverConfig | None = None, accounts: dict[str, AccountCrypto] | None = None
) -> Dc09ReceiverConnection:
    return Dc09ReceiverConnection(
        config or ReceiverConfig(check_plain_timestamps=False), Directory(accounts)
    )


def feed_whole(conn: Dc09ReceiverConnection, data: bytes) -> list[ReceiverEvent]:
    return conn.receive_data(data, now=NOW)


def feed_bytewise(conn: Dc09ReceiverConnection, data: bytes) -> list[ReceiverEvent]:
    out: list[ReceiverEvent] = []
    for i in range(len(data)):
        out += conn.receive_data(data[i : i + 1], now=NOW)
    return out


def feed_with_trailing(conn: Dc09ReceiverConnection, data: bytes) -> list[ReceiverEvent]:
    # Trailing bytes that begin the next frame must not produce anything yet.
    return conn.receive_data(data + b"\n1234", now=NOW)


FEEDERS: list[Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]]] = [
    feed_whole,
    feed_bytewise,
    feed_with_trailing,
]


def summary(events: list[ReceiverEvent]) -> list[tuple[str, str, tuple[str, ...]]]:
    out = []
    for e in events:
        if isinstance(e, FrameReceived):
            out.append(("ok", e.frame.seq, tuple(ev.code for ev in e.events)))
        else:
            out.append(("rejected", e.error.reply.value, (e.error.message,)))
    return out


@pytest.mark.parametrize("feed", FEEDERS, ids=lambda f: f.__name__)
class TestStreamSplitting:
    def test_every_public_event_frame(
        self, feed: Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]]
    ) -> None:
        """All public SIA-DCS/ADM-CID/NULL vectors are accepted identically however they are fed."""
        frames = [
            v["frame"].encode("latin-1")
            for v in load_vectors()["frames"]
            if v["id"] in {"SIA-DCS", "ADM-CID", "NULL"}
        ]
        assert frames, "vectors.json has event frames"
        stream = b"".join(b"\n" + f + b"\r" for f in frames)
        reference = summary(
            feed_whole(
                Dc09ReceiverConnection(
                    ReceiverConfig(check_plain_timestamps=False), Directory(accept_all=True)
                ),
                stream,
            )
        )
        assert [r[0] for r in reference] == ["ok"] * len(frames)
        conn = Dc09ReceiverConnection(
            ReceiverConfig(check_plain_timestamps=False), Directory(accept_all=True)
        )
        assert summary(feed(conn, stream)) == reference

    def test_several_frames_in_one_read(
        self, feed: Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]]
    ) -> None:
        """Dahua-style: several frames in one segment all come out, in order (pysiaalarm#54)."""
        conn = connection(accounts={"1234": AccountCrypto()})
        data = b"".join(
            encode_frame(
                token="ADM-CID", seq=f"{n:04d}", account="1234", data=f"#1234|1130 01 00{n}"
            )
            for n in range(1, 4)
        )
        assert summary(feed(conn, data)) == [
            ("ok", "0001", ("130",)),
            ("ok", "0002", ("130",)),
            ("ok", "0003", ("130",)),
        ]

    def test_bad_crc_then_good_frame(
        self, feed: Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]]
    ) -> None:
        """A bad frame is rejected silently and the next frame on the connection still works."""
        conn = connection(accounts={"1234": AccountCrypto()})
        good = encode_frame(token="SIA-DCS", seq="0002", account="1234", data="#1234|NBA01")
        bad = b"\n0000" + good[5:]
        events = feed(conn, bad + good)
        assert [s[0:2] for s in summary(events)] == [("rejected", "none"), ("ok", "0002")]
        assert isinstance(events[0], FrameRejected) and events[0].error.reply_bytes == b""


class TestInboundRules:
    def test_unknown_account_gets_duh_echo(self) -> None:
        """An unknown account is answered DUH echoing seq, L and account."""
        conn = connection()
        [event] = conn.receive_data(
            encode_frame(token="SIA-DCS", seq="0007", account="9999", data="#9999|NBA01"), now=NOW
        )
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.DUH
        assert event.error.reply_bytes == encode_frame(
            token="DUH", seq="0007", account="9999", data=""
        )

    def test_unknown_account_can_be_silent(self) -> None:
        """With unknown_account_reply=NONE an unknown account gets no reply."""
        conn = connection(ReceiverConfig(unknown_account_reply=Reply.NONE))
        [event] = conn.receive_data(
            encode_frame(token="NULL", seq="0000", account="9999", data=""), now=NOW
        )
        assert isinstance(event, FrameRejected) and event.error.reply_bytes == b""

    def test_plain_frame_for_keyed_account_is_refused(self) -> None:
        """A keyed account's plain frame gets DUH: encryption is required."""
        conn = connection(accounts={"1234": AccountCrypto(key=KEY)})
        [event] = conn.receive_data(
            encode_frame(token="SIA-DCS", seq="0001", account="1234", data="#1234|NBA01"), now=NOW
        )
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.DUH
        assert "encryption required" in event.error.message

    def test_encrypted_frame_accepted_and_acked_encrypted(self) -> None:
        """An encrypted frame in the window is accepted; the *ACK decrypts with the key and carries our time."""
        conn = connection(accounts={"1234": AccountCrypto(key=KEY)})
        raw = encode_frame(
            token="SIA-DCS",
            seq="0001",
            account="1234",
            data="#1234|Nri1/BA01",
            timestamp=NOW,
            key=KEY,
        )
        [event] = conn.receive_data(raw, now=NOW + timedelta(seconds=3))
        assert isinstance(event, FrameReceived)
        assert event.events[0].code == "BA"
        assert event.events[0].classification.category is Category.ALARMS
        ack = decode_frame(conn.ack(event.frame, now=NOW + timedelta(seconds=3)), key=KEY)
        assert (ack.token, ack.encrypted, ack.seq, ack.account) == ("ACK", True, "0001", "1234")
        assert ack.timestamp == NOW + timedelta(seconds=3)

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (
                "#1234|NBA1][$P52.123456,5.987654",
                "decrypted with the account key, but x-data block … does",
            ),
            ("#1234|Xwhere-am-i 52.12,5.98", "SIA block: no … event block in …"),
            # a user's name with an apostrophe, and no event code
            ("#1234|Nid5^O'Brien 52.12^", "SIA block: no event code in …"),
        ],
    )
    def test_an_encrypted_frames_content_is_not_in_its_rejection(
        self, data: str, reason: str
    ) -> None:
        """The rejection reason is logged (frame_rejected), and decrypted content never is:
        for an encrypted frame it says what is wrong without quoting the content (a GPS
        position here); the same plain frame's reason quotes it for field support."""
        conn = connection(accounts={"1234": AccountCrypto(key=KEY)})
        region = (
            b'"*SIA-DCS"0001L0#1234['
            + KEY.encrypt_region(f"{data}]_{NOW:%H:%M:%S,%m-%d-%Y}".encode()).encode()
        )
        raw = b"\n" + f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region + b"\r"
        [event] = conn.receive_data(raw, now=NOW)
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.DUH
        message = event.error.message
        assert message.startswith(reason)
        assert "decrypted content not logged" in message
        for secret in ("52.1", "5.98", "where-am-i"):
            assert secret not in message
        assert event.error.reply_bytes  # still answered DUH

    @pytest.mark.parametrize(
        ("offset_s", "accepted"), [(-40, True), (-41, False), (20, True), (21, False)]
    )
    def test_timestamp_window_edges(self, offset_s: int, accepted: bool) -> None:
        """Default window -40/+20 s: inside is accepted, outside is NAKed with our UTC time."""
        conn = connection(accounts={"1234": AccountCrypto(key=KEY)})
        raw = encode_frame(
            token="ADM-CID",
            seq="0001",
            account="1234",
            data="#1234|1130 01 001",
            timestamp=NOW + timedelta(seconds=offset_s),
            key=KEY,
        )
        [event] = conn.receive_data(raw, now=NOW)
        if accepted:
            assert isinstance(event, FrameReceived)
        else:
            assert isinstance(event, FrameRejected) and event.error.reply is Reply.NAK
            nak = decode_frame(event.error.reply_bytes)
            assert (nak.token, nak.seq, nak.encrypted, nak.timestamp) == ("NAK", "0000", False, NOW)

    def test_nak_bytes_match_the_published_form(self) -> None:
        """The NAK is exactly the published vector for the same time."""
        conn = connection()
        nak = conn.nak(now=datetime(2025, 9, 24, 16, 20, 1, tzinfo=UTC))
        assert nak == b'\nE4410025"NAK"0000R0L0A0[]_16:20:01,09-24-2025\r'

    def test_per_account_window_override(self) -> None:
        """An account's own window replaces the default."""
        conn = connection(
            accounts={
                "1234": AccountCrypto(key=KEY, window=TimestampWindow(past_s=600, future_s=20))
            }
        )
        raw = encode_frame(
            token="NULL",
            seq="0000",
            account="1234",
            data="",
            timestamp=NOW - timedelta(seconds=300),
            key=KEY,
        )
        assert isinstance(conn.receive_data(raw, now=NOW)[0], FrameReceived)

    def test_local_time_panel(self) -> None:
        """A panel that sends local time (Trikdis) is accepted with its zone configured."""
        zone = ZoneInfo("Europe/Vilnius")
        local = NOW.astimezone(zone).replace(tzinfo=UTC)  # wall-clock time written as if UTC
        raw = encode_frame(
            token="NULL", seq="0000", account="9413", data="", timestamp=local, key=KEY
        )
        assert isinstance(
            connection(accounts={"9413": AccountCrypto(key=KEY)}).receive_data(raw, now=NOW)[0],
            FrameRejected,
        )
        conn = connection(accounts={"9413": AccountCrypto(key=KEY, local_time_zone=zone)})
        [received] = conn.receive_data(raw, now=NOW)
        assert isinstance(received, FrameReceived)
        assert received.sent_at == NOW  # the panel's local time read back in UTC
        assert received.frame.timestamp == local

    def test_local_time_out_of_range_gets_a_nak_and_the_next_frame_is_read(self) -> None:
        """A local time with no UTC instant datetime can hold (31 Dec 9999 in New York) is a
        NAK like any bad timestamp; the frame after it in the same read is still handled."""
        zone = ZoneInfo("America/New_York")
        conn = connection(accounts={"9413": AccountCrypto(key=KEY, local_time_zone=zone)})
        bad = encode_frame(
            token="NULL",
            seq="0001",
            account="9413",
            data="",
            timestamp=datetime(9999, 12, 31, 23, 30, tzinfo=UTC),
            key=KEY,
        )
        good = encode_frame(
            token="NULL",
            seq="0002",
            account="9413",
            data="",
            timestamp=NOW.astimezone(zone).replace(tzinfo=UTC),
            key=KEY,
        )
        rejected, received = conn.receive_data(bad + good, now=NOW)
        assert isinstance(rejected, FrameRejected) and rejected.error.reply is Reply.NAK
        assert "out of range" in str(rejected.error)
        assert rejected.error.reply_bytes and b'"NAK"' in rejected.error.reply_bytes
        assert isinstance(received, FrameReceived) and received.frame.seq == "0002"

    @pytest.mark.parametrize(
        ("now", "meant"),
        [
            # 01:30 on 3 Nov 2024 in New York happens twice: at 05:30 UTC (EDT), then at 06:30 UTC
            # (EST) after the clocks went back. A panel keeping local time sends 01:30 both times.
            (datetime(2024, 11, 3, 5, 30, 5, tzinfo=UTC), datetime(2024, 11, 3, 5, 30, tzinfo=UTC)),
            (datetime(2024, 11, 3, 6, 30, 5, tzinfo=UTC), datetime(2024, 11, 3, 6, 30, tzinfo=UTC)),
        ],
    )
    def test_local_time_in_the_hour_the_clocks_go_back(
        self, now: datetime, meant: datetime
    ) -> None:
        """Either reading of the repeated hour is taken when it lies in the window, and sent_at
        is that reading (the panel's frames were NAKed for the whole second hour)."""
        zone = ZoneInfo("America/New_York")
        conn = connection(accounts={"9413": AccountCrypto(key=KEY, local_time_zone=zone)})
        raw = encode_frame(
            token="NULL",
            seq="0001",
            account="9413",
            data="",
            timestamp=datetime(2024, 11, 3, 1, 30, tzinfo=UTC),  # local wall clock, as if UTC
            key=KEY,
        )
        [received] = conn.receive_data(raw, now=now)
        assert isinstance(received, FrameReceived)
        assert received.sent_at == meant
        # Two hours later neither reading is inside the window: NAK, as for any stale frame.
        [late] = conn.receive_data(raw, now=now + timedelta(hours=2))
        assert isinstance(late, FrameRejected) and late.error.reply is Reply.NAK

    def test_plain_timestamp_checked_when_configured(self) -> None:
        """Plain frames with an old timestamp are NAKed when check_plain_timestamps is on."""
        conn = connection(
            ReceiverConfig(check_plain_timestamps=True), accounts={"1409": AccountCrypto()}
        )
        raw = encode_frame(
            token="NULL", seq="0000", account="1409", data="", timestamp=NOW - timedelta(hours=1)
        )
        [event] = conn.receive_data(raw, now=NOW)
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.NAK

    def test_unsupported_token_gets_duh(self) -> None:
        """A CRC-valid frame with a token we do not process gets DUH."""
        conn = connection(accounts={"1234": AccountCrypto()})
        [event] = conn.receive_data(
            encode_frame(token="ACR-SF", seq="0001", account="1234", data="x"), now=NOW
        )
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.DUH

    def test_unparsable_payload_gets_duh(self) -> None:
        """Valid framing with an unparsable Contact ID block gets DUH."""
        conn = connection(accounts={"1234": AccountCrypto()})
        [event] = conn.receive_data(
            encode_frame(token="ADM-CID", seq="0001", account="1234", data="#1234|nonsense"),
            now=NOW,
        )
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.DUH
        assert (
            event.error.reply_bytes.startswith(b"\n")
            and b'"DUH"0001L0#1234[]' in event.error.reply_bytes
        )

    def test_oversized_frame_is_dropped_and_stream_recovers(self) -> None:
        """A frame over the size limit is rejected without buffering it all; the next frame works."""
        conn = connection(
            ReceiverConfig(max_frame_bytes=256, check_plain_timestamps=False),
            accounts={"1234": AccountCrypto()},
        )
        events = conn.receive_data(b"\n" + b"A" * 1000, now=NOW)
        events += conn.receive_data(b"B" * 1000 + b"\r", now=NOW)
        events += conn.receive_data(
            encode_frame(token="NULL", seq="0000", account="1234", data=""), now=NOW
        )
        assert [type(e).__name__ for e in events][-1] == "FrameReceived"
        assert any(isinstance(e, FrameRejected) for e in events)


class TestLargestFrame:
    def test_the_largest_legal_frame_is_accepted_over_tcp_and_udp(self) -> None:
        """A length field of 0xFFF makes a frame of 4,105 bytes, LF to CR: legal, and accepted
        whole and byte by byte (it was over the 4,096-byte limit and dropped without a reply)."""
        base = encode_frame(
            token="SIA-DCS",
            seq="0001",
            account="1234",
            data="#1234|NBA01",
            timestamp=NOW,
            xdata=(XData(id="V", value="x"),),
        )
        raw = encode_frame(
            token="SIA-DCS",
            seq="0001",
            account="1234",
            data="#1234|NBA01",
            timestamp=NOW,
            xdata=(XData(id="V", value="x" * (4105 - len(base) + 1)),),
        )
        assert len(raw) == 4105 and raw[5:9] == b"0FFF"
        accounts = {"1234": AccountCrypto()}
        for events in (
            feed_whole(connection(None, accounts), raw),
            feed_bytewise(connection(None, accounts), raw),
            connection(None, accounts).receive_datagram(raw, now=NOW),
        ):
            [received] = events
            assert isinstance(received, FrameReceived)
            assert received.frame.xdata[0].value == "x" * (4105 - len(base) + 1)
        # One byte more cannot carry a valid length: dropped as before, without a reply.
        [too_big] = feed_whole(connection(None, accounts), raw[:-1] + b"x\r")
        assert isinstance(too_big, FrameRejected) and too_big.error.reply is Reply.NONE


class TestReplies:
    def test_ack_echoes_header_without_none(self) -> None:
        """The ACK for the Pyronix NULL is exactly NiftyDC09's reply (core#180511)."""
        conn = connection(accounts={"1409": AccountCrypto()})
        [event] = conn.receive_data(
            b'\nEA740027"NULL"0000L0#1409[]_20:38:07,08-27-2026\r',
            now=datetime(2026, 8, 27, 20, 38, 10, tzinfo=UTC),
        )
        assert isinstance(event, FrameReceived)
        assert conn.ack(event.frame, now=NOW) == b'\n59890012"ACK"0000L0#1409[]\r'

    def test_ack_echoes_receiver_when_sent(self) -> None:
        """R is echoed only when the frame carried it."""
        conn = connection(accounts={"1234": AccountCrypto()})
        [event] = conn.receive_data(
            b'\nE5690029"ADM-CID"0003R1L1#1234[#1234|1130 01 001]\r', now=NOW
        )
        assert isinstance(event, FrameReceived)
        assert b'"ACK"0003R1L1#1234[]' in conn.ack(event.frame, now=NOW)

    def test_binary_crc_sender_gets_binary_crc_reply(self) -> None:
        """A binary-CRC sender is answered in its own style (§1.15)."""
        conn = connection(accounts={"1234": AccountCrypto()})
        raw = encode_frame(
            token="SIA-DCS",
            seq="0001",
            account="1234",
            data="#1234|NBA01",
            crc_style=CrcStyle.BINARY,
        )
        [event] = conn.receive_datagram(raw, now=NOW)
        assert isinstance(event, FrameReceived)
        ack = conn.ack(event.frame, now=NOW)
        assert decode_frame(ack).crc_style is CrcStyle.BINARY

    def test_bare_line_is_answered_with_l0(self) -> None:
        """A bare L is accepted but never emitted: the ACK says L0."""
        conn = connection(accounts={"7303658550": AccountCrypto()})
        [event] = conn.receive_data(
            b'\nBB86002C"NULL"0001L#7303658550[]_15:39:38,06-07-2019\r', now=NOW
        )
        assert isinstance(event, FrameReceived)
        assert b'"ACK"0001L0#7303658550[]' in conn.ack(event.frame, now=NOW)


def _with_crc(region: bytes, *, eldes: bool = False, binary: bool = False) -> bytes:
    """Frame ``region`` with a CRC and length, optionally in a vendor style."""
    counted = region + b"\r" if eldes else region
    crc = crc16_arc(counted)
    crc_field = crc.to_bytes(2, "big") if binary else f"{crc:04X}".encode()
    return b"\n" + crc_field + f"0{len(counted):03X}".encode() + region + b"\r"


def _hikvision_null() -> bytes:
    """An encrypted NULL whose plaintext has no '|' after the pad (Hikvision)."""
    plain = b"ppppppppppp]" + f"_{NOW:%H:%M:%S,%m-%d-%Y}".encode()
    return _with_crc(b'"*NULL"0000L0#1234[' + KEY.encrypt(plain).hex().upper().encode())


QUIRK_STREAMS: dict[str, tuple[bytes, dict[str, AccountCrypto]]] = {
    "binary_crc": (
        _with_crc(b'"SIA-DCS"0001L0#1234[#1234|NBA01]', binary=True),
        {"1234": AccountCrypto()},
    ),
    "binary_crc_with_cr_byte": (
        # Region chosen so the CRC's low byte is 0x0D: only the final CR may end the frame.
        next(
            f
            for n in range(10_000)
            if (f := _with_crc(f'"NULL"{n:04d}L0#1234[]'.encode(), binary=True))[2] == 0x0D
        ),
        {"1234": AccountCrypto()},
    ),
    "eldes_cr_in_crc_and_length": (
        _with_crc(b'"ADM-CID"0002L0#1234[#1234|1130 01 001]', eldes=True),
        {"1234": AccountCrypto()},
    ),
    "bare_l": (
        b'\n78FC003B"SIA-DCS"0001L#22334455[#22334455|NCQ1]_14:33:53,02-09-2020\r',
        {"22334455": AccountCrypto()},
    ),
    "no_l": (b'\nAEF00011"NULL"0002#1234[]\r', {"1234": AccountCrypto()}),
    "trailing_nuls": (
        b'\nD3440015"NULL"0000L0#008312[]\r\x00\x00\x00',
        {"008312": AccountCrypto()},
    ),
    "several_frames_one_read": (
        b'\nDABA003F"ADM-CID"0062L0#B12345[#B12345|1602 00 000]_17:23:51,09-18-2023\r'
        b'\n2DE1004C"ADM-CID"0056L0#123456[#123456|1406 01 000][RLivingRoom]_17:22:02,09-18-2023\r',
        {"B12345": AccountCrypto(), "123456": AccountCrypto()},
    ),
    "cp1252_xdata": (
        encode_frame(
            token="ADM-CID",
            seq="0004",
            account="1234",
            data="#1234|1130 01 001",
            xdata=[XData(id="L", value="Büro € Säule")],
        ),
        {"1234": AccountCrypto()},
    ),
    "hikvision_null_without_bar": (_hikvision_null(), {"1234": AccountCrypto(key=KEY)}),
    "alphavision_extra_field": (
        b'\n12FA0021"SIA-DCS"0014L0#0001[#0001|0|NRP]\r',
        {"0001": AccountCrypto()},
    ),
    "six_digit_line": (
        encode_frame(token="NULL", seq="0000", account="1234", data="", line="000000"),
        {"1234": AccountCrypto()},
    ),
}


def detail(events: list[ReceiverEvent]) -> list[tuple[object, ...]]:
    """Everything a caller sees in the events, for whole-vs-chunked comparison."""
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, FrameReceived):
            out.append((e.frame, e.events))
        else:
            out.append((e.error.reply, e.error.message, e.error.reply_bytes, e.header))
    return out


@pytest.mark.parametrize("name", sorted(QUIRK_STREAMS))
class TestQuirksThroughTheStream:
    def test_accepted_identically_however_fed(self, name: str) -> None:
        """Each vendor quirk is accepted, with identical events whole, byte by byte and with trailing bytes."""
        stream, accounts = QUIRK_STREAMS[name]
        results = [
            detail(feed(connection(ReceiverConfig(check_plain_timestamps=False), accounts), stream))
            for feed in FEEDERS
        ]
        assert results[0], "the stream produced events"
        assert all(len(r) == 2 for r in results[0]), results[0]  # all FrameReceived
        assert results[0] == results[1] == results[2]

    def test_ack_is_a_valid_standard_reply(self, name: str) -> None:
        """The ACK for each quirk frame decodes and echoes seq and account."""
        stream, accounts = QUIRK_STREAMS[name]
        conn = connection(ReceiverConfig(check_plain_timestamps=False), accounts)
        for event in conn.receive_data(stream, now=NOW):
            assert isinstance(event, FrameReceived)
            crypto = accounts[event.frame.account or ""]
            ack = decode_frame(conn.ack(event.frame, now=NOW), key=crypto.key)
            assert (ack.token, ack.seq, ack.account) == (
                "ACK",
                event.frame.seq,
                event.frame.account,
            )
            assert ack.encrypted is event.frame.encrypted
            assert ack.crc_style is event.frame.crc_style


class TestQuirkDetails:
    def test_cp1252_text_survives(self) -> None:
        """Windows-1252 x-data text is decoded as such after a CRC over the raw bytes."""
        stream, accounts = QUIRK_STREAMS["cp1252_xdata"]
        [event] = connection(None, accounts).receive_data(stream, now=NOW)
        assert isinstance(event, FrameReceived)
        assert event.frame.xdata == (XData(id="L", value="Büro € Säule"),)

    def test_hikvision_null_has_no_events(self) -> None:
        """The Hikvision *NULL decrypts to empty data and yields no events."""
        stream, accounts = QUIRK_STREAMS["hikvision_null_without_bar"]
        [event] = connection(None, accounts).receive_data(stream, now=NOW)
        assert isinstance(event, FrameReceived)
        assert (event.frame.data, event.events) == ("", ())

    def test_eldes_flag(self) -> None:
        """The Eldes frame is flagged crc_includes_cr."""
        stream, accounts = QUIRK_STREAMS["eldes_cr_in_crc_and_length"]
        [event] = connection(None, accounts).receive_data(stream, now=NOW)
        assert isinstance(event, FrameReceived) and event.frame.crc_includes_cr


GOOD = encode_frame(token="SIA-DCS", seq="0002", account="1234", data="#1234|NBA01")


@pytest.mark.parametrize("feed", FEEDERS, ids=lambda f: f.__name__)
class TestResync:
    def test_garbage_before_a_frame_is_reported_once(
        self, feed: Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]]
    ) -> None:
        """Bytes outside a frame give one silent rejection, then the frame is accepted."""
        events = feed(connection(None, {"1234": AccountCrypto()}), b"GET / HTTP/1.1" + GOOD)
        kinds = summary(events)
        assert [k[0:2] for k in kinds] == [("rejected", "none"), ("ok", "0002")]

    @pytest.mark.parametrize("noise", [b"\r\n", b"\n\r\n", b"\r\n\n", b"\n\x00\n", b"\x00\r"])
    def test_blank_line_noise_is_silent(
        self,
        feed: Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]],
        noise: bytes,
    ) -> None:
        """Stray CR/LF/NUL between frames produce no event and do not swallow the next frame."""
        events = feed(connection(None, {"1234": AccountCrypto()}), noise + GOOD + noise + GOOD)
        assert [k[0:2] for k in summary(events)] == [("ok", "0002"), ("ok", "0002")]

    def test_truncated_frame_resyncs_at_next_lf(
        self, feed: Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]]
    ) -> None:
        """A frame cut short by a new LF is rejected silently; the next frame is accepted."""
        events = feed(connection(None, {"1234": AccountCrypto()}), GOOD[:20] + GOOD)
        assert [k[0:2] for k in summary(events)] == [("rejected", "none"), ("ok", "0002")]

    def test_oversized_frame_is_reported_once(
        self, feed: Callable[[Dc09ReceiverConnection, bytes], list[ReceiverEvent]]
    ) -> None:
        """An oversized frame is one silent rejection whatever the chunking; the buffer stays bounded."""
        conn = connection(
            ReceiverConfig(max_frame_bytes=64, check_plain_timestamps=False),
            {"1234": AccountCrypto()},
        )
        events = feed(conn, b"\n" + b"A" * 300 + b"\r\x00junk" + GOOD)
        assert [k[0:2] for k in summary(events)] == [("rejected", "none"), ("ok", "0002")]
        assert conn._splitter.buffered <= 64


class TestMoreRules:
    def test_null_frame_has_no_events(self) -> None:
        """A NULL poll is accepted with events=()."""
        [event] = connection(None, {"1409": AccountCrypto()}).receive_data(
            b'\nEA740027"NULL"0000L0#1409[]_20:38:07,08-27-2026\r',
            now=datetime(2026, 8, 27, 20, 38, 7, tzinfo=UTC),
        )
        assert isinstance(event, FrameReceived) and event.events == ()

    def test_encrypted_frame_for_account_without_key(self) -> None:
        """An encrypted frame for an account with no key gets DUH."""
        raw = encode_frame(
            token="NULL", seq="0000", account="1234", data="", timestamp=NOW, key=KEY
        )
        [event] = connection(None, {"1234": AccountCrypto()}).receive_data(raw, now=NOW)
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.DUH
        assert (
            event.error.reply_bytes
            == b"\n" + encode_frame(token="DUH", seq="0000", account="1234", data="")[1:]
        )

    def test_wrong_key_is_a_clear_duh(self) -> None:
        """A frame encrypted with another key gets DUH saying the decrypt failed."""
        raw = encode_frame(
            token="NULL",
            seq="0000",
            account="1234",
            data="",
            timestamp=NOW,
            key=AesKey.from_ascii("1234567890123456"),
        )
        [event] = connection(None, {"1234": AccountCrypto(key=KEY)}).receive_data(raw, now=NOW)
        assert isinstance(event, FrameRejected) and event.error.reply is Reply.DUH
        assert "decrypt failed" in event.error.message
        assert "hex vs ascii" in event.error.message

    def test_duh_echo_exact_bytes(self) -> None:
        """DUH echoes seq, R, L and account and nothing else."""
        [event] = connection(None, {"1234": AccountCrypto()}).receive_data(
            encode_frame(token="ACR-SF", seq="0042", account="1234", data="x", receiver="12"),
            now=NOW,
        )
        assert isinstance(event, FrameRejected)
        region = b'"DUH"0042R12L0#1234[]'
        assert event.error.reply_bytes == _with_crc(region)

    def test_plain_frame_without_timestamp_passes_the_check(self) -> None:
        """With check_plain_timestamps on, a plain frame without timestamp is still accepted."""
        conn = connection(ReceiverConfig(check_plain_timestamps=True), {"1234": AccountCrypto()})
        assert isinstance(conn.receive_data(GOOD, now=NOW)[0], FrameReceived)

    @pytest.mark.parametrize(
        ("offset_s", "accepted"), [(-600, True), (-601, False), (5, True), (6, False)]
    )
    def test_per_account_window_edges(self, offset_s: int, accepted: bool) -> None:
        """A per-account window's edges are inclusive and replace the default."""
        crypto = AccountCrypto(key=KEY, window=TimestampWindow(past_s=600, future_s=5))
        raw = encode_frame(
            token="NULL",
            seq="0000",
            account="1234",
            data="",
            timestamp=NOW + timedelta(seconds=offset_s),
            key=KEY,
        )
        [event] = connection(None, {"1234": crypto}).receive_data(raw, now=NOW)
        assert isinstance(event, FrameReceived) is accepted

    def test_star_ack_carries_our_time_and_decrypts(self) -> None:
        """The *ACK decrypts with the account key, echoes the header and carries our timestamp."""
        conn = connection(None, {"1234": AccountCrypto(key=KEY)})
        raw = encode_frame(
            token="ADM-CID",
            seq="0077",
            account="1234",
            data="#1234|1130 01 001",
            receiver="5",
            timestamp=NOW,
            key=KEY,
        )
        [event] = conn.receive_data(raw, now=NOW)
        assert isinstance(event, FrameReceived)
        later = NOW + timedelta(seconds=1)
        ack_raw = conn.ack(event.frame, now=later)
        assert ack_raw.startswith(b"\n") and b'"*ACK"0077R5L0#1234[' in ack_raw
        ack = decode_frame(ack_raw, key=KEY)
        assert (ack.data, ack.timestamp) == ("", later)

    def test_datagram_without_lf_cr(self) -> None:
        """A UDP datagram without LF/CR is one frame."""
        [event] = connection(None, {"1234": AccountCrypto()}).receive_datagram(GOOD[1:-1], now=NOW)
        assert isinstance(event, FrameReceived) and event.frame.seq == "0002"

    @pytest.mark.parametrize("tail", [b"\n", b" ", b"\x00\r\n", b"\r\n  "])
    def test_datagram_with_blank_bytes_after_its_frame(self, tail: bytes) -> None:
        """A line end or spaces after the CR (as TCP ignores between frames) lose nothing."""
        [event] = connection(None, {"1234": AccountCrypto()}).receive_datagram(GOOD + tail, now=NOW)
        assert isinstance(event, FrameReceived) and event.frame.seq == "0002"

    @pytest.mark.parametrize("tail", [b"\r\n", b"\n", b" ", b"\r \r\n"])
    def test_datagram_without_lf_with_a_line_end_after_it(self, tail: bytes) -> None:
        """No LF: the frame (CR optional) is still read when a line end or spaces follow it."""
        conn = connection(None, {"1234": AccountCrypto()})
        for frame in (GOOD[1:-1], GOOD[1:]):
            [event] = conn.receive_datagram(frame + tail, now=NOW)
            assert isinstance(event, FrameReceived), event
            assert event.frame.seq == "0002"
            assert event.frame.raw in (GOOD[1:-1], GOOD[1:])  # the tail is not the frame's

    def test_two_frames_in_one_datagram_are_both_taken(self) -> None:
        second = encode_frame(token="SIA-DCS", seq="0003", account="1234", data="#1234|NBA02")
        for data in (GOOD + second, GOOD + b"\r\n" + second[:-1]):  # the last CR is optional
            events = connection(None, {"1234": AccountCrypto()}).receive_datagram(data, now=NOW)
            assert [
                (type(e).__name__, getattr(e, "frame", None) and e.frame.seq) for e in events
            ] == [
                ("FrameReceived", "0002"),
                ("FrameReceived", "0003"),
            ]

    @pytest.mark.parametrize("head", [b"\r", b" ", b"\x00\r", b" \r"])
    def test_blank_bytes_before_the_first_frame_lose_nothing(self, head: bytes) -> None:
        """A datagram starting with a CR or spaces before its first LF was read as one frame
        without LF: both frames in it met silence on every resend."""
        second = encode_frame(token="SIA-DCS", seq="0003", account="1234", data="#1234|NBA02")
        conn = connection(None, {"1234": AccountCrypto()})
        events = conn.receive_datagram(head + GOOD + second, now=NOW)
        assert [getattr(e, "frame", None) and e.frame.seq for e in events] == ["0002", "0003"]
        [one] = conn.receive_datagram(head + GOOD, now=NOW)
        assert isinstance(one, FrameReceived) and one.frame.seq == "0002"

    def test_frames_under_the_limit_are_taken_from_a_datagram_over_it(self) -> None:
        """The frame limit bounds each frame, not the datagram: two frames that together exceed
        it (or a frame of the largest legal size with a NUL after it) used to be dropped
        silently, every resend alike; a frame over the limit is still dropped alone."""
        photos = tuple(
            XData(id="V", value=f"https://cam.example/{i}/" + "x" * 230) for i in range(8)
        )
        frames = [
            encode_frame(token="SIA-DCS", seq=f"{n:04d}", account="1234", data=f"#1234|Nri1/BA0{n}", xdata=photos)
            for n in (1, 2)
        ]  # fmt: skip
        assert 2000 < len(frames[0]) < 4105
        config = ReceiverConfig(check_plain_timestamps=False, max_frame_bytes=len(frames[0]))
        conn = Dc09ReceiverConnection(config, Directory({"1234": AccountCrypto()}))
        for data in (frames[0] + frames[1], frames[0] + b"\r\n" + frames[1][:-1]):
            events = conn.receive_datagram(data, now=NOW)
            assert [getattr(getattr(e, "frame", None), "seq", None) for e in events] == [
                "0001",
                "0002",
            ], events
        [event] = conn.receive_datagram(frames[0] + b"\x00\r\n", now=NOW)
        assert isinstance(event, FrameReceived) and event.frame.seq == "0001"
        [event] = conn.receive_datagram(frames[0][1:] + b"\r\n", now=NOW)  # no LF
        assert isinstance(event, FrameReceived) and event.frame.seq == "0001"
        small = Dc09ReceiverConnection(
            ReceiverConfig(max_frame_bytes=len(frames[0]) - 3), Directory({"1234": AccountCrypto()})
        )
        for data in (frames[0], frames[0][1:-1], frames[0] + GOOD):
            events = small.receive_datagram(data, now=NOW)
            assert isinstance(events[0], FrameRejected) and events[0].error.reply_bytes == b""
            assert [getattr(e, "frame", None) and e.frame.seq for e in events[1:]] in ([], ["0002"])

    def test_binary_crc_datagram_with_a_line_end_after_it(self) -> None:
        """Bytes 1-2 of a binary-CRC frame may be CR or LF: the frame is still cut at its end."""
        for seq in range(1, 60):  # some of these CRCs hold a CR or LF byte
            raw = encode_frame(token="SIA-DCS", seq=f"{seq:04d}", account="1234", data="#1234|NBA01", crc_style=CrcStyle.BINARY)  # fmt: skip
            [event] = connection(None, {"1234": AccountCrypto()}).receive_datagram(
                raw + b"\r\n", now=NOW
            )
            assert isinstance(event, FrameReceived) and event.frame.seq == f"{seq:04d}"

    def test_oversized_datagram_is_silent(self) -> None:
        """A datagram over the frame limit is rejected with no reply."""
        [event] = connection(ReceiverConfig(max_frame_bytes=32)).receive_datagram(GOOD, now=NOW)
        assert isinstance(event, FrameRejected) and event.error.reply_bytes == b""
