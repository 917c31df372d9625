"""Delivery outcomes (delivered / dead) written in batches: one UPDATE for many deliveries.

A delivery's outcome is recorded before its lane moves on (the dispatcher awaits
:meth:`OutcomeWriter.record`), so order per lane is unchanged. Batching is natural, without a
timer: the first outcome is written at once, and those that finish during that round trip go
together in the next statement. Rows are updated in id order, as the lease renewal does, so two
statements of one engine never wait on each other's rows in opposite orders.

An outcome that cannot be written after retries is left to the lease: it expires, and the row is
sent again with the same seq (the station deduplicates), as before batching.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg
import msgspec
import structlog

from engine.errors import DATABASE_ERRORS

log = structlog.get_logger("engine.delivery")

_UPDATE = """
UPDATE deliveries d SET state = t.state, receiver_used = t.receiver, family_sent = t.family,
    acked_at = t.acked_at, first_sent_at = COALESCE(d.first_sent_at, t.sent_at),
    lease_owner = NULL, lease_until = NULL, last_error = t.error,
    -- the primary's attempt that failed in this same delivery (its group failed over), appended
    -- to the history as the failure path appends its own (migration 0460)
    failed_attempts = CASE WHEN t.failed_receiver IS NULL THEN d.failed_attempts
        ELSE failed_attempts_append(d.failed_attempts, t.failed_at, t.failed_receiver,
                                    t.failed_error) END
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
            $6::timestamptz[], $7::text[], $8::timestamptz[], $9::text[], $10::text[])
     AS t(id, state, receiver, family, acked_at, sent_at, error, failed_at, failed_receiver,
          failed_error)
WHERE d.id = t.id AND d.id = ANY($1::bigint[])  -- (the ANY keeps the primary-key path in every plan)
  -- Written by the engine that holds the row only: one whose lease lapsed (stalled, cut off
  -- from the database) while another engine took the row over must not end that engine's lease
  -- nor overwrite the state it recorded (a late 'dead' over 'delivered'). Not "state =
  -- 'pending'": that matches the partial index deliveries_pending_lane, which the planner then
  -- scanned whole for the ids (every pending row, per statement: a backlog fed itself).
  AND d.state NOT IN ('delivered', 'dead')
  AND (d.lease_owner IS NULL OR $11::text IS NULL OR d.lease_owner = $11)
RETURNING d.id
"""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The final state of one delivery."""

    id: int
    state: str  # "delivered" | "dead"
    receiver: str
    family_sent: str | None
    acked_at: datetime | None
    sent_at: datetime
    error: str | None
    # When the primary failed within this delivery and its group failed over to the backup
    # (which then answered): that failed attempt, for the delivery's history.
    failed_at: datetime | None = None
    failed_receiver: str | None = None
    failed_error: str | None = None


class OutcomeWriter:
    """Collects outcomes and writes them in as few statements as the database round trips allow."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        owner: str | None = None,
        max_batch: int = 500,
        retries: int = 5,
    ) -> None:
        self._pool = pool
        self._owner = owner  # the dispatcher's lease owner: rows another engine holds are left
        self._max_batch = max_batch
        self._retries = retries
        self._pending: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.statements = 0

    async def record(self, outcome: Outcome) -> None:
        """Return once ``outcome`` is written (or given up on after the retries)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="delivery-outcomes")
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._write(sorted((o for o, _ in batch), key=lambda o: o.id))
            except Exception as exc:  # left to the lease, like an outcome the retries gave up on
                log.error("delivery_record_failed", error=repr(exc), rows=len(batch), exc_info=True)
            finally:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _write(self, outcomes: list[Outcome]) -> None:
        columns = (
            [o.id for o in outcomes],
            [o.state for o in outcomes],
            [o.receiver for o in outcomes],
            [o.family_sent for o in outcomes],
            [o.acked_at for o in outcomes],
            [o.sent_at for o in outcomes],
            [o.error for o in outcomes],
            [o.failed_at for o in outcomes],
            [o.failed_receiver for o in outcomes],
            [o.failed_error for o in outcomes],
            self._owner,
        )
        for attempt in range(self._retries):
            try:
                written = await self._pool.fetch(_UPDATE, *columns)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "delivery_record_failed", error=repr(exc), attempt=attempt, rows=len(outcomes)
                )
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                self.statements += 1
                if len(written) < len(outcomes):
                    done = {r["id"] for r in written}
                    log.warning(
                        "delivery_outcome_superseded",
                        ids=[o.id for o in outcomes if o.id not in done][:20],
                        reason="finished or taken over by another engine",
                    )
                return
