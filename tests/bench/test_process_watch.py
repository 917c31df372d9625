"""bench/run.py's ProcessWatch: the PostgreSQL CPU of a run, from /proc, per process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import psutil
import pytest

import bench.run as bench_run
from bench.load import Result
from bench.run import Measured, ProcessWatch, works_for


async def _busy_backend(url: str) -> tuple[asyncpg.Connection, int]:
    """A connection whose backend has used some CPU (counted before any watch starts)."""
    conn = await asyncpg.connect(url)
    await conn.fetchval("SELECT count(*) FROM generate_series(1, 3000000)")
    return conn, int(await conn.fetchval("SELECT pg_backend_pid()"))


def test_a_backend_that_ends_during_the_watch_is_not_subtracted(database_url: str) -> None:
    """Machine-wide (no database given), a backend alive at the start and gone at the stop
    took all its CPU since it started off the sum: PostgreSQL's CPU came out negative."""
    with asyncio.Runner() as runner:
        conn, pid = runner.run(_busy_backend(database_url))
        assert psutil.Process(pid).cpu_times().user > 0.05
        watch = ProcessWatch(os.getpid(), include_postgres=True)
        watch.start()
        runner.run(conn.close())
    for _ in range(100):
        if not psutil.pid_exists(pid):
            break
        time.sleep(0.05)
    cpu = watch.stop()
    assert cpu["postgres"] >= 0.0


def test_the_mqtt_scenario_counts_its_own_databases_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not every postgres process on the machine (other sessions' test suites among them)."""
    measured: list[dict[str, Any]] = []
    databases: list[str] = []
    create = bench_run._create_database

    def create_and_remember() -> str:
        url = create()
        databases.append(bench_run._database_name(url))
        return url

    @contextlib.contextmanager
    def no_engine(cmd: list[str], **_: Any) -> Iterator[tuple[Any, str]]:
        yield psutil.Popen(["sleep", "30"]), "engine_ready"

    def measure(name: str, proc: Any, run: Any, **kwargs: Any) -> Measured:
        measured.append(kwargs)
        proc.kill()
        proc.wait()
        summary = Result(started=0.0, ended=1.0).summary()
        return Measured(name, summary, {"target": 0.0, "postgres": 0.0, "loadgen": 0.0}, 1.0)

    monkeypatch.setattr(bench_run, "_create_database", create_and_remember)
    monkeypatch.setattr(bench_run, "child", no_engine)
    monkeypatch.setattr(bench_run, "measure", measure)
    bench_run.scenario_mqtt(modules=2, duration=0.1, repeats=1)
    assert measured == [{"postgres": True, "database": databases[0]}]


def test_which_postgres_processes_work_for_the_benchmarks_database() -> None:
    ours, other = "alarmrelay_bench_abc123", "alarmrelay_test_1584259f"
    clients = {27155}

    def counted(title: str) -> bool:
        return works_for(title.split(), ours, clients=clients)

    assert counted(f"postgres {ours} 127.0.0.1(34422) INSERT")
    assert counted(f"postgres {ours} [local] idle")
    assert not counted(f"postgres {other} 127.0.0.1(34438) idle")
    assert counted("parallel worker for PID 27155")
    assert not counted("parallel worker for PID 27156")  # another database's query
    assert counted(f"autovacuum worker {ours}")
    assert not counted(f"autovacuum worker {other}")
    for background in ("walwriter", "checkpointer", "background writer", "autovacuum launcher"):
        assert counted(background)


async def test_another_databases_parallel_worker_is_not_counted(database_url: str) -> None:
    """A parallel query of another session (a test suite's) ran its worker on our cores'
    account: it was taken for a background process of the server."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET force_parallel_mode = on")
        await conn.execute("SET parallel_setup_cost = 0")
        query = asyncio.ensure_future(
            conn.execute("SELECT count(*) FROM generate_series(1, 5000000)")  # ~1 s in a worker
        )
        workers: list[int] = []
        for _ in range(100):
            workers = [
                p.pid
                for p in psutil.process_iter(["cmdline"])
                if "parallel worker for PID" in " ".join(p.info["cmdline"] or [])
            ]
            if workers or query.done():
                break
            await asyncio.sleep(0.02)
        counted = ProcessWatch(os.getpid(), include_postgres=True, database="not_this_one")
        seen = counted._postgres()
        await query
    finally:
        await conn.close()
    assert workers, "no parallel worker started"
    assert not set(workers) & set(seen)
