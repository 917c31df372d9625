"""Frames we build are accepted by pysiaalarm, an independent DC-09 receiver implementation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pysiaalarm import SIAAccount
from pysiaalarm.event import SIAEvent

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import encode_frame
from protocols.signal import XData

# pysiaalarm uses the ASCII bytes of the key (PROTOCOLS.md §1.12), so interop keys are ASCII.
KEY_128 = "A1B2C3D4E5F60718"
KEY_256 = "A1B2C3D4E5F60718293A4B5C6D7E8F90"


def parse(raw: bytes, key: str | None) -> SIAEvent:
    line = raw.decode("cp1252")[1:-1]  # pysiaalarm is handed the text between LF and CR
    return SIAEvent.from_line(line, {"1234": SIAAccount("1234", key)})


@pytest.mark.parametrize("key_text", [None, KEY_128, KEY_256], ids=["plain", "aes128", "aes256"])
@pytest.mark.parametrize("receiver", [None, "1"], ids=["no-R", "R1"])
class TestOurFramesInPysiaalarm:
    def test_sia_dcs(self, key_text: str | None, receiver: str | None) -> None:
        """A SIA-DCS burglary alarm we build parses in pysiaalarm with a valid CRC and timestamp."""
        key = AesKey.from_ascii(key_text) if key_text else None
        raw = encode_frame(
            token="SIA-DCS", seq="0042", account="1234", data="#1234|Nri3/BA017", receiver=receiver,
            timestamp=datetime.now(UTC), key=key,
        )  # fmt: skip
        event = parse(raw, key_text)
        assert event.valid_message
        assert event.valid_timestamp
        assert event.code == "BA"
        assert event.ri == "3"
        assert event.sequence == "0042"
        assert event.account == "1234"

    def test_adm_cid(self, key_text: str | None, receiver: str | None) -> None:
        """An ADM-CID fire alarm we build parses in pysiaalarm (mapped to its SIA code)."""
        key = AesKey.from_ascii(key_text) if key_text else None
        raw = encode_frame(
            token="ADM-CID", seq="0043", account="1234", data="#1234|1110 01 004", receiver=receiver,
            timestamp=datetime.now(UTC), key=key,
        )  # fmt: skip
        event = parse(raw, key_text)
        assert event.valid_message
        assert event.code == "FA"
        assert event.sequence == "0043"


class TestXData:
    def test_mac_xdata(self) -> None:
        """A frame with an x-data block (MAC) is accepted and its x-data read."""
        raw = encode_frame(
            token="SIA-DCS", seq="0044", account="1234", data="#1234|Nri1/CL501",
            xdata=[XData(id="M", value="0026B9E4268B")], timestamp=datetime.now(UTC),
        )  # fmt: skip
        event = parse(raw, None)
        assert event.valid_message
        assert event.code == "CL"
        assert event.x_data is not None
        assert "0026B9E4268B" in str(event.x_data)
