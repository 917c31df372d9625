"""engine/retention.py: decisions and finished deliveries go once their signal is past retention."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from engine import database
from engine.database import run_maintenance
from engine.retention import purge_past_retention
from engine.settings import RetentionSettings, load_settings
from tests.engine.test_ingest_e2e import running_engine, settings_for

OLD_DAY = "2000-01-01 12:00+00"


async def _old_partition(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS signals_20000101 PARTITION OF signals "
        "FOR VALUES FROM ('2000-01-01 00:00+00') TO ('2000-01-02 00:00+00')"
    )


async def _signal(pool: asyncpg.Pool, at: str, *, decisions: int = 1) -> int:
    """A stored event signal with ``decisions`` decisions; its id."""
    signal_id: int = await pool.fetchval(
        "INSERT INTO signals (received_at, account, transport, kind) "
        "VALUES ($1::text::timestamptz, 'A1', 'tcp', 'event') RETURNING id",
        at,
    )
    for i in range(decisions):
        await pool.execute(
            "INSERT INTO decisions (signal_id, event_index, received_at, account, forward, reason,"
            " category) VALUES ($1, $2, $3::text::timestamptz, 'A1', true, 'forwarded', 'alarms')",
            signal_id,
            i,
            at,
        )
    return signal_id


async def _delivery(pool: asyncpg.Pool, signal_id: int, at: str, state: str, index: int = 0) -> int:
    delivery_id: int = await pool.fetchval(
        "INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, priority,"
        " event, primary_receiver, seq, received_at, state) VALUES ($1, $2, 'A1', 'lane-1', '9001',"
        " 0, '{}', 'rx1', '0001', $3::text::timestamptz, $4) RETURNING id",
        signal_id,
        index,
        at,
        state,
    )
    return delivery_id


def _deleted_total(table: str) -> float:
    value = REGISTRY.get_sample_value("alarmrelay_retention_rows_deleted_total", {"table": table})
    return value or 0.0


async def test_rows_of_dropped_signals_go_pending_deliveries_and_live_signals_stay(
    db_pool: asyncpg.Pool,
) -> None:
    await _old_partition(db_pool)
    old = await _signal(db_pool, OLD_DAY, decisions=2)
    old_delivered = await _delivery(db_pool, old, OLD_DAY, "delivered")
    old_dead = await _delivery(db_pool, old, OLD_DAY, "dead", index=1)
    old_pending = await _delivery(db_pool, await _signal(db_pool, OLD_DAY), OLD_DAY, "pending")
    live = await _signal(db_pool, "now")
    live_delivered = await _delivery(db_pool, live, "now", "delivered")

    # Before the partition is dropped nothing is an orphan.
    assert await purge_past_retention(db_pool) == {"decisions": 0, "deliveries": 0}

    decisions_before = _deleted_total("decisions")
    assert await db_pool.fetchval("SELECT drop_signal_partitions_before(90)") >= 1
    deleted = await purge_past_retention(db_pool)

    assert deleted == {"decisions": 3, "deliveries": 2}
    assert [r["signal_id"] for r in await db_pool.fetch("SELECT signal_id FROM decisions")] == [
        live
    ]
    kept = {r["id"] for r in await db_pool.fetch("SELECT id FROM deliveries")}
    assert kept == {live_delivered, old_pending}  # a pending delivery is still owed
    assert old_delivered not in kept and old_dead not in kept
    assert _deleted_total("decisions") == decisions_before + 3


async def test_with_no_signal_left_every_finished_row_is_an_orphan(db_pool: asyncpg.Pool) -> None:
    await _old_partition(db_pool)
    old = await _signal(db_pool, OLD_DAY)
    await _delivery(db_pool, old, OLD_DAY, "delivered")
    pending = await _delivery(db_pool, old, OLD_DAY, "pending", index=1)
    await db_pool.fetchval("SELECT drop_signal_partitions_before(90)")
    assert await db_pool.fetchval("SELECT count(*) FROM signals") == 0

    assert await purge_past_retention(db_pool) == {"decisions": 1, "deliveries": 1}
    assert [r["id"] for r in await db_pool.fetch("SELECT id FROM deliveries")] == [pending]


async def test_purge_goes_in_batches_and_stops_at_its_budget(db_pool: asyncpg.Pool) -> None:
    await _old_partition(db_pool)
    for _ in range(5):
        await _signal(db_pool, OLD_DAY)
    await db_pool.fetchval("SELECT drop_signal_partitions_before(90)")

    ticks = itertools.count()
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    # The fake clock moves one second per reading: the start (0), then before each statement
    # (1, 3, 5) and after each full batch (2, 4): each statement "took" one second.
    spent = await purge_past_retention(
        db_pool, batch=2, budget_s=4.5, clock=lambda: float(next(ticks)), sleep=pause
    )
    assert spent == {"decisions": 4, "deliveries": 0}  # two statements of 2, then out of time
    assert pauses == [1.0, 1.0]  # a pause as long as each full batch's statement
    assert await db_pool.fetchval("SELECT count(*) FROM decisions") == 1

    assert await purge_past_retention(db_pool, batch=2, sleep=pause) == {
        "decisions": 1,
        "deliveries": 0,
    }
    assert await db_pool.fetchval("SELECT count(*) FROM decisions") == 0
    assert len(pauses) == 2  # a short batch is the last one: no pause after it


async def test_the_maintenance_task_purges_at_start(db_pool: asyncpg.Pool) -> None:
    await _old_partition(db_pool)
    await _signal(db_pool, OLD_DAY)
    await db_pool.fetchval("SELECT drop_signal_partitions_before(90)")
    task = asyncio.create_task(run_maintenance(db_pool, load_settings(None, {})))
    try:
        for _ in range(100):
            if await db_pool.fetchval("SELECT count(*) FROM decisions") == 0:
                break
            await asyncio.sleep(0.05)
        assert await db_pool.fetchval("SELECT count(*) FROM decisions") == 0
        assert not task.done()  # it sleeps until the next interval
    finally:
        task.cancel()


async def test_a_failed_maintenance_run_is_counted(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """A run the database fails (read-only here) is logged and retried at the next interval,
    and counted in alarmrelay_signal_maintenance_failures_total (AlarmrelaySignalMaintenanceStalled):
    run after run, partitions are neither created ahead nor dropped past retention."""
    read_only = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=1,
        server_settings={"default_transaction_read_only": "on"},
    )

    def failures() -> float:
        return REGISTRY.get_sample_value("alarmrelay_signal_maintenance_failures_total") or 0.0

    before = failures()
    settings = load_settings(None, {"ALARMRELAY_RETENTION__MAINTENANCE_INTERVAL_S": "0.05"})
    task = asyncio.create_task(run_maintenance(read_only, settings))
    try:
        async with asyncio.timeout(10):
            while failures() < before + 2:  # the purge at start, then a whole run
                await asyncio.sleep(0.02)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await read_only.close()


async def test_an_unforeseen_maintenance_error_restarts_the_loop(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error maintenance does not expect (not a database error) ended it for good, with the
    engine up and nothing said: partitions stopped being created and retention stopped. It is
    logged and counted (alarmrelay_background_task_failures_total{task="signal-maintenance"}),
    and the loop runs again."""
    calls = 0

    async def purge(pool: asyncpg.Pool) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("test: a bug in the purge")
        return 0

    monkeypatch.setattr(database, "purge_past_retention", purge)

    def failures() -> float:
        return (
            REGISTRY.get_sample_value(
                "alarmrelay_background_task_failures_total", {"task": "signal-maintenance"}
            )
            or 0.0
        )

    before = failures()
    settings = msgspec.structs.replace(
        settings_for(database_url),
        retention=RetentionSettings(maintenance_interval_s=0.05),
    )
    async with running_engine(settings):
        async with asyncio.timeout(10):
            while calls < 3:
                await asyncio.sleep(0.02)
    assert failures() == before + 1
