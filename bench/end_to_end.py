"""End-to-end benchmark: modules → alarmrelay → station-sim, every ACKed signal checked at the station.

Run: ``python -m bench.end_to_end --duration 8 --repeats 3 [--aes] [--rate 1000]``. The station
simulator runs as its own process (``alarmrelay station-sim``), printing one JSON line per frame;
after the load stops the runner waits for the outbox to drain and counts what the station got.
Latency "to the station" is the engine's ``alarmrelay_delivery_latency_seconds`` (engine receive →
station ACK) plus the module's ACK latency; both are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import uvloop

from bench.load import BENCH_KEY_ASCII, account_name, run_tcp
from bench.run import (
    ROOT,
    Measured,
    ProcessWatch,
    _create_database,
    _drop_database,
    _engine_config,
    _ports,
    child,
    table,
)
from protocols.dc09_crypto import AesKey

STATION_KEY_HEX = "00112233445566778899AABBCCDDEEFF"


def _provision(url: str, modules: int, station_port: int, *, aes: bool) -> None:
    import asyncpg

    from engine.migrate import apply_migrations

    forwarding = json.dumps(
        {"mode": "always", "station_account": "9000", "primary_receiver": "bench-rx"}
    )

    async def load() -> None:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
            await conn.execute("INSERT INTO stations (name) VALUES ('bench')")
            await conn.execute(
                # 16 connections: a busy central-station receiver taking 100 customers' signals
                "INSERT INTO receivers (name, station, host, port, key, key_format, ack_timeout_s, connections) "
                "VALUES ('bench-rx', 'bench', '127.0.0.1', $1, $2, 'hex', 5, 16)",
                station_port,
                STATION_KEY_HEX if aes else None,
            )
            records = [
                (
                    account_name(i),
                    BENCH_KEY_ASCII if aes else None,
                    "ascii" if aes else "hex",
                    forwarding.replace("9000", f"{9000 + i}"),
                )
                for i in range(modules)
            ]
            await conn.copy_records_to_table(
                "accounts", records=records, columns=["account", "key", "key_format", "forwarding"]
            )
        finally:
            await conn.close()

    asyncio.run(load())


class StationProcess:
    """``alarmrelay station-sim`` as a child, counting the frames it prints."""

    def __init__(self, port: int, *, aes: bool) -> None:
        cmd = [sys.executable, "-m", "engine", "station-sim", "--port", str(port)]
        if aes:
            cmd += ["--key-hex", STATION_KEY_HEX]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.frames = 0
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._ready, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(b"{"):
                self.frames += 1

    def _ready(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if b"station_sim_ready" in line:
                self.ready.set()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _histogram_quantiles(http_port: int, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    buckets = [
        (float(le), float(v))
        for le, v in re.findall(rf'{name}_bucket\{{le="([0-9.e+]+)"\}} ([0-9.e+]+)', text)
    ]
    total = float(re.search(rf"{name}_count ([0-9.e+]+)", text).group(1))  # type: ignore[union-attr]
    out = {}
    for q in (0.5, 0.9, 0.99):
        target = q * total
        out[f"p{int(q * 100)}_ms"] = next(
            (le * 1000 for le, v in buckets if v >= target), float("inf")
        )
    out["count"] = total
    return out


def run_once(
    modules: int,
    duration: float,
    *,
    aes: bool,
    rate: float | None,
    profile: Path | None = None,
) -> tuple[Measured, dict[str, Any]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        station_port = sock.getsockname()[1]
    station = StationProcess(station_port, aes=aes)
    station.ready.wait(30)
    url = _create_database()
    try:
        _provision(url, modules, station_port, aes=aes)
        with tempfile.TemporaryDirectory() as tmp:
            config = _engine_config(Path(tmp), url, mqtt_prefix=None)
            with child(
                [sys.executable, "-m", "engine", "serve", "--config", str(config)],
                ready_word="engine_ready",
            ) as (proc, line):
                port, http_port = _ports(line)
                watch = ProcessWatch(proc.pid, include_postgres=True)
                watch.start()
                key = AesKey.from_ascii(BENCH_KEY_ASCII) if aes else None
                spy = None
                if profile is not None:
                    command = [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(proc.pid),
                        "--duration",
                        str(int(duration)),
                        "--format",
                        "raw",
                        "--output",
                        str(profile),
                        "--nonblocking",
                    ]
                    spy = subprocess.Popen(
                        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                result = uvloop.run(
                    run_tcp("127.0.0.1", port, modules, duration, key=key, rate=rate)
                )
                if spy is not None:
                    spy.wait()
                deadline = time.monotonic() + 60
                while station.frames < result.acked and time.monotonic() < deadline:
                    time.sleep(0.2)
                drained_s = max(0.0, time.monotonic() - (deadline - 60))
                cpu = watch.stop()
                station_cpu = psutil.Process(station.proc.pid).cpu_times()
                cpu["station-sim"] = station_cpu.user + station_cpu.system
                delivery = _histogram_quantiles(http_port, "alarmrelay_delivery_latency_seconds")
    finally:
        station.stop()
        _drop_database(url)
    name = f"alarmrelay end to end{' AES-128 both legs' if aes else ''}{f' at {rate:.0f}/s' if rate else ''}"
    extra = {
        "acked": result.acked,
        "at_station": station.frames,
        "drain_s": round(drained_s, 2),
        "delivery_latency": delivery,
        # what reached the station per second, from the first send to the last delivery
        "delivered_per_s": round(station.frames / (result.summary()["seconds"] + drained_s)),
        "station_cpu_s": round(cpu["station-sim"], 1),
    }
    return Measured(name, result.summary(), cpu, watch.peak_rss / 2**20), extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--aes", action="store_true")
    parser.add_argument("--rate", type=float, default=None, help="fixed total signals/s")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the engine during the load (raw collapsed stacks; last run's)",
    )
    args = parser.parse_args()
    results = []
    extras = []
    for rep in range(args.repeats):
        print(f"[end-to-end] run {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
        measured, extra = run_once(
            args.modules, args.duration, aes=args.aes, rate=args.rate, profile=args.profile
        )
        results.append(measured)
        extras.append(extra)
        print(
            f"    {measured.summary['signals_per_s']:.0f}/s, {extra}", file=sys.stderr, flush=True
        )
    print(table(results))
    print()
    for extra in extras:
        print(
            f"- ACKed {extra['acked']}, at the station {extra['at_station']}, outbox drained {extra['drain_s']} s after the load "
            f"(delivered {extra['delivered_per_s']}/s from first send to last delivery; station-sim CPU {extra['station_cpu_s']} s); "
            f"delivery latency (engine receive → station ACK) p50 ≤ {extra['delivery_latency']['p50_ms']:.0f} ms, "
            f"p90 ≤ {extra['delivery_latency']['p90_ms']:.0f} ms, p99 ≤ {extra['delivery_latency']['p99_ms']:.0f} ms (histogram bucket bounds)"
        )


if __name__ == "__main__":
    main()
