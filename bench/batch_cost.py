"""What one group commit costs, by batch size: a fixed part per call and a part per signal.

Run: ``python -m bench.batch_cost [--sizes 1,10,25,50,100] [--seconds 3]`` (needs PostgreSQL at
``BENCH_ADMIN_URL``, default 127.0.0.1:5432; creates and drops its own database).

The batches are the ingest scenario's (``python -m bench.run --scenario ingest``): 100 accounts
provisioned as that scenario provisions them, DC-09 frames built as the load generator builds
them (Contact ID and SIA alternating, each with a timestamp), accepted by the real receiver,
turned into signals by the listener's own ``signal_from_frame`` and committed by the engine's
``IngestWriter`` with the stages the default settings enable (forwarding, supervision, Crash &
Smash). The calls run one after another on one connection, so the server's CPU of that
connection's backend (psutil) is what each call cost PostgreSQL; this process's CPU around
each call is what it cost the engine (planning the batch, encoding it, the round trip's system
calls and reading the result), on uvloop as the engine runs.
Building the frames and signals is outside both. A least-squares line through the sizes splits
each cost into a fixed part per call and a part per signal. Costs are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import psutil
import uvloop

from bench.load import account_name, signal_data, signal_seq
from bench.run import _create_database, _drop_database, _provision
from engine.account_directory import AccountDirectory
from engine.database import maintain_signals
from engine.dc09_listener import signal_from_frame
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, IngestResult, Transport
from engine.ingest_writer import IngestWriter
from engine.pg_connection import EngineConnection
from engine.service import ingest_stages
from engine.settings import Settings
from engine.store.accounts import AccountStore
from protocols.dc09_frame import encode_frame
from protocols.dc09_receiver import Dc09ReceiverConnection, FrameReceived, ReceiverConfig

MODULES = 100  # the ingest scenario's modules (and accounts)
WARMUP_CALLS = 30  # per size, before measuring: plans cached, pages in memory


@dataclass(frozen=True)
class SizeCost:
    """The measured cost of ``calls`` calls of ``size`` signals each."""

    size: int
    calls: int
    backend_cpu_s: float  # PostgreSQL: the connection's backend
    engine_cpu_s: float  # this process, around the calls only
    wall_s: float

    def per_call_ms(self, cpu_s: float) -> float:
        return cpu_s / self.calls * 1e3


@dataclass(frozen=True)
class Line:
    """cost per call = fixed + per_signal * size (least squares)."""

    fixed: float
    per_signal: float


def fit(points: Sequence[tuple[float, float]]) -> Line:
    """The least-squares line through ``(size, cost)`` points (at least two distinct sizes)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("a line needs at least two different batch sizes")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return Line(fixed=mean_y - slope * mean_x, per_signal=slope)


def backend_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a local process (the PostgreSQL backend), as ProcessWatch
    in bench/run.py reads them (psutil); a backend that is not there is an error, not zero."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class SignalSource:
    """The ingest scenario's signals: frames as the load generator sends them, received for real."""

    def __init__(self, directory: AccountDirectory, *, first_signal: int) -> None:
        self._receivers = [
            Dc09ReceiverConnection(ReceiverConfig(), directory) for _ in range(MODULES)
        ]
        self._n = first_signal
        self._module = 0

    def batch(self, size: int) -> list[InboundSignal]:
        now = datetime.now(UTC)
        out: list[InboundSignal] = []
        while len(out) < size:
            module = self._module
            if module == 0:
                self._n += 1  # a new round: each module's next signal (from first_signal + 1)
            self._module = (module + 1) % MODULES
            account = account_name(module)
            token, data = signal_data(account, self._n, "sia" if (module + self._n) % 2 else "cid")
            frame = encode_frame(
                token=token, seq=signal_seq(self._n), account=account, data=data, timestamp=now
            )
            received = self._receivers[module].receive_data(frame, now=now)
            if len(received) != 1 or not isinstance(received[0], FrameReceived):
                raise RuntimeError(f"the receiver did not accept a benchmark frame: {received}")
            out.append(
                signal_from_frame(
                    received[0],
                    transport=Transport.TCP,
                    peer=f"127.0.0.1:{40000 + module}",
                    now=now,
                )
            )
        return out


