"""Load generator: simulated modules sending DC-09 (TCP stop-and-wait, UDP) or MQTT.

Each module owns one account and waits for the reply to each frame before sending the next, as
panels do. Modes: as fast as possible for a duration, or a fixed total rate. Records the send and
reply time of every signal and reports throughput, latency percentiles and NAK/DUH/timeouts.

Run: ``python -m bench.load --port 10009 --modules 100 --duration 10 [--aes] [--mix cid|sia|both]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import uvloop

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import decode_frame, encode_frame

BENCH_KEY_ASCII = "BenchKey16chars!"  # AES-128 as ASCII bytes: what pysiaalarm understands too


def account_name(index: int) -> str:
    """The DC-09 account of module ``index`` (hex digits, 6 characters)."""
    return f"{0x100000 + index:06X}"


@dataclass
class Result:
    sent: int = 0
    acked: int = 0
    naks: int = 0
    duhs: int = 0
    timeouts: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    acked_ids: list[str] = field(default_factory=list)  # "account:seq:zone" of every ACKed signal
    started: float = 0.0
    ended: float = 0.0

    def merge(self, other: Result) -> None:
        self.sent += other.sent
        self.acked += other.acked
        self.naks += other.naks
        self.duhs += other.duhs
        self.timeouts += other.timeouts
        self.errors += other.errors
        self.latencies += other.latencies
        self.acked_ids += other.acked_ids

    def summary(self) -> dict[str, float]:
        elapsed = max(1e-9, self.ended - self.started)
        lat = sorted(self.latencies) or [0.0]

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000

        return {
            "signals_per_s": self.acked / elapsed,
            "sent": self.sent,
            "acked": self.acked,
            "naks": self.naks,
            "duhs": self.duhs,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": lat[-1] * 1000,
            "mean_ms": statistics.fmean(lat) * 1000,
            "seconds": elapsed,
        }


def _data(account: str, n: int, family: str) -> tuple[str, str]:
    zone = n % 999 + 1
    if family == "cid":
        return "ADM-CID", f"#{account}|1{('130', '602', '401', '301')[n % 4]} 01 {zone:03d}"
    return "SIA-DCS", f"#{account}|Nri1/{('BA', 'RP', 'OP', 'AT')[n % 4]}{zone:03d}"


async def tcp_module(
    host: str,
    port: int,
    index: int,
    *,
    key: AesKey | None,
    family: str,
    deadline: float,
    interval: float | None,
    result: Result,
    timeout: float = 5.0,
    max_signals: int | None = None,
    spread: int | None = None,
    modules: int = 1,
) -> None:
    """One module on one kept-open TCP connection, stop-and-wait.

    With ``spread``, frame n goes out for account ``(index + n * modules) % spread``: the
    connection stands for many modules, so the load touches every provisioned account in turn
    (as 1,000,000 modules each contacting now and then would).
    """
    account = account_name(index)
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        result.errors += 1
        return
    n = 0
    next_send = time.perf_counter()
    try:
        while time.perf_counter() < deadline and (max_signals is None or n < max_signals):
            if interval is not None:
                now = time.perf_counter()
                if next_send > now:
                    await asyncio.sleep(next_send - now)
                next_send += interval
            n += 1
            if spread is not None:
                account = account_name((index + n * modules) % spread)
            fam = family if family != "both" else ("cid", "sia")[(index + n) % 2]
            token, data = _data(account, n, fam)
            seq = f"{n % 9999 + 1:04d}"
            frame = encode_frame(
                token=token,
                seq=seq,
                account=account,
                data=data,
                timestamp=_utcnow() if key else None,
                key=key,
            )
            sent = time.perf_counter()
            writer.write(frame)
            result.sent += 1
            try:
                reply = await asyncio.wait_for(reader.readuntil(b"\r"), timeout)
            except TimeoutError:
                result.timeouts += 1
                continue
            except (asyncio.IncompleteReadError, ConnectionError):
                result.errors += 1
                return
            elapsed = time.perf_counter() - sent
            token_back = _reply_token(reply, key)
            if token_back == "ACK":
                result.acked += 1
                result.latencies.append(elapsed)
                result.acked_ids.append(f"{account}:{seq}:{n % 999 + 1}")
            elif token_back == "NAK":
                result.naks += 1
            elif token_back == "DUH":
                result.duhs += 1
            else:
                result.errors += 1
    finally:
        writer.close()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _reply_token(reply: bytes, key: AesKey | None) -> str:
    text = reply.lstrip(b"\x00\n")
    if b'"ACK"' in text or b'"*ACK"' in text:
        return "ACK"
    if b'"NAK"' in text:
        return "NAK"
    if b'"DUH"' in text:
        return "DUH"
    try:
        return decode_frame(reply, key=key).token
    except Exception:
        return "?"


async def udp_module(
    host: str,
    port: int,
    index: int,
    *,
    key: AesKey | None,
    family: str,
    deadline: float,
    result: Result,
) -> None:
    """One module over UDP: one datagram, wait for the reply (1 s), like a panel's retry timer."""
    loop = asyncio.get_running_loop()
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Proto, remote_addr=(host, port))
    account = account_name(index)
    n = 0
    try:
        while time.perf_counter() < deadline:
            n += 1
            token, data = _data(account, n, family if family != "both" else ("cid", "sia")[n % 2])
            seq = f"{n % 9999 + 1:04d}"
            frame = encode_frame(
                token=token,
                seq=seq,
                account=account,
                data=data,
                timestamp=_utcnow() if key else None,
                key=key,
            )
            sent = time.perf_counter()
            transport.sendto(frame)
            result.sent += 1
            try:
                reply = await asyncio.wait_for(replies.get(), 1.0)
            except TimeoutError:
                result.timeouts += 1
                continue
            if _reply_token(reply, key) == "ACK":
                result.acked += 1
                result.latencies.append(time.perf_counter() - sent)
                result.acked_ids.append(f"{account}:{seq}:{n % 999 + 1}")
    finally:
        transport.close()


