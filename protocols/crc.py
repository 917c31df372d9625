"""CRC-16/ARC as DC-09 uses it (PROTOCOLS.md §1.2).

Reflected polynomial 0xA001, initial value 0, no final XOR; check value "123456789" → 0xBB3D.
The table is computed here rather than pasted: DC-07's published table has a misprint.
"""

from __future__ import annotations


def _build_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _build_table()


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC of ``data``."""
    crc = 0
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc
