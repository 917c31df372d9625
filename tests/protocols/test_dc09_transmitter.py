"""The sans-I/O DC-09 transmitter: sequence numbers, reply matching and NAK clock correction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import decode_frame, encode_frame
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    FrameRejected,
    ReceiverConfig,
)
from protocols.dc09_transmitter import (
    Acked,
    Dc09Transmitter,
    Duhed,
    Mismatch,
    Naked,
    OutgoingFrame,
    ReplyEvent,
    ReplyReceived,
    ReplyRejected,
    RspReceived,
)
from protocols.errors import Reply
from protocols.signal import XData

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
KEY = AesKey.from_hex("000102030405060708090A0B0C0D0E0F")


class Directory:
    def __init__(self, accounts: dict[str, AccountCrypto]) -> None:
        self.accounts = accounts

    def lookup(self, account: str) -> AccountCrypto | None:
        return self.accounts.get(account)


def only_frame(events: list[ReplyEvent]) -> ReplyReceived:
    [event] = events
    assert isinstance(event, ReplyReceived), event
    return event


class TestSequence:
    def test_starts_at_0001_and_increments(self) -> None:
        """Sequence numbers start at 0001 and count up."""
        tx = Dc09Transmitter(receiver=None, line="0")
        assert [tx.next_seq() for _ in range(3)] == ["0001", "0002", "0003"]

    def test_wraps_9999_to_0001(self) -> None:
        """After 9999 comes 0001, never 0000 (2007 test plan)."""
        tx = Dc09Transmitter(receiver=None, line="0")
        seqs = [tx.next_seq() for _ in range(10_001)]
        assert seqs[9997:10_001] == ["9998", "9999", "0001", "0002"]
        assert "0000" not in seqs

    def test_build_uses_next_seq_and_retransmission_reuses(self) -> None:
        """build takes the next seq; a retransmission built with seq= keeps it."""
        tx = Dc09Transmitter(receiver=None, line="0")
        first = tx.build(token="SIA-DCS", account="1234", data="#1234|NBA01", now=NOW)
        again = tx.build(
            token="SIA-DCS", account="1234", data="#1234|NBA01", seq=first.seq, now=NOW
        )
        assert first.seq == again.seq == "0001"
        assert tx.next_seq() == "0002"


class TestBuild:
    def test_plain_frame_fields(self) -> None:
        """A plain frame carries R, L, account, data and always a timestamp."""
        tx = Dc09Transmitter(receiver="12", line="3")
        out = tx.build(token="ADM-CID", account="1234", data="#1234|1130 01 001", now=NOW)
        frame = decode_frame(out.bytes)
        assert (frame.token, frame.receiver, frame.line, frame.account, frame.seq) == (
            "ADM-CID",
            "12",
            "3",
            "1234",
            out.seq,
        )
        assert frame.timestamp == NOW == out.timestamp
        assert not frame.encrypted and not out.encrypted

    def test_encrypted_frame(self) -> None:
        """With a key the frame is encrypted and decrypts with it."""
        tx = Dc09Transmitter(receiver=None, line="0", key=KEY)
        out = tx.build_null(account="1234", now=NOW)
        frame = decode_frame(out.bytes, key=KEY)
        assert (frame.token, frame.encrypted, frame.data, frame.timestamp) == (
            "NULL",
            True,
            "",
            NOW,
        )

    def test_naive_now_is_refused(self) -> None:
        """A naive datetime cannot be written as a UTC timestamp."""
        with pytest.raises(ValueError, match="aware"):
            Dc09Transmitter(receiver=None, line="0").build_null(
                account="1234", now=NOW.replace(tzinfo=None)
            )

    def test_no_none_for_absent_fields(self) -> None:
        """Absent R and L are omitted, never written as None."""
        out = Dc09Transmitter(receiver=None, line=None).build_null(account="1234", now=NOW)
        assert b"None" not in out.bytes
        assert b'"NULL"0001#1234[]' in out.bytes


def sent_frame(tx: Dc09Transmitter) -> OutgoingFrame:
    return tx.build(token="SIA-DCS", account="1234", data="#1234|Nri1/BA01", now=NOW)


class TestMatch:
    def test_plain_ack(self) -> None:
        """An ACK echoing seq and account is Acked."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        reply = encode_frame(token="ACK", seq=sent.seq, account="1234", data="")
        frame = only_frame(tx.receive_data(reply)).frame
        assert isinstance(tx.match(frame, sent, now=NOW), Acked)

    def test_star_ack_vector_is_decrypted(self) -> None:
        """The published *ACK (G3) decrypts with the key and acknowledges seq 0001 of #1234."""
        tx = Dc09Transmitter(receiver=None, line="0", key=KEY)
        sent = sent_frame(tx)
        reply = b'\nE5670052"*ACK"0001L0#1234[799640F7C17762A5018A56E2DB1A4C39A27AB1EDA88769758B17009D1A45F4EC\r'
        frame = only_frame(tx.receive_data(reply)).frame
        assert frame.encrypted and frame.timestamp == datetime(2024, 1, 1, 12, 0, 5, tzinfo=UTC)
        assert isinstance(tx.match(frame, sent, now=NOW), Acked)

    def test_star_ack_with_wrong_key_is_rejected(self) -> None:
        """A *ACK that does not decrypt with our key is a rejected reply, not an ACK."""
        tx = Dc09Transmitter(receiver=None, line="0", key=AesKey.from_ascii("1234567890123456"))
        reply = b'\nE5670052"*ACK"0001L0#1234[799640F7C17762A5018A56E2DB1A4C39A27AB1EDA88769758B17009D1A45F4EC\r'
        [event] = tx.receive_data(reply)
        assert isinstance(event, ReplyRejected) and "decrypt failed" in event.error.message

    def test_plain_ack_to_encrypted_frame_is_a_mismatch(self) -> None:
        """An encrypted frame answered by a plain ACK is not acknowledged."""
        tx = Dc09Transmitter(receiver=None, line="0", key=KEY)
        sent = sent_frame(tx)
        frame = decode_frame(encode_frame(token="ACK", seq=sent.seq, account="1234", data=""))
        outcome = tx.match(frame, sent, now=NOW)
        assert isinstance(outcome, Mismatch) and "plain ACK" in outcome.reason

    def test_plain_rsp_to_encrypted_frame_is_a_mismatch(self) -> None:
        """A plain RSP with the right seq and account is no proof either: it used to count as
        delivered. The encrypted one (*RSP, our key) is taken."""
        tx = Dc09Transmitter(receiver=None, line="0", key=KEY)
        sent = sent_frame(tx)
        plain = decode_frame(encode_frame(token="RSP", seq=sent.seq, account="1234", data=""))
        outcome = tx.match(plain, sent, now=NOW)
        assert isinstance(outcome, Mismatch) and "plain RSP" in outcome.reason
        star = decode_frame(
            encode_frame(
                token="RSP", seq=sent.seq, account="1234", data="", key=KEY, timestamp=NOW
            ),
            key=KEY,
        )
        assert star.encrypted
        assert isinstance(tx.match(star, sent, now=NOW), RspReceived)

    def test_wrong_seq_is_a_mismatch(self) -> None:
        """An ACK for another sequence number is reported as a mismatch."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        frame = decode_frame(encode_frame(token="ACK", seq="0099", account="1234", data=""))
        outcome = tx.match(frame, sent, now=NOW)
        assert isinstance(outcome, Mismatch) and "seq" in outcome.reason

    def test_wrong_account_is_a_mismatch(self) -> None:
        """An ACK for another account is reported as a mismatch."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        frame = decode_frame(encode_frame(token="ACK", seq=sent.seq, account="4321", data=""))
        outcome = tx.match(frame, sent, now=NOW)
        assert isinstance(outcome, Mismatch) and "account" in outcome.reason

    def test_duh_and_rsp(self) -> None:
        """DUH and RSP echoing the seq are reported as such."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        duh = decode_frame(encode_frame(token="DUH", seq=sent.seq, account="1234", data=""))
        rsp = decode_frame(encode_frame(token="RSP", seq=sent.seq, account="1234", data="x"))
        assert isinstance(tx.match(duh, sent, now=NOW), Duhed)
        assert isinstance(tx.match(rsp, sent, now=NOW), RspReceived)

    def test_unexpected_token_is_a_mismatch(self) -> None:
        """A frame that is no reply (e.g. an event frame) is a mismatch."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        frame = decode_frame(encode_frame(token="NULL", seq=sent.seq, account="1234", data=""))
        assert isinstance(tx.match(frame, sent, now=NOW), Mismatch)