async def run_tcp(
    host: str,
    port: int,
    modules: int,
    duration: float,
    *,
    key: AesKey | None = None,
    family: str = "both",
    rate: float | None = None,
    udp: bool = False,
    max_signals: int | None = None,
    spread: int | None = None,
) -> Result:
    """Run ``modules`` modules for ``duration`` seconds; ``rate`` is a total signals/s target."""
    result = Result(started=time.perf_counter())
    deadline = result.started + duration
    interval = (modules / rate) if rate else None
    parts = [Result() for _ in range(modules)]
    if udp:
        coros = [
            udp_module(host, port, i, key=key, family=family, deadline=deadline, result=parts[i])
            for i in range(modules)
        ]
    else:
        coros = [
            tcp_module(
                host,
                port,
                i,
                key=key,
                family=family,
                deadline=deadline,
                interval=interval,
                result=parts[i],
                max_signals=max_signals,
                spread=spread,
                modules=modules,
            )
            for i in range(modules)
        ]
    await asyncio.gather(*coros)
    result.ended = time.perf_counter()
    for part in parts:
        result.merge(part)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="fixed total signals/s (default: as fast as possible)",
    )
    parser.add_argument(
        "--aes", action="store_true", help=f"AES-128 with the ASCII key {BENCH_KEY_ASCII!r}"
    )
    parser.add_argument("--udp", action="store_true")
    parser.add_argument("--mix", choices=["cid", "sia", "both"], default="both")
    args = parser.parse_args()
    key = AesKey.from_ascii(BENCH_KEY_ASCII) if args.aes else None
    result = uvloop.run(
        run_tcp(
            args.host,
            args.port,
            args.modules,
            args.duration,
            key=key,
            family=args.mix,
            rate=args.rate,
            udp=args.udp,
        )
    )
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
