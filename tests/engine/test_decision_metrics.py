"""alarmrelay_decisions_total counts each stored decision once, per (forward, reason), per batch."""

from __future__ import annotations

import asyncpg
from prometheus_client import REGISTRY

from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import IngestResult
from engine.ingest_writer import IngestWriter
from tests.engine.test_store_signals import event


def _count(forward: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "alarmrelay_decisions_total", {"forward": forward, "reason": reason}
    )
    return value or 0.0


async def test_a_batch_counts_each_stored_decision_once(db_pool: asyncpg.Pool) -> None:
    accounts = [
        Account(account="1234"),  # forwarding mode never (the default)
        Account(
            account="5678", forwarding=ForwardingSettings(mode=ForwardingMode.ALWAYS)
        ),  # always, but no station account: not forwarded, misconfigured
    ]
    await db_pool.executemany(
        "INSERT INTO accounts (account) VALUES ($1)", [(a.account,) for a in accounts]
    )
    directory = AccountDirectory()
    directory.load(accounts)
    writer = IngestWriter(db_pool, duplicate_window_s=600, forwarding=ForwardingStage(directory))
    never = _count("false", "mode_never")
    no_station = _count("false", "no_station_account")
    batch = [
        event("1234", "0001"),
        event("1234", "0002"),
        event("1234", "0002"),  # a copy in the same batch: stored once, decided once
        event("5678", "0001"),
    ]
    results = await writer(batch)
    assert results == [IngestResult.ACCEPTED] * 2 + [IngestResult.DUPLICATE, IngestResult.ACCEPTED]
    assert _count("false", "mode_never") == never + 2
    assert _count("false", "no_station_account") == no_station + 1

    # Sent again in a later batch: duplicates of stored signals, no new decisions counted.
    assert await writer(batch[:2]) == [IngestResult.DUPLICATE] * 2
    assert _count("false", "mode_never") == never + 2
    assert await db_pool.fetchval("SELECT count(*) FROM decisions") == 3