class TestNak:
    def test_nak_offset_is_adopted(self) -> None:
        """A NAK's time sets the clock offset and later frames carry the corrected time."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        nak = b'\nE4410025"NAK"0000R0L0A0[]_16:20:01,09-24-2025\r'
        arrived = datetime(2025, 9, 24, 16, 0, 1, tzinfo=UTC)
        outcome = tx.match(only_frame(tx.receive_data(nak)).frame, sent, now=arrived)
        assert isinstance(outcome, Naked)
        assert outcome.receiver_time == datetime(2025, 9, 24, 16, 20, 1, tzinfo=UTC)
        assert outcome.offset == timedelta(minutes=20) == tx.clock_offset
        again = tx.build(
            token="SIA-DCS", account="1234", data="#1234|Nri1/BA01", seq=sent.seq, now=arrived
        )
        assert again.seq == sent.seq
        assert decode_frame(again.bytes).timestamp == datetime(2025, 9, 24, 16, 20, 1, tzinfo=UTC)

    def test_pysiaalarms_nak_with_l_before_r_is_a_nak(self) -> None:
        """pysiaalarm's NAKEvent writes ``"NAK"0000L0R0A0[]ts`` (PROTOCOLS.md §1.10): read as a
        NAK and its time adopted. (It was an unparsable reply: the attempt failed, the clock was
        never corrected, and every retry to that receiver failed the same way.)"""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        body = b'"NAK"0000L0R0A0[]_16:20:01,09-24-2025'
        nak = b"\n" + f"{crc16_arc(body):04X}0{len(body):03X}".encode() + body + b"\r"
        arrived = datetime(2025, 9, 24, 16, 0, 1, tzinfo=UTC)
        outcome = tx.match(only_frame(tx.receive_data(nak)).frame, sent, now=arrived)
        assert isinstance(outcome, Naked)
        assert outcome.offset == timedelta(minutes=20) == tx.clock_offset

    @pytest.mark.parametrize(
        ("receiver_time", "adopted"),
        [
            (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), False),  # would overflow later frames
            (NOW - timedelta(days=4000), False),
            (NOW + timedelta(days=400), True),  # a clock a year off is still a clock
        ],
    )
    def test_a_nak_years_off_is_not_adopted(self, receiver_time: datetime, adopted: bool) -> None:
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = sent_frame(tx)
        nak = encode_frame(
            token="NAK", seq="0000", receiver="0", account="0", data="", timestamp=receiver_time
        )
        outcome = tx.match(only_frame(tx.receive_data(nak)).frame, sent, now=NOW)
        if adopted:
            assert isinstance(outcome, Naked) and tx.clock_offset == receiver_time - NOW
        else:
            assert isinstance(outcome, Mismatch) and "not adopted" in outcome.reason
            assert tx.clock_offset == timedelta(0)
            tx.build(token="NULL", account="1234", data="", now=NOW)  # still builds frames

    def test_nak_resync_against_our_receiver(self) -> None:
        """A transmitter 2 h behind is NAKed by our receiver, adopts its time and is then accepted."""
        receiver_now = NOW
        local_now = NOW - timedelta(hours=2)
        tx = Dc09Transmitter(receiver=None, line="0", key=KEY)
        rx = Dc09ReceiverConnection(ReceiverConfig(), Directory({"1234": AccountCrypto(key=KEY)}))
        sent = tx.build(token="ADM-CID", account="1234", data="#1234|1130 01 001", now=local_now)
        [rejected] = rx.receive_data(sent.bytes, now=receiver_now)
        assert isinstance(rejected, FrameRejected) and rejected.error.reply is Reply.NAK
        nak = only_frame(tx.receive_data(rejected.error.reply_bytes)).frame
        assert isinstance(tx.match(nak, sent, now=local_now), Naked)
        resent = tx.build(
            token="ADM-CID", account="1234", data="#1234|1130 01 001", seq=sent.seq, now=local_now
        )
        [accepted] = rx.receive_data(resent.bytes, now=receiver_now)
        assert isinstance(accepted, FrameReceived)
        ack = only_frame(tx.receive_data(rx.ack(accepted.frame, now=receiver_now))).frame
        assert isinstance(tx.match(ack, resent, now=local_now), Acked)


class TestReplyStream:
    @pytest.mark.parametrize("chunk", [1, 3, 1000])
    def test_several_replies_however_split(self, chunk: int) -> None:
        """Replies split across reads or several per read come out whole and in order."""
        stream = b"".join(
            encode_frame(token="ACK", seq=f"{n:04d}", account="1234", data="") for n in (1, 2, 3)
        )
        tx = Dc09Transmitter(receiver=None, line="0")
        events: list[ReplyEvent] = []
        for i in range(0, len(stream), chunk):
            events += tx.receive_data(stream[i : i + chunk])
        seqs = [e.frame.seq for e in events if isinstance(e, ReplyReceived)]
        assert seqs == ["0001", "0002", "0003"]

    def test_bad_crc_reply_is_rejected(self) -> None:
        """A reply with a wrong CRC is a ReplyRejected."""
        reply = b"\n0000" + encode_frame(token="ACK", seq="0001", account="1234", data="")[5:]
        [event] = Dc09Transmitter(receiver=None, line="0").receive_data(reply)
        assert isinstance(event, ReplyRejected) and event.error.reply is Reply.NONE

    def test_datagram_reply(self) -> None:
        """A UDP reply without LF/CR decodes."""
        reply = encode_frame(token="ACK", seq="0001", account="1234", data="")[1:-1]
        event = only_frame(Dc09Transmitter(receiver=None, line="0").receive_datagram(reply))
        assert event.frame.token == "ACK"


_TOKENS = st.sampled_from(["SIA-DCS", "ADM-CID", "NULL", "X-1"])
_ACCOUNTS = st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=16)
_DATA = st.text(alphabet=st.characters(codec="cp1252", exclude_characters="[]"), max_size=64)
_HEX_FIELD = st.none() | st.text(alphabet="0123456789ABCDEF", max_size=6)
_SEQS = st.integers(1, 9999).map(lambda n: f"{n:04d}")
_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)


class TestBuildCache:
    """The second frame of a (token, account) is built from its remembered header."""

    @settings(max_examples=300, deadline=None)
    @given(
        receiver=_HEX_FIELD,
        line=_HEX_FIELD,
        frames=st.lists(st.tuples(_TOKENS, _ACCOUNTS, _DATA, _SEQS, _TIMES), max_size=6),
        repeat=st.integers(0, 5),
    )
    def test_same_bytes_as_encode_frame(
        self,
        receiver: str | None,
        line: str | None,
        frames: list[tuple[str, str, str, str, datetime]],
        repeat: int,
    ) -> None:
        """Plain frames built after the first of their (token, account) are encode_frame's bytes."""
        tx = Dc09Transmitter(receiver=receiver, line=line)
        for token, account, data, seq, now in frames + frames[:repeat]:
            out = tx.build(token=token, account=account, data=data, seq=seq, now=now)
            expected = encode_frame(
                token=token,
                seq=seq,
                account=account,
                data=data,
                receiver=receiver,
                line=line,
                timestamp=now.replace(microsecond=0),
            )
            assert out.bytes == expected

    @settings(max_examples=200, deadline=None)
    @given(
        frames=st.lists(st.tuples(_TOKENS, _ACCOUNTS, _DATA, _SEQS, _TIMES), max_size=6),
    )
    def test_encrypted_frames_decode_the_same(
        self, frames: list[tuple[str, str, str, str, datetime]]
    ) -> None:
        """Encrypted frames (random pad) decrypt to what encode_frame's frames decrypt to."""
        tx = Dc09Transmitter(receiver="1", line="0", key=KEY)
        for token, account, data, seq, now in frames + frames:
            out = tx.build(token=token, account=account, data=data, seq=seq, now=now)
            expected = encode_frame(
                token=token,
                seq=seq,
                account=account,
                data=data,
                receiver="1",
                line="0",
                timestamp=now.replace(microsecond=0),
                key=KEY,
            )
            got, want = decode_frame(out.bytes, key=KEY), decode_frame(expected, key=KEY)
            assert msgspec.structs.replace(got, raw=b"") == msgspec.structs.replace(want, raw=b"")
            assert len(out.bytes) == len(expected)

    def test_bad_arguments_still_refused_once_cached(self) -> None:
        """A cached (token, account) still refuses bad data and a bad seq."""
        tx = Dc09Transmitter(receiver=None, line="0")
        tx.build(token="SIA-DCS", account="1234", data="#1234|NBA01", now=NOW)
        with pytest.raises(ValueError, match=r"\["):
            tx.build(token="SIA-DCS", account="1234", data="#1234|N[BA01", now=NOW)
        with pytest.raises(ValueError, match="seq"):
            tx.build(token="SIA-DCS", account="1234", data="#1234|NBA01", seq="12a4", now=NOW)
        with pytest.raises(ValueError, match="0xFFF"):
            tx.build(token="SIA-DCS", account="1234", data="x" * 4096, now=NOW)
        with pytest.raises(ValueError, match="account"):
            tx.build(token="SIA-DCS", account="12_4", data="#1234|NBA01", now=NOW)

    def test_xdata_takes_the_general_encoder(self) -> None:
        """Frames with x-data are encode_frame's bytes too."""
        tx = Dc09Transmitter(receiver=None, line="0")
        tx.build(token="SIA-DCS", account="1234", data="#1234|NBA01", now=NOW)
        xdata = (XData(id="V", value="1.2"),)
        out = tx.build(
            token="SIA-DCS", account="1234", data="#1234|NBA01", xdata=xdata, seq="0007", now=NOW
        )
        assert out.bytes == encode_frame(
            token="SIA-DCS",
            seq="0007",
            account="1234",
            data="#1234|NBA01",
            line="0",
            xdata=xdata,
            timestamp=NOW,
        )


