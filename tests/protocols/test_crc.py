"""CRC-16/ARC as DC-09 uses it (PROTOCOLS.md §1.2)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocols.crc import crc16_arc


def bitwise_crc(data: bytes) -> int:
    """The bitwise form every peer project uses, as an independent reference."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class TestCrc16Arc:
    def test_check_value(self) -> None:
        """CRC-16/ARC of "123456789" is 0xBB3D (the catalogue check value)."""
        assert crc16_arc(b"123456789") == 0xBB3D

    def test_empty(self) -> None:
        """The CRC of nothing is the initial value 0."""
        assert crc16_arc(b"") == 0

    def test_published_frames(self) -> None:
        """The CRC of two published frames' regions matches their CRC fields."""
        assert crc16_arc(b'"ACK"0000L0#1409[]') == 0x5989
        assert crc16_arc(b'"NAK"0000R0L0A0[]_16:20:01,09-24-2025') == 0xE441

    def test_dc07_table_misprint_entry(self) -> None:
        """Table entry 100 is 0xEB01, not DC-07's misprinted 0xBE01 (North Latitude Q&A)."""
        assert crc16_arc(bytes([100])) == 0xEB01

    @given(st.binary(max_size=300))
    def test_table_matches_bitwise_form(self, data: bytes) -> None:
        """The table-driven CRC equals the bitwise reference for any bytes."""
        assert crc16_arc(data) == bitwise_crc(data)
