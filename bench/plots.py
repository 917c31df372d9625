"""Plots for bench/RESULTS.md: throughput vs connections, and the ACK-latency CDF.

Run: ``python -m bench.plots [--duration 5]`` (writes bench/throughput_vs_connections.png and
bench/latency_cdf.png; needs matplotlib from the test extras).
"""

from __future__ import annotations

import argparse
import sys

import uvloop

from bench.load import Result, run_tcp
from bench.run import (
    ROOT,
    _create_database,
    _drop_database,
    _provision,
    child,
    serve_engine,
)


def _alarmrelay(modules: int, duration: float) -> Result:
    url = _create_database()
    try:
        _provision(url, modules, key=None)
        with serve_engine(url) as (_, port):
            return uvloop.run(run_tcp("127.0.0.1", port, modules, duration))
    finally:
        _drop_database(url)


def _peer(cmd: list[str], modules: int, duration: float) -> Result:
    with child(cmd) as (_, line):
        port = int(line.split()[1])
        return uvloop.run(run_tcp("127.0.0.1", port, modules, duration))


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plots",
        description="Measure alarmrelay, pysiaalarm and the minimal receiver at 10, 25, 50, 100"
        " and 200 stop-and-wait modules and write bench/throughput_vs_connections.png and"
        " bench/latency_cdf.png.",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per point (default 5)")
    args = parser.parse_args(argv)
    if not args.duration > 0:
        parser.error("--duration must be more than 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [10, 25, 50, 100, 200]
    duration: float = args.duration
    series: dict[str, list[float]] = {
        "alarmrelay (durable ACK)": [],
        "pysiaalarm": [],
        "minimal receiver": [],
    }
    latencies: dict[str, list[float]] = {}
    for n in counts:
        print(f"[plots] {n} modules", file=sys.stderr, flush=True)
        ours = _alarmrelay(n, duration)
        pys = _peer(
            [sys.executable, "-m", "bench.peer_pysiaalarm", "--port", "0", "--accounts", str(n)],
            n,
            duration,
        )
        mini = _peer([sys.executable, "-m", "bench.peer_minimal", "--port", "0"], n, duration)
        for name, result in zip(series, (ours, pys, mini), strict=True):
            series[name].append(result.summary()["signals_per_s"])
            if n == 100:
                latencies[name] = sorted(result.latencies)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in series.items():
        ax.plot(counts, values, marker="o", label=name)
    ax.set_xlabel("stop-and-wait modules (TCP connections)")
    ax.set_ylabel("signals/s")
    ax.set_title("DC-09 TCP ingest throughput vs connections (2 cores, shared)")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(ROOT / "bench" / "throughput_vs_connections.png", dpi=110)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in latencies.items():
        ys = [i / len(values) for i in range(1, len(values) + 1)]
        ax.plot([v * 1000 for v in values], ys, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ACK latency (ms, log)")
    ax.set_ylabel("fraction of signals")
    ax.set_title("ACK latency CDF, 100 modules as fast as possible")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(ROOT / "bench" / "latency_cdf.png", dpi=110)
    for name, values in series.items():
        print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values) + " |")


if __name__ == "__main__":
    main()
