"""bench/batch_cost.py: the cost model's line, the ingest scenario's signals, a real measurement;
the benchmarks' database creation when the server is not there."""

from __future__ import annotations

import socket

import asyncpg
import pytest

import bench.run as bench_run
from bench.batch_cost import MODULES, WARMUP_CALLS, SignalSource, SizeCost, fit, measure, table
from bench.load import account_name
from engine.account_directory import AccountDirectory
from engine.account_model import Account
from engine.ingest_types import SignalKind, Transport
from protocols.signal import Family


def test_fit_recovers_a_line_and_needs_two_sizes() -> None:
    line = fit([(1, 0.5 + 0.02), (10, 0.5 + 0.2), (50, 0.5 + 1.0), (100, 0.5 + 2.0)])
    assert line.fixed == pytest.approx(0.5)
    assert line.per_signal == pytest.approx(0.02)
    noisy = fit([(1, 1.0), (2, 3.0), (3, 2.0)])  # the least-squares line, not any two points
    assert noisy.per_signal == pytest.approx(0.5)
    assert noisy.fixed == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two different batch sizes"):
        fit([(50, 1.0), (50, 1.2)])


def test_table_reports_per_call_per_signal_and_the_split() -> None:
    results = [
        SizeCost(size=1, calls=100, backend_cpu_s=0.06, engine_cpu_s=0.03, wall_s=0.1),
        SizeCost(size=51, calls=10, backend_cpu_s=0.056, engine_cpu_s=0.013, wall_s=0.08),
    ]
    text = table(results)
    assert "| 1 | 100 | 0.600 | 600.0 | 0.300 | 300.0 | 1.000 |" in text
    assert "| 51 | 10 | 5.600 | 109.8 | 1.300 | 25.5 | 8.000 |" in text
    # PostgreSQL: 0.6 ms at 1, 5.6 ms at 51 → 0.5 ms + 100 µs per signal; at 50: 0.5/5.5
    assert "PostgreSQL: 0.500 ms per call + 100.0 µs per signal" in text
    assert "the fixed part is 9%" in text


def _directory() -> AccountDirectory:
    directory = AccountDirectory()
    directory.load([Account(account=account_name(i)) for i in range(MODULES)])
    return directory


def test_signal_source_gives_the_load_generators_signals_accepted_by_the_receiver() -> None:
    source = SignalSource(_directory(), first_signal=7)
    first, second = source.batch(MODULES), source.batch(MODULES)
    signals = first + second
    assert [s.account for s in first] == [account_name(i) for i in range(MODULES)]
    assert {s.kind for s in signals} == {SignalKind.EVENT}
    assert {s.transport for s in signals} == {Transport.TCP}
    assert all(len(s.events) == 1 and s.sent_at is not None for s in signals)
    families = [s.events[0].family for s in first]
    assert families.count(Family.CID) == families.count(Family.SIA) == MODULES // 2
    assert first[0].events[0].family != second[0].events[0].family  # alternating per module too
    keys = [s.dedupe_key for s in signals]
    assert None not in keys and len(set(keys)) == len(keys)
    assert [s.seq for s in (first[0], second[0])] == ["0009", "0010"]  # signals 8 and 9


async def test_measure_commits_every_signal_once_and_reports_each_size(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    await db_pool.executemany(
        "INSERT INTO accounts (account) VALUES ($1)", [(account_name(i),) for i in range(MODULES)]
    )
    results = await measure(database_url, [1, 4], 0.2)
    assert [r.size for r in results] == [1, 4]
    assert all(r.calls >= 1 and r.wall_s >= 0.2 and r.engine_cpu_s > 0 for r in results)
    assert all(r.backend_cpu_s >= 0 for r in results)
    stored = await db_pool.fetchval("SELECT count(*) FROM signals")
    assert stored == sum((WARMUP_CALLS + r.calls) * r.size for r in results)
    decisions = await db_pool.fetchval("SELECT count(*) FROM decisions")
    assert decisions == stored  # the engine's forwarding stage decided on every event
    # The same numbers again are duplicates, and the measurement refuses them.
    with pytest.raises(RuntimeError, match="not stored as new"):
        await measure(database_url, [2], 0.05)


def test_an_unreachable_server_is_one_clear_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(bench_run, "ADMIN_URL", f"postgresql://postgres@127.0.0.1:{port}/postgres")
    with pytest.raises(SystemExit) as exited:
        bench_run._create_database()
    message = str(exited.value)
    assert message.startswith(f"bench: cannot create a database on PostgreSQL at 127.0.0.1:{port}:")
    assert "BENCH_ADMIN_URL" in message
