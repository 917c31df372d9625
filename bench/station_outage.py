"""Ingest while the monitoring station is down: what the outage costs the engine and PostgreSQL.

Run: ``python -m bench.station_outage [--rate 500] [--duration 30] [--repeats 3]`` (needs
PostgreSQL at ``BENCH_ADMIN_URL``; creates and drops its own database per run).

The end-to-end scenario's engine and accounts (100 modules, every signal forwarded to one
receiver), but nothing listens on the receiver's port: every delivery fails at once and is
retried with backoff, every commit leaves its outbox rows behind heads that wait for their retry.
The generator sends at a fixed rate; the table gives the modules' ACK latency, the CPU of the
engine and of PostgreSQL, and checks that every ACKed signal is queued: a pending delivery of that
signal (its module's account and seq) when the load ends, not just as many pending rows as ACKs.
Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import uvloop

from bench.end_to_end import _free_port, _provision
from bench.load import AckedSignal, run_tcp
from bench.run import (
    MachineIdle,
    ProcessWatch,
    _create_database,
    _database_name,
    _drop_database,
    median_run,
    serve_engine,
)


@dataclass(frozen=True)
class Outage:
    summary: dict[str, float]
    cpu_s: dict[str, float]
    idle_pct: float | None
    acked: int
    pending: int  # deliveries pending when the load ended
    unqueued: int = 0  # ACKed signals without a pending delivery of their own


async def _pending(url: str) -> Counter[tuple[str, str]]:
    """Pending deliveries by their signal's (module account, seq)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT s.account, s.seq, count(*) AS n FROM deliveries d "
            "JOIN signals s ON s.id = d.signal_id WHERE d.state = 'pending' GROUP BY 1, 2"
        )
    finally:
        await conn.close()
    return Counter({(r["account"], r["seq"]): int(r["n"]) for r in rows})


def unqueued(acked: Iterable[AckedSignal], pending: Counter[tuple[str, str]]) -> int:
    """ACKed signals with no pending delivery of their own (the count of pending rows can match
    while one is missing and a signal whose ACK the module never saw is there instead)."""
    left = Counter(pending)
    missing = 0
    for signal in acked:
        key = (signal.account, signal.seq)
        if left[key] > 0:
            left[key] -= 1
        else:
            missing += 1
    return missing


def run_once(modules: int, duration: float, rate: float) -> Outage:
    url = _create_database()
    try:
        _provision(url, modules, _free_port(), aes=False)  # nothing listens there
        with serve_engine(url) as (proc, port):
            watch = ProcessWatch(proc.pid, include_postgres=True, database=_database_name(url))
            idle = MachineIdle()
            watch.start()
            idle.start()
            result = uvloop.run(run_tcp("127.0.0.1", port, modules, duration, rate=rate))
            idle_pct = idle.stop()
            cpu = watch.stop()
            pending = asyncio.run(_pending(url))
        return Outage(
            result.summary(),
            cpu,
            idle_pct,
            len(result.acked_signals),
            pending.total(),
            unqueued(result.acked_signals, pending),
        )
    finally:
        _drop_database(url)


def table(runs: list[Outage], rate: float) -> str:
    """The median run by ACK p99 (:func:`bench.run.median_run`), with every run's p99 listed."""
    m = median_run(runs, lambda r: r.summary["p99_ms"], higher_is_better=False)
    s = m.summary
    each = ", ".join(f"{r.summary['p99_ms']:.1f}" for r in runs)
    idle = "—" if m.idle_pct is None else f"{m.idle_pct:.0f}"
    return "\n".join(
        [
            "| station down, fixed rate | runs (ACK p99 ms each) | signals/s | ACK p50 / p90 / p99 / max ms | CPU s engine | CPU s postgres | cores idle % | ACKed | pending deliveries |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {rate:.0f}/s | {len(runs)} ({each}) | {s['signals_per_s']:.0f} | "
            f"{s['p50_ms']:.1f} / {s['p90_ms']:.1f} / **{s['p99_ms']:.1f}** / {s['max_ms']:.1f} | "
            f"{m.cpu_s.get('target', 0):.1f} | {m.cpu_s.get('postgres', 0):.1f} | {idle} | "
            f"{m.acked} | {m.pending} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500.0, help="signals per second, in all")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if min(args.modules, args.repeats) < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--modules and --repeats at least 1, --rate and --duration above 0")
    runs = []
    for rep in range(args.repeats):
        run = run_once(args.modules, args.duration, args.rate)
        runs.append(run)
        print(
            f"[station-outage] run {rep + 1}/{args.repeats}: ACK p99 {run.summary['p99_ms']:.1f} ms, "
            f"postgres {run.cpu_s.get('postgres', 0):.1f} CPU-s, {run.acked} ACKed, "
            f"{run.pending} pending, {run.unqueued} ACKed without one",
            file=sys.stderr,
            flush=True,
        )
    print(table(runs, args.rate))
    if any(r.unqueued for r in runs):
        raise SystemExit("station-outage: an ACKed signal has no pending delivery")


if __name__ == "__main__":
    main()
