"""CRC-16/ARC as DC-09 uses it (PROTOCOLS.md §1.2).

Reflected polynomial 0xA001, initial value 0, no final XOR; check value "123456789" → 0xBB3D.
Computed by ``fastcrc`` (a compiled CRC library): the per-byte Python loop cost ~10 µs per frame,
the largest single item in the receive path's profile.
"""

from __future__ import annotations

from collections.abc import Callable

from fastcrc import crc16 as _crc16

crc16_arc: Callable[[bytes], int] = _crc16.arc
"""CRC-16/ARC of ``data`` (fastcrc's function itself: a Python wrapper cost 0.1 µs per frame)."""
