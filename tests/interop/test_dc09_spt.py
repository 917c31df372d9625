"""dc09-spt (an independent DC-09 transmitter) against our receiver, both ways.

dc09-spt is driven through its message builder and answer parser (``dc09_msg.dc09block`` /
``dc09answer``), the code its socket paths call; no sockets are opened. Its keys are raw bytes,
which an account stores as hex (``AesKey.from_hex``).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from my_dc09_spt.msg.dc03_msg import dc03_msg
from my_dc09_spt.msg.dc05_msg import dc05_msg
from my_dc09_spt.msg.dc09_msg import dc09_msg

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import decode_frame
from protocols.dc09_payload import parse_payload
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    FrameRejected,
    ReceiverConfig,
)
from protocols.errors import Reply

KEY_128 = bytes(range(16))
KEY_256 = bytes(range(32))


class Directory:
    """Account 1234 only, with the key as the account settings would hold it (hex text)."""

    def __init__(self, key: bytes | None) -> None:
        self.key = AesKey.from_hex(key.hex()) if key else None

    def lookup(self, account: str) -> AccountCrypto | None:
        return AccountCrypto(key=self.key) if account == "1234" else None


def receiver(key: bytes | None) -> Dc09ReceiverConnection:
    return Dc09ReceiverConnection(ReceiverConfig(), Directory(key))


def now() -> datetime:
    return datetime.now(UTC)


@pytest.mark.parametrize("key", [None, KEY_128, KEY_256], ids=["plain", "aes128", "aes256"])
class TestTheirFramesInOurReceiver:
    """dc09-spt builds, we receive: plain, AES-128 and AES-256."""

    def test_sia_dcs(self, key: bytes | None) -> None:
        """dc09-spt's SIA-DCS block is accepted with the right event."""
        spt = dc09_msg("1234", key=key, receiver=2, line=3)
        block = spt.dc09block(
            5, "SIA-DCS", dc03_msg.dc03event("1234", {"code": "BA", "zone": 12, "area": 2})
        )
        [event] = receiver(key).receive_data(block.encode(), now=now())
        assert isinstance(event, FrameReceived), event
        assert (event.frame.seq, event.frame.receiver, event.frame.line) == ("0005", "2", "3")
        codes = [(e.code, e.zone) for e in event.events]
        assert ("BA", 12) in codes

    def test_sia_dcs_with_names(self, key: bytes | None) -> None:
        """dc09-spt's area, user and zone names (``ri2^Ground^id5^John^BA12^Kitchen^``) are read."""
        spt = dc09_msg("1234", key=key)
        params = {"code": "BA", "zone": 12, "area": 2, "user": 5}
        names = {"areaname": "Ground", "username": "John", "zonename": "Kitchen"}
        block = spt.dc09block(5, "SIA-DCS", dc03_msg.dc03event("1234", params | names))
        [event] = receiver(key).receive_data(block.encode(), now=now())
        assert isinstance(event, FrameReceived), event
        assert [(e.code, e.zone, e.partition, e.user, e.text) for e in event.events] == [
            ("BA", 12, 2, 5, "Kitchen")
        ]

    def test_adm_cid(self, key: bytes | None) -> None:
        """dc09-spt's ADM-CID block is accepted with the right event."""
        spt = dc09_msg("1234", key=key)
        block = spt.dc09block(
            6, "ADM-CID", dc05_msg.dc05event("1234", {"code": 130, "q": 1, "zone": 7, "area": 1})
        )
        [event] = receiver(key).receive_data(block.encode(), now=now())
        assert isinstance(event, FrameReceived), event
        assert [(e.code, e.qualifier, e.zone, e.partition) for e in event.events] == [
            ("130", "1", 7, 1)
        ]

    def test_xdata(self, key: bytes | None) -> None:
        """dc09-spt's x-data blocks (position, MAC, verification URL) are read in order."""
        spt = dc09_msg("1234", key=key, line=0)
        extra = dc09_msg.dc09_extra(
            {"lon": "52.21", "lat": "5.9699", "mac": "0026B9E4268B", "verification": "http://cam/1"}
        )
        msg = dc03_msg.dc03event("1234", {"code": "PA", "zone": 3}) + extra
        [event] = receiver(key).receive_data(spt.dc09block(10, "SIA-DCS", msg).encode(), now=now())
        assert isinstance(event, FrameReceived), event
        assert [(x.id, x.value) for x in event.frame.xdata] == [
            ("X", "52.21"), ("Y", "5.9699"), ("M", "0026B9E4268B"), ("V", "http://cam/1"),
        ]  # fmt: skip
        assert [(e.code, e.zone, e.classification.category.value) for e in event.events] == [
            ("PA", 3, "panics")
        ]

    def test_udp_datagram(self, key: bytes | None) -> None:
        """A dc09-spt block sent as one UDP datagram is accepted the same way (a burglary restore)."""
        spt = dc09_msg("1234", key=key)
        block = spt.dc09block(
            11, "ADM-CID", dc05_msg.dc05event("1234", {"code": 130, "q": 3, "zone": 5})
        )
        [event] = receiver(key).receive_datagram(block.encode(), now=now())
        assert isinstance(event, FrameReceived), event
        [cid] = event.events
        assert (cid.code, cid.qualifier, cid.classification.restore) == ("130", "3", True)

    def test_decode_frame(self, key: bytes | None) -> None:
        """decode_frame + parse_payload read dc09-spt's block without the receiver around them."""
        spt = dc09_msg("1234", key=key, receiver=0xABC, line=1)
        block = spt.dc09block(12, "SIA-DCS", dc03_msg.dc03event("1234", {"code": "FA", "zone": 2}))
        frame = decode_frame(block.encode(), key=AesKey(key) if key else None)
        assert (frame.encrypted, frame.seq, frame.receiver, frame.line) == (
            key is not None,
            "0012",
            "ABC",
            "1",
        )
        if key is not None:
            assert frame.timestamp is not None
            assert abs((frame.timestamp - now()).total_seconds()) < 5
        [event] = parse_payload(frame.token, frame.data)
        assert (event.code, event.zone, event.classification.fire) == ("FA", 2, True)

    def test_poll(self, key: bytes | None) -> None:
        """dc09-spt's NULL poll is accepted as a link test."""
        spt = dc09_msg("1234", key=key)
        [event] = receiver(key).receive_data(spt.dc09poll().encode(), now=now())
        assert isinstance(event, FrameReceived), event
        assert event.events == ()


