"""Receiver-client micro-benchmark: client CPU per delivery and deliveries/s through one
:class:`receivers.dc09_client.Dc09ReceiverPool`, plain and AES-128, with 1, 4 and 16 connections.

Run: ``python -m bench.micro_receiver_client [--events 20000] [--repeats 3]`` (prints a Markdown
table). The station is a minimal ACKing DC-09 receiver (:class:`protocols.dc09_receiver.
Dc09ReceiverConnection`: CRC, header, decrypt, timestamp window, payload, ``(*)ACK``) in a child
process on TCP loopback, so its CPU is not counted. The client side runs on uvloop, as the engine
does: ``connections`` callers each loop on ``pool.send(account=, event=)``, which is what the
dispatcher does with one lane per caller. "µs CPU" is ``time.process_time()`` of this process per
delivery (the client only: encode, frame, write, read, decode, match); deliveries/s is wall time.
Every delivery must come back ``acked`` or the run fails. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parent.parent
KEY_HEX = "00112233445566778899AABBCCDDEEFF"  # AES-128


# -- the station (child process) --------------------------------------------------------------


def _station_main(port: int, key_hex: str | None) -> None:
    from protocols.dc09_crypto import AesKey
    from protocols.dc09_receiver import (
        AccountCrypto,
        Dc09ReceiverConnection,
        FrameReceived,
        ReceiverConfig,
    )

    crypto = AccountCrypto(key=AesKey.parse(key_hex, "hex") if key_hex else None)

    class AnyAccount:
        def lookup(self, account: str) -> AccountCrypto | None:
            return crypto

    directory = AnyAccount()
    config = ReceiverConfig()

    class Station(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.conn = Dc09ReceiverConnection(config, directory)

        def data_received(self, data: bytes) -> None:
            now = datetime.now(UTC)
            for event in self.conn.receive_data(data, now=now):
                if isinstance(event, FrameReceived):
                    self.transport.write(self.conn.ack(event.frame, now=now))
                elif event.error.reply_bytes:
                    self.transport.write(event.error.reply_bytes)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Station, "127.0.0.1", port, backlog=1024)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(serve())


class StationProcess:
    def __init__(self, *, key_hex: str | None) -> None:
        cmd = [sys.executable, "-m", "bench.micro_receiver_client", "--station"]
        if key_hex:
            cmd += ["--key-hex", key_hex]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"station did not start: {line!r}")
        self.port = int(line.split()[1])

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


# -- the client (this process) ----------------------------------------------------------------


class Run:
    def __init__(
        self, deliveries: int, cpu_s: float, sys_s: float, wall_s: float, station_cpu_s: float
    ) -> None:
        self.deliveries = deliveries
        self.us_per_delivery = cpu_s / deliveries * 1e6
        self.sys_us = sys_s / deliveries * 1e6
        self.per_s = deliveries / wall_s
        self.station_us = station_cpu_s / deliveries * 1e6


async def _measure(
    port: int,
    *,
    key_hex: str | None,
    connections: int,
    events: int,
    repeats: int,
    station: StationProcess,
) -> list[Run]:
    from engine.station_model import ReceiverConfig
    from protocols.categories import classify
    from protocols.signal import Event, Family
    from receivers.dc09_client import Dc09ReceiverPool

    config = ReceiverConfig(
        name=f"bench-{connections}-{'aes' if key_hex else 'plain'}",
        host="127.0.0.1",
        port=port,
        key=key_hex,
        key_format="hex",
        ack_timeout_s=5,
        null_poll_interval_s=3600,
        receiver_number="1",
    )
    pool = Dc09ReceiverPool(config, connections=connections)
    burglary = [
        Event(
            family=Family.CID,
            code="130",
            qualifier="1",
            zone=zone,
            partition=1,
            classification=classify(Family.CID, "130", "1"),
        )
        for zone in range(1, 17)
    ]
    accounts = [f"{9000 + i}" for i in range(100)]

    async def caller(n: int, offset: int) -> None:
        zones = itertools.cycle(burglary)
        for i in range(n):
            attempt = await pool.send(account=accounts[(offset + i) % 100], event=next(zones))
            if attempt.outcome != "acked":
                raise RuntimeError(f"delivery {attempt.seq} {attempt.outcome}: {attempt.error}")

    async def burst(total: int) -> None:
        share, extra = divmod(total, connections)
        await asyncio.gather(
            *(caller(share + (1 if c < extra else 0), c * 7) for c in range(connections))
        )

    runs = []
    try:
        await burst(max(200, connections * 20))  # connect every connection, warm caches
        for _ in range(repeats):
            station_cpu = station.cpu_s()
            cpu, sys_s, wall = time.process_time(), os.times().system, time.perf_counter()
            await burst(events)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            sys_s = os.times().system - sys_s
            runs.append(Run(events, cpu, sys_s, wall, station.cpu_s() - station_cpu))
    finally:
        await pool.close()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="deliveries per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", default="1,4,16")
    parser.add_argument("--modes", default="plain,aes")
    parser.add_argument("--json", help="append each run (one JSON line) to this file")
    parser.add_argument("--station", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--key-hex", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.station:
        _station_main(args.port, args.key_hex)
        return
    import structlog

    # The client logs nothing per delivery at info; keep the bench output a table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    rows = []
    for mode in args.modes.split(","):
        key_hex = KEY_HEX if mode == "aes" else None
        station = StationProcess(key_hex=key_hex)
        try:
            for connections in (int(c) for c in args.connections.split(",")):
                runs = uvloop.run(
                    _measure(
                        station.port,
                        key_hex=key_hex,
                        connections=connections,
                        events=args.events,
                        repeats=args.repeats,
                        station=station,
                    )
                )
                rows.append((mode, connections, runs))
        finally:
            station.stop()
    if args.json:
        with open(args.json, "a", encoding="utf-8") as out:
            for mode, connections, runs in rows:
                for r in runs:
                    record = {
                        "mode": mode,
                        "connections": connections,
                        "us_per_delivery": r.us_per_delivery,
                        "kernel_us": r.sys_us,
                        "per_s": r.per_s,
                        "station_us": r.station_us,
                    }
                    out.write(json.dumps(record) + "\n")
    print(
        "| mode | connections | µs client CPU / delivery (median) | best | deliveries/s (median) "
        "| runs (deliveries/s) | of which µs in the kernel | µs station CPU / delivery |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, connections, runs in rows:
        label = "AES-128" if mode == "aes" else "plain"
        us = [r.us_per_delivery for r in runs]
        rates = [r.per_s for r in runs]
        print(
            f"| {label} | {connections} | {statistics.median(us):.1f} | {min(us):.1f} "
            f"| {statistics.median(rates):,.0f} | {', '.join(f'{r:,.0f}' for r in rates)} "
            f"| {statistics.median(r.sys_us for r in runs):.1f} "
            f"| {statistics.median(r.station_us for r in runs):.1f} |"
        )


if __name__ == "__main__":
    main()
