"""Protocol micro-benchmark: parse + CRC + classify per frame, plain and AES-128, vs pysiaalarm.

Run: ``python -m bench.micro_protocols`` (prints a Markdown table). Targets on this machine:
≤ 15 µs per plain frame, ≤ 30 µs per AES-128 frame (parse + validate + classify).
"""

from __future__ import annotations

import statistics
import sys
import timeit
from datetime import UTC, datetime
from typing import Any

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import decode_frame, encode_frame
from protocols.dc09_payload import parse_payload
from protocols.dc09_receiver import AccountCrypto, Dc09ReceiverConnection, ReceiverConfig

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
KEY_ASCII = "BenchKey16chars!"
KEY = AesKey.from_ascii(KEY_ASCII)

SIA = encode_frame(
    token="SIA-DCS", seq="0042", account="1234", data="#1234|Nri1/BA017", timestamp=NOW
)
CID = encode_frame(
    token="ADM-CID", seq="0043", account="1234", data="#1234|1130 01 017", timestamp=NOW
)
AES = encode_frame(
    token="SIA-DCS", seq="0044", account="1234", data="#1234|Nri1/BA017", timestamp=NOW, key=KEY
)


class Directory:
    def __init__(self, key: AesKey | None) -> None:
        self.crypto = AccountCrypto(key=key)

    def lookup(self, account: str) -> AccountCrypto | None:
        return self.crypto


def per_call_us(fn: Any, number: int = 20_000, repeat: int = 7) -> float:
    """Median µs per call over ``repeat`` runs of ``number`` calls."""
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def ours() -> list[tuple[str, float]]:
    plain_conn = Dc09ReceiverConnection(ReceiverConfig(), Directory(None))
    aes_conn = Dc09ReceiverConnection(ReceiverConfig(), Directory(KEY))
    sia_frame = decode_frame(SIA)
    return [
        (
            "alarmrelay receiver: SIA-DCS plain (split+CRC+parse+window+classify)",
            per_call_us(lambda: plain_conn.receive_data(SIA, now=NOW)),
        ),
        (
            "alarmrelay receiver: ADM-CID plain",
            per_call_us(lambda: plain_conn.receive_data(CID, now=NOW)),
        ),
        (
            "alarmrelay receiver: SIA-DCS AES-128",
            per_call_us(lambda: aes_conn.receive_data(AES, now=NOW)),
        ),
        (
            "alarmrelay decode_frame + parse_payload: SIA plain",
            per_call_us(lambda: parse_payload("SIA-DCS", decode_frame(SIA).data)),
        ),
        ("alarmrelay ACK build", per_call_us(lambda: plain_conn.ack(sia_frame, now=NOW))),
    ]


def peer() -> list[tuple[str, float]]:
    try:
        from pysiaalarm import SIAAccount
        from pysiaalarm.event import SIAEvent
    except ImportError:
        return []
    plain = {"1234": SIAAccount("1234", None, allowed_timeband=None)}
    keyed = {"1234": SIAAccount("1234", KEY_ASCII, allowed_timeband=None)}
    sia_line, cid_line, aes_line = (f.decode()[1:-1] for f in (SIA, CID, AES))
    return [
        (
            "pysiaalarm SIAEvent.from_line: SIA-DCS plain",
            per_call_us(lambda: SIAEvent.from_line(sia_line, plain), number=5000),
        ),
        (
            "pysiaalarm SIAEvent.from_line: ADM-CID plain",
            per_call_us(lambda: SIAEvent.from_line(cid_line, plain), number=5000),
        ),
        (
            "pysiaalarm SIAEvent.from_line: SIA-DCS AES-128",
            per_call_us(lambda: SIAEvent.from_line(aes_line, keyed), number=5000),
        ),
    ]


def main() -> None:
    rows = ours() + peer()
    print(f"Python {sys.version.split()[0]}; median of 7 runs")
    print()
    print("| measurement | µs per frame | frames/s (one core) |")
    print("|---|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} | {1e6 / us:,.0f} |")


if __name__ == "__main__":
    main()