@pytest.mark.parametrize("key", [None, KEY_128, KEY_256], ids=["plain", "aes128", "aes256"])
class TestOurRepliesInTheirParser:
    """We reply, dc09-spt's answer parser classifies (length, CRC, seq, *ACK decrypt)."""

    def test_ack(self, key: bytes | None) -> None:
        """Our ACK (or *ACK) satisfies dc09-spt's answer parser for the message it sent."""
        spt = dc09_msg("1234", key=key)
        block = spt.dc09block(
            7, "ADM-CID", dc05_msg.dc05event("1234", {"code": 130, "q": 1, "zone": 7})
        )
        conn = receiver(key)
        [event] = conn.receive_data(block.encode(), now=now())
        assert isinstance(event, FrameReceived)
        answer, offset = spt.dc09answer(7, conn.ack(event.frame, now=now()).decode())
        assert answer == "ACK"
        if key is not None:
            assert offset is not None
            assert abs(offset) < 5

    def test_duh(self, key: bytes | None) -> None:
        """Our DUH for an unparsable block is read as DUH."""
        spt = dc09_msg("1234", key=key)
        block = spt.dc09block(8, "ADM-CID", "#1234|garbage]")
        [event] = receiver(key).receive_data(block.encode(), now=now())
        assert isinstance(event, FrameRejected)
        assert event.error.reply is Reply.DUH
        answer, _ = spt.dc09answer(8, event.error.reply_bytes.decode())
        assert answer == "DUH"


class TestNak:
    """The NAK carries our clock."""

    def test_nak_gives_them_our_clock(self) -> None:
        """A NAK for a stale encrypted frame is read as NAK and yields the clock offset."""
        spt = dc09_msg("1234", key=KEY_128, offset=-3600)  # their clock is an hour behind
        block = spt.dc09block(9, "SIA-DCS", dc03_msg.dc03event("1234", {"code": "BA", "zone": 1}))
        [event] = receiver(KEY_128).receive_data(block.encode(), now=now())
        assert isinstance(event, FrameRejected)
        assert event.error.reply is Reply.NAK
        answer, offset = spt.dc09answer(9, event.error.reply_bytes.decode())
        assert answer == "NAK"
        assert offset is not None
        assert abs(offset) < 5  # the offset they compute is from their clock to our UTC time