async def measure(
    url: str, sizes: Sequence[int], seconds: float, *, first_signal: int = 0
) -> list[SizeCost]:
    """Commit batches of each size for ``seconds`` on one connection; the cost of each size.

    ``first_signal``: where the modules' signal numbers start (a database measured before needs
    numbers it has not stored, or the signals are duplicates).
    """
    settings = Settings()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, connection_class=EngineConnection)
    try:
        async with pool.acquire() as conn:
            await maintain_signals(
                conn, settings
            )  # the partitions, as the engine's start makes them
        directory = AccountDirectory()
        directory.load(await AccountStore(pool).all())
        supervision, crash_smash = ingest_stages(settings, directory)
        writer = IngestWriter(
            pool,
            duplicate_window_s=settings.dc09.duplicate_window_s,
            forwarding=ForwardingStage(directory, owner="batch-cost", lease_s=6.0),
            supervision=supervision,
            crash_smash=crash_smash,
        )
        pid = int(await pool.fetchval("SELECT pg_backend_pid()"))
        source = SignalSource(directory, first_signal=first_signal)
        results: list[SizeCost] = []
        for size in sizes:
            for _ in range(WARMUP_CALLS):
                await _commit(writer, source.batch(size))
            calls, engine_cpu, wall = 0, 0.0, 0.0
            backend_start = backend_cpu_s(pid)
            while wall < seconds:
                signals = source.batch(size)
                cpu0, wall0 = time.process_time(), time.perf_counter()
                await _commit(writer, signals)
                engine_cpu += time.process_time() - cpu0
                wall += time.perf_counter() - wall0
                calls += 1
            results.append(
                SizeCost(
                    size=size,
                    calls=calls,
                    backend_cpu_s=backend_cpu_s(pid) - backend_start,
                    engine_cpu_s=engine_cpu,
                    wall_s=wall,
                )
            )
            print(
                f"[batch-cost] {size} signals per call: {calls} calls", file=sys.stderr, flush=True
            )
        return results
    finally:
        await pool.close()


async def _commit(writer: IngestWriter, signals: list[InboundSignal]) -> None:
    results = await writer(signals)
    if any(r is not IngestResult.ACCEPTED for r in results):
        raise RuntimeError(f"a benchmark signal was not stored as new: {set(results)}")


def table(results: Sequence[SizeCost]) -> str:
    rows = [
        "| signals per call | calls | PostgreSQL CPU ms per call | µs per signal | engine CPU ms "
        "per call | µs per signal | wall ms per call |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pg, engine = r.per_call_ms(r.backend_cpu_s), r.per_call_ms(r.engine_cpu_s)
        rows.append(
            f"| {r.size} | {r.calls} | {pg:.3f} | {pg / r.size * 1e3:.1f} | {engine:.3f} | "
            f"{engine / r.size * 1e3:.1f} | {r.wall_s / r.calls * 1e3:.3f} |"
        )
    if len({r.size for r in results}) >= 2:
        for label, cpu in (("PostgreSQL", "backend_cpu_s"), ("engine", "engine_cpu_s")):
            line = fit([(r.size, r.per_call_ms(getattr(r, cpu))) for r in results])
            rows.append(
                f"\n{label}: {line.fixed:.3f} ms per call + {line.per_signal * 1e3:.1f} µs per "
                f"signal (least squares); at 50 signals per call the fixed part is "
                f"{line.fixed / (line.fixed + 50 * line.per_signal):.0%}"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", default="1,10,25,50,100", help="signals per call, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="time measured per size")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: whole numbers separated by commas, not {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: every size must be at least 1")
    url = _create_database()
    try:
        _provision(url, MODULES, key=None)
        print(table(uvloop.run(measure(url, sizes, args.seconds))))  # as the engine runs
    finally:
        _drop_database(url)


if __name__ == "__main__":
    main()