class TestKnownAck:
    """The plain ACK of the frame sent is recognised by its bytes, as decode_frame reads it."""

    @settings(max_examples=200, deadline=None)
    @given(receiver=_HEX_FIELD, line=_HEX_FIELD, account=_ACCOUNTS, seq=_SEQS)
    def test_recognised_ack_is_the_decoded_frame(
        self, receiver: str | None, line: str | None, account: str, seq: str
    ) -> None:
        """The event for our standard ACK equals the one decoding gives, and is Acked."""
        tx = Dc09Transmitter(receiver=receiver, line=line)
        sent = tx.build(token="ADM-CID", account=account, data="", seq=seq, now=NOW)
        ack = encode_frame(
            token="ACK", seq=seq, account=account, data="", receiver=receiver, line=line
        )
        [event] = tx.receive_data(ack, sent=sent)
        assert isinstance(event, ReplyReceived)
        assert event.frame == decode_frame(ack)
        assert isinstance(tx.match(event.frame, sent, now=NOW), Acked)

    @pytest.mark.parametrize(
        "reply",
        [
            encode_frame(token="ACK", seq="0001", account="1234", data="", line="0", timestamp=NOW),
            encode_frame(token="ACK", seq="0001", account="1234", data="", line="5"),
            encode_frame(token="ACK", seq="0002", account="1234", data="", line="0"),
            encode_frame(token="DUH", seq="0001", account="1234", data="", line="0"),
        ],
        ids=["with-timestamp", "other-line", "other-seq", "duh"],
    )
    def test_other_replies_are_decoded(self, reply: bytes) -> None:
        """Any other reply goes through the decoder, with the same result as without ``sent``."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = tx.build(token="SIA-DCS", account="1234", data="#1234|NBA01", seq="0001", now=NOW)
        [event] = tx.receive_data(reply, sent=sent)
        assert event == only_frame(Dc09Transmitter(receiver=None, line="0").receive_data(reply))

    def test_encrypted_frame_needs_a_star_ack(self) -> None:
        """For an encrypted frame a plain ACK is decoded (and matched as a mismatch), never taken."""
        tx = Dc09Transmitter(receiver=None, line="0", key=KEY)
        sent = tx.build(token="SIA-DCS", account="1234", data="#1234|NBA01", seq="0001", now=NOW)
        ack = encode_frame(token="ACK", seq="0001", account="1234", data="", line="0")
        frame = only_frame(tx.receive_data(ack, sent=sent)).frame
        assert isinstance(tx.match(frame, sent, now=NOW), Mismatch)

    def test_split_ack_is_decoded_whole(self) -> None:
        """An ACK cut over two reads is one event."""
        tx = Dc09Transmitter(receiver=None, line="0")
        sent = tx.build(token="SIA-DCS", account="1234", data="#1234|NBA01", seq="0001", now=NOW)
        ack = encode_frame(token="ACK", seq="0001", account="1234", data="", line="0")
        assert tx.receive_data(ack[:7], sent=sent) == []
        [event] = tx.receive_data(ack[7:], sent=sent)
        assert isinstance(event, ReplyReceived) and event.frame == decode_frame(ack)


class TestResetStream:
    def test_partial_reply_is_forgotten(self) -> None:
        """After reset_stream a half reply from the old connection does not spoil the next one."""
        tx = Dc09Transmitter(receiver=None, line="0")
        ack = encode_frame(token="ACK", seq="0001", account="1234", data="", line="0")
        assert tx.receive_data(ack[:10]) == []
        tx.reset_stream()
        [event] = tx.receive_data(ack)
        assert isinstance(event, ReplyReceived)
