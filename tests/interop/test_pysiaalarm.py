"""Frames we build are accepted by pysiaalarm, an independent DC-09 receiver implementation.

pysiaalarm is driven through its synchronous parser, ``SIAEvent.from_line`` (the text between LF
and CR plus its account table): no server is started. It checks the CRC (``valid_message``) and the
timestamp window (``valid_timestamp``), decrypts with the ASCII bytes of the key, and maps Contact ID
codes to SIA codes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pysiaalarm import SIAAccount
from pysiaalarm.event import SIAEvent

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import encode_frame
from protocols.signal import XData

# pysiaalarm uses the ASCII bytes of the key (PROTOCOLS.md §1.12), so interop keys are ASCII.
KEY_128 = "A1B2C3D4E5F60718"
KEY_256 = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
MAC = XData(id="M", value="0026B9E4268B")


def parse(raw: bytes, key: str | None, account: str = "1234") -> SIAEvent:
    """pysiaalarm's event for one frame (LF/CR stripped, as its servers do)."""
    assert raw[:1] == b"\n"
    assert raw[-1:] == b"\r"
    return SIAEvent.from_line(raw.decode("cp1252")[1:-1], {account: SIAAccount(account, key)})


def build(
    token: str, data: str, key_text: str | None, *, receiver: str | None, xdata: bool, seq: str
) -> bytes:
    return encode_frame(
        token=token,
        seq=seq,
        account="1234",
        data=data,
        receiver=receiver,
        xdata=[MAC] if xdata else (),
        timestamp=datetime.now(UTC),
        key=AesKey.from_ascii(key_text) if key_text else None,
    )


@pytest.mark.parametrize("key_text", [None, KEY_128, KEY_256], ids=["plain", "aes128", "aes256"])
@pytest.mark.parametrize("receiver", [None, "1"], ids=["no-R", "R1"])
@pytest.mark.parametrize("xdata", [False, True], ids=["no-xdata", "xdata-M"])
class TestOurFramesInPysiaalarm:
    """SIA-DCS and ADM-CID, plain/AES-128/AES-256, with and without R and x-data."""

    def test_sia_dcs(self, key_text: str | None, receiver: str | None, xdata: bool) -> None:
        """A SIA-DCS burglary alarm parses with valid CRC and time, and the right code, area, zone."""
        raw = build(
            "SIA-DCS", "#1234|Nri3/BA017", key_text, receiver=receiver, xdata=xdata, seq="0042"
        )
        event = parse(raw, key_text)
        assert event.valid_message  # pysiaalarm recomputed our CRC
        assert event.calc_crc == raw[1:5].decode()
        assert event.valid_timestamp
        assert event.encrypted is (key_text is not None)
        assert (event.account, event.sequence) == ("1234", "0042")
        assert event.receiver == (f"R{receiver}" if receiver else None)
        assert event.line == "L0"
        assert (event.code, event.ri, event.message) == ("BA", "3", "017")  # pysiaalarm: zone text
        assert event.x_data == ("M0026B9E4268B" if xdata else None)

    def test_adm_cid(self, key_text: str | None, receiver: str | None, xdata: bool) -> None:
        """An ADM-CID fire alarm parses with its qualifier, code, partition and zone (and SIA FA)."""
        raw = build(
            "ADM-CID", "#1234|1110 02 004", key_text, receiver=receiver, xdata=xdata, seq="0043"
        )
        event = parse(raw, key_text)
        assert event.valid_message
        assert event.valid_timestamp
        assert (event.account, event.sequence) == ("1234", "0043")
        assert event.receiver == (f"R{receiver}" if receiver else None)
        assert (event.event_qualifier, event.event_type) == ("1", "110")
        assert (event.partition, event.ri) == ("02", "004")
        assert event.code == "FA"
        assert event.x_data == ("M0026B9E4268B" if xdata else None)


class TestMore:
    """Other frames and keys pysiaalarm must accept from us."""

    @pytest.mark.parametrize("key_text", [None, KEY_128], ids=["plain", "aes128"])
    def test_null_poll(self, key_text: str | None) -> None:
        """Our NULL (and *NULL) link test is valid for pysiaalarm (it reports it as RP)."""
        raw = encode_frame(
            token="NULL", seq="0000", account="1234", data="", timestamp=datetime.now(UTC),
            key=AesKey.from_ascii(key_text) if key_text else None,
        )  # fmt: skip
        event = parse(raw, key_text)
        assert event.valid_message
        assert event.valid_timestamp
        assert event.code == "RP"

    def test_aes_192(self) -> None:
        """A 24-character ASCII key (AES-192) interoperates too."""
        key_text = "A1B2C3D4E5F60718293A4B5C"
        raw = build("SIA-DCS", "#1234|Nri1/CL501", key_text, receiver=None, xdata=False, seq="0007")
        event = parse(raw, key_text)
        assert (event.valid_message, event.code, event.ri, event.message) == (
            True,
            "CL",
            "1",
            "501",
        )

    def test_alphanumeric_account(self) -> None:
        """A hex-letter account (Dahua style B12345) is carried through."""
        raw = encode_frame(
            token="ADM-CID", seq="0062", account="B12345", data="#B12345|1602 00 000",
            timestamp=datetime.now(UTC),
        )  # fmt: skip
        event = parse(raw, None, account="B12345")
        assert (event.valid_message, event.account, event.code) == (True, "B12345", "RP")

    def test_stale_timestamp_is_refused(self) -> None:
        """A frame stamped 2 minutes ago is outside pysiaalarm's window: our timestamps are real UTC."""
        raw = encode_frame(
            token="SIA-DCS", seq="0009", account="1234", data="#1234|Nri1/BA01",
            timestamp=datetime.now(UTC) - timedelta(minutes=2), key=AesKey.from_ascii(KEY_128),
        )  # fmt: skip
        event = parse(raw, KEY_128)
        assert event.valid_message
        assert not event.valid_timestamp
