"""The pipeline's batch writer: one PostgreSQL transaction per batch.

Inside the transaction: the signals are inserted (duplicates detected, last contact updated), and
then each later stage that must commit atomically with the signal (forwarding decisions and the
delivery outbox) runs on the same connection. The pipeline acknowledges only after this returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from engine.ingest_types import InboundSignal, IngestResult
from engine.store.signals import insert_signals


class IngestWriter:
    """Commits a batch of signals in one transaction."""

    def __init__(self, pool: asyncpg.Pool, *, duplicate_window_s: int) -> None:
        self._pool = pool
        self._duplicate_window_s = duplicate_window_s

    async def __call__(self, signals: Sequence[InboundSignal]) -> Sequence[IngestResult]:
        async with self._pool.acquire() as conn, conn.transaction():
            return await insert_signals(conn, signals, duplicate_window_s=self._duplicate_window_s)
