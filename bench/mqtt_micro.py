"""MQTT per-message cost, each side on its own: the engine's MQTT client and the load generator.

The engine side is the real :class:`engine.mqtt_listener.MqttListener` in a child process over a
sink that "commits" at once (no database), so what it spends per message is MQTT client, topic and
payload work, the ack publish and the PUBACK. The generator runs in this process. Both go through
the real Mosquitto on 127.0.0.1:1883. Reported: messages acked per second and CPU microseconds per
message of the listener, the generator and Mosquitto.

Run: ``python -m bench.mqtt_micro --duration 6 [--generator aiomqtt|lean] [--profile DIR]``
(``--profile`` records py-spy flame graphs of both sides into DIR).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import uvloop

from bench.load import Result
from engine.ingest_types import InboundSignal, IngestResult

ROOT = Path(__file__).resolve().parents[1]


class InstantSink:
    """An IngestSink whose every signal is committed at once (no database)."""

    saturated = False

    def __init__(self) -> None:
        self.count = 0

    async def submit(self, signal: InboundSignal) -> IngestResult:
        self.count += 1
        return IngestResult.ACCEPTED

    def enqueue(self, signal: InboundSignal) -> asyncio.Future[IngestResult]:
        self.count += 1
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        future.set_result(IngestResult.ACCEPTED)
        return future


async def _serve_listener(prefix: str, max_inflight: int, connections: int) -> None:
    from engine.mqtt_listener import MqttListener

    sink = InstantSink()
    listener = MqttListener(
        sink=sink,
        resolver=lambda serial: "ACC" + serial[-6:],
        client_id=f"micro-engine-{secrets.token_hex(3)}",
        topic_prefix=prefix,
        max_inflight=max_inflight,
        session_expiry_s=0,
        connections=connections,
    )
    task = asyncio.create_task(listener.run())
    await asyncio.wait_for(listener.subscribed.wait(), 10)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    conn = listener._active
    if conn is not None:
        print(f"IO reads={conn.reads} writes={conn.writes}", flush=True)
    await listener.stop()
    task.cancel()
    print(f"HANDLED {sink.count}", flush=True)


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def _mosquitto() -> psutil.Process | None:
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("mosquitto"):
            return proc
    return None


def run_once(
    *,
    duration: float,
    inflight: int,
    generator: str,
    modules: int,
    profile: Path | None,
    connections: int,
) -> dict[str, float]:
    prefix = f"micro-{secrets.token_hex(3)}/v1"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.mqtt_micro",
            "--serve-listener",
            "--prefix",
            prefix,
            "--connections",
            str(connections),
        ],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert child.stdout is not None
    for raw in child.stdout:
        if raw.startswith(b"READY"):
            break
    else:
        child.kill()
        raise RuntimeError("listener did not start")
    engine = psutil.Process(child.pid)
    broker = _mosquitto()
    me = psutil.Process(os.getpid())
    spies: list[subprocess.Popen[bytes]] = []
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        for name, pid in (("listener", child.pid), ("generator", os.getpid())):
            spies.append(
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(int(duration)),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--output",
                        str(profile / f"{name}.txt"),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    start = {
        "listener": _cpu(engine),
        "generator": _cpu(me),
        "mosquitto": _cpu(broker) if broker else 0.0,
    }
    result = Result(started=time.perf_counter())
    uvloop.run(_generate(generator, prefix, modules, duration, inflight, result))
    result.ended = time.perf_counter()
    end = {
        "listener": _cpu(engine),
        "generator": _cpu(me),
        "mosquitto": _cpu(broker) if broker else 0.0,
    }
    for spy in spies:
        spy.wait()
    child.send_signal(signal.SIGTERM)
    tail = child.stdout.read().decode()
    child.wait(30)
    summary = result.summary()
    acked = max(1, result.acked)
    out: dict[str, float] = {
        "acked": result.acked,
        "sent": result.sent,
        "timeouts": result.timeouts,
        "signals_per_s": summary["signals_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
    }
    for name, before in start.items():
        out[f"{name}_cpu_s"] = round(end[name] - before, 2)
        out[f"{name}_us_per_msg"] = round((end[name] - before) / acked * 1e6, 1)
    out["handled"] = float(tail.split("HANDLED")[-1].split()[0]) if "HANDLED" in tail else -1
    for line in tail.splitlines():
        if "warning" in line or "error" in line:
            print("listener:", line.strip(), file=sys.stderr)
        if line.startswith("IO "):
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                out[f"listener_{key}_per_msg"] = round(int(value) / acked, 3)
    return out


async def _generate(
    generator: str, prefix: str, modules: int, duration: float, inflight: int, result: Result
) -> None:
    if generator == "aiomqtt":
        from bench.load_mqtt import aiomqtt_module_fleet

        await aiomqtt_module_fleet(
            "127.0.0.1",
            1883,
            modules,
            prefix=prefix,
            duration=duration,
            result=result,
            inflight=inflight,
        )
    else:
        from bench.load_mqtt import lean_module_fleet

        await lean_module_fleet(
            "127.0.0.1",
            1883,
            modules,
            prefix=prefix,
            duration=duration,
            result=result,
            inflight=inflight,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-listener", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="micro/v1", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--inflight", type=int, default=512)
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--generator", choices=["aiomqtt", "lean"], default="lean")
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--connections", type=int, default=1, help="the listener's MQTT sessions")
    args = parser.parse_args()
    if args.serve_listener:
        uvloop.run(_serve_listener(args.prefix, max_inflight=1000, connections=args.connections))
        return
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        runs.append(
            run_once(
                duration=args.duration,
                inflight=args.inflight,
                generator=args.generator,
                modules=args.modules,
                profile=args.profile,
                connections=args.connections,
            )
        )
        print(runs[-1], flush=True)


if __name__ == "__main__":
    main()
