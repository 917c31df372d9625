"""The pipeline's batch writer: one PostgreSQL transaction per batch.

Inside the transaction: the signals are inserted (duplicates detected, last contact updated), then
every new event gets its forwarding decision and, when forwarded, its outbox row. The pipeline
acknowledges only after this returns, so an ACKed signal always has its decision and its place in
the delivery queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from engine.crash_smash import CrashSmashStage
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, IngestResult
from engine.store.signals import StoredSignal, insert_signals_returning
from engine.supervision import SupervisionStage


class IngestWriter:
    """Commits a batch of signals (and their decisions and outbox rows) in one transaction."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        duplicate_window_s: int,
        forwarding: ForwardingStage | None = None,
        supervision: SupervisionStage | None = None,
        crash_smash: CrashSmashStage | None = None,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._duplicate_window_s = duplicate_window_s
        self._forwarding = forwarding
        self._supervision = supervision
        self._crash_smash = crash_smash
        self._on_enqueued = on_enqueued

    async def __call__(self, signals: Sequence[InboundSignal]) -> Sequence[IngestResult]:
        enqueued = 0
        async with self._pool.acquire() as conn, conn.transaction():
            stored = await insert_signals_returning(
                conn, signals, duplicate_window_s=self._duplicate_window_s
            )
            all_signals: Sequence[InboundSignal] = signals
            all_stored: Sequence[StoredSignal] = stored
            if self._supervision is not None:
                # A contact from an account in a Panel Not Responding miss commits its restore too.
                restores = await self._supervision(conn, signals, stored)
                if restores:
                    restored = await insert_signals_returning(
                        conn, restores, duplicate_window_s=self._duplicate_window_s
                    )
                    all_signals = [*signals, *restores]
                    all_stored = [*stored, *restored]
            if self._crash_smash is not None:
                await self._crash_smash(conn, signals, stored)
            if self._forwarding is not None:
                enqueued = await self._forwarding(conn, all_signals, all_stored)
        if enqueued and self._on_enqueued is not None:
            self._on_enqueued()  # wake the local dispatcher right after the commit
        return [s.result for s in stored]
