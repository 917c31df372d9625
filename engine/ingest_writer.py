"""The pipeline's batch writer: each batch committed with its decisions and outbox rows.

The batch is planned in Python (signal rows, contacts, supervision deadlines, Crash & Smash
entries, forwarding decisions, outbox rows) and written by one call of ``ingest_batch``
(engine/store/ingest_batch.py): one round trip, one commit. The pipeline acknowledges only after
this returns, so an ACKed signal always has its decision and its place in the delivery queue.

Two follow-ups take a transaction of their own, both rare:

* batches whose decisions need an account's phone-line state lock those state rows first and
  decide on the stored signals in the same transaction (:meth:`IngestWriter._careful`);
* a contact from an account in a Panel Not Responding miss: after the batch, the restore is
  committed and the miss ended together (a crash in between leaves the miss, so the next contact
  restores it). The restore is stamped with ``clock``, the clock the supervision timer raises the
  miss with (STYLE.md #2: the runtime owns the clock, tests pass a fake one).

Rows leased to this engine go to its dispatcher right after the commit (``on_leased``).

No lock is waited for longer than ``INGEST_LOCK_TIMEOUT``: past it the batch is not committed
and raises :class:`AccountsHeld` with the accounts whose rows, or the lanes of whose outbox rows
(their advisory lock), another transaction holds, which the pipeline commits apart from the
others (engine/pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence, Set

import asyncpg
import structlog

from engine.crash_smash import CrashSmashStage
from engine.deadline_timer import Clock, utc_now
from engine.errors import is_database_unreachable
from engine.forwarding_stage import ForwardingStage, Handover, OwnedDelivery
from engine.ingest_types import AccountsHeld, InboundSignal, IngestResult, SignalKind
from engine.store.held_rows import held_accounts, held_lanes
from engine.store.ingest_batch import (
    INGEST_LOCK_TIMEOUT,
    BatchDone,
    BatchWrite,
    OutboxRow,
    write_batch,
)
from engine.store.signals import SignalRows
from engine.supervision import SupervisionStage

log = structlog.get_logger("engine.ingest")

_LOCK_TIMEOUT = f"SET LOCAL lock_timeout = '{INGEST_LOCK_TIMEOUT}'"


def _add_lanes(lanes: dict[str, set[str]], outbox: Iterable[OutboxRow]) -> None:
    """Record the lane of each outbox row with the row's account."""
    for row in outbox:
        lanes.setdefault(row.lane, set()).add(row.a)


class IngestWriter:
    """Commits a batch of signals (and their decisions and outbox rows)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        duplicate_window_s: int,
        forwarding: ForwardingStage | None = None,
        supervision: SupervisionStage | None = None,
        crash_smash: CrashSmashStage | None = None,
        on_enqueued: Callable[[], None] | None = None,
        on_leased: Callable[[Iterable[OwnedDelivery]], None] | None = None,
        on_blocked: Callable[[Iterable[str]], None] | None = None,
        on_uncertain: Callable[[Iterable[str]], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._duplicate_window_s = duplicate_window_s
        self._forwarding = forwarding
        self._supervision = supervision
        self._crash_smash = crash_smash
        self._on_enqueued = on_enqueued
        self._on_leased = on_leased
        self._on_blocked = on_blocked
        self._on_uncertain = on_uncertain
        # lanes found held by another transaction (their lock), each with the accounts of the
        # outbox rows that waited for it: looked at again with those accounts' rows
        self._held_lanes: dict[str, set[str]] = {}

    async def __call__(self, signals: Sequence[InboundSignal]) -> Sequence[IngestResult]:
        rows = SignalRows(signals)
        forwarding = self._forwarding
        base = self._base_plan(signals, rows)
        handover = Handover() if self._on_leased is not None else None
        careful = forwarding.state_accounts(signals) if forwarding is not None else []
        # the lanes of the outbox rows the commit writes (and may lease to us), each with the
        # accounts of its rows
        lanes: dict[str, set[str]] = {}
        try:
            async with self._pool.acquire() as conn:
                if careful:
                    done = await self._careful(conn, signals, base, careful, handover, lanes)
                else:
                    plan = None
                    if forwarding is not None:
                        events = [o for o in rows.sent if signals[o].kind is SignalKind.EVENT]
                        plan = forwarding.plan(signals, events)
                        base.decisions, base.outbox = plan.decisions, plan.outbox
                        base.owner, base.lease_s = forwarding.owner, forwarding.lease_s
                        _add_lanes(lanes, plan.outbox)
                    done = await write_batch(
                        conn, base, duplicate_window_s=self._duplicate_window_s
                    )
                    if plan is not None and forwarding is not None:
                        forwarding.finish(plan, done, handover)
        except asyncpg.LockNotAvailableError as exc:
            # A row of one of the batch's accounts, or a lane of its outbox rows, was held past
            # INGEST_LOCK_TIMEOUT (nothing committed): name the accounts one of whose rows or
            # lanes another transaction holds now, for the pipeline to set aside.
            raise AccountsHeld(
                await self.held_accounts([s.account for s in signals], lanes)
            ) from exc
        except Exception as exc:
            if lanes and self._on_uncertain is not None and is_database_unreachable(exc):
                # The connection went during the call: the commit may have happened, leasing
                # us rows nobody hands to the dispatcher. Its lanes must wait for them.
                self._on_uncertain(lanes)
            raise
        if self._crash_smash is not None:
            self._crash_smash.record(done.opened, done.closed, done.stale, done.held)
        self._hand_over(handover, done)
        if done.restores:
            try:
                await self._restore(done.restores)
            except Exception as exc:
                # The batch is committed and its signals are answered as such; the restore is a
                # transaction of its own. Failing it leaves the miss, and the next contact
                # restores it (docs/forwarding.md).
                log.warning(
                    "supervision_restore_failed",
                    accounts=done.restores[:20],
                    error=repr(exc),
                    exc_info=not isinstance(exc, asyncpg.PostgresError | OSError),
                )
        return [s.result for s in done.stored]

    async def held_accounts(
        self, accounts: Sequence[str], lanes: Mapping[str, Set[str]] | None = None
    ) -> frozenset[str]:
        """Those of ``accounts`` a row of which, or a lane of whose outbox rows, another
        transaction holds now (not waited for). ``lanes``: the outbox lanes of a commit that
        failed past its lock timeout, each with its rows' accounts; without (the pipeline asks
        of the accounts it set aside before trying them again), the lanes found held earlier."""
        wanted = set(accounts)
        if lanes is None:
            lanes = {lane: owners for lane, owners in self._held_lanes.items() if owners & wanted}
        async with self._pool.acquire() as conn:
            held = await held_accounts(conn, accounts)
            busy = await held_lanes(conn, lanes)
        for lane, owners in lanes.items():
            if lane in busy:
                self._held_lanes[lane] = set(owners)
            else:
                self._held_lanes.pop(lane, None)
        return held | {a for lane in busy for a in lanes[lane] if a in wanted}

    def _base_plan(self, signals: Sequence[InboundSignal], rows: SignalRows) -> BatchWrite:
        plan = BatchWrite(signals=rows)
        if self._supervision is not None:
            plan.supervision = self._supervision.deadlines(signals)
        if self._crash_smash is not None:
            plan.opens, plan.closes = self._crash_smash.plan(signals)
        return plan

    async def _careful(
        self,
        conn: asyncpg.Connection,
        signals: Sequence[InboundSignal],
        base: BatchWrite,
        accounts: list[str],
        handover: Handover | None,
        lanes: dict[str, set[str]],
    ) -> BatchDone:
        """Lock the state rows, store, decide on what was stored, save the state: one transaction."""
        forwarding = self._forwarding
        assert forwarding is not None
        async with conn.transaction():
            # The state rows are locked before the call: they wait no longer than it does.
            await conn.execute(_LOCK_TIMEOUT)
            states = await forwarding.lock_states(conn, accounts)
            done = await write_batch(conn, base, duplicate_window_s=self._duplicate_window_s)
            kept = done.kept
            events = [o for o in sorted(kept) if signals[o].kind is SignalKind.EVENT]
            plan = forwarding.plan(signals, events, ids=kept, states=states)
            _add_lanes(lanes, plan.outbox)
            enqueued = await write_batch(
                conn,
                BatchWrite(
                    decisions=plan.decisions,
                    outbox=plan.outbox,
                    owner=forwarding.owner,
                    lease_s=forwarding.lease_s,
                ),
                duplicate_window_s=self._duplicate_window_s,
            )
            await forwarding.save_states(conn, plan.states)
        forwarding.finish(plan, enqueued, handover)
        done.deliveries = enqueued.deliveries
        return done

    async def _restore(self, accounts: list[str]) -> None:
        """Commit the Panel Not Responding restores of accounts found in a miss."""
        assert self._supervision is not None
        handover = Handover() if self._on_leased is not None else None
        forwarding = self._forwarding
        fplan = None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # Awaited before the batch's ACKs: a supervision row held elsewhere must not
                # keep them waiting (the restore then fails, the next contact restores).
                await conn.execute(_LOCK_TIMEOUT)
                restores = await self._supervision.restore(conn, accounts, self._clock())
                if not restores:
                    return  # another engine restored them first
                rows = SignalRows(restores)
                plan = BatchWrite(signals=rows)
                if forwarding is not None:
                    fplan = forwarding.plan(restores, rows.sent)
                    plan.decisions, plan.outbox = fplan.decisions, fplan.outbox
                    plan.owner, plan.lease_s = forwarding.owner, forwarding.lease_s
                done = await write_batch(conn, plan, duplicate_window_s=self._duplicate_window_s)
        except Exception as exc:
            # As for the batch (__call__): the restores' rows may be committed, leased to us
            # and never handed over; their lanes must wait for them, or the account's next
            # signal would reach the station before its restore.
            lanes = {row.lane for row in fplan.outbox} if fplan is not None else set()
            if lanes and self._on_uncertain is not None and is_database_unreachable(exc):
                self._on_uncertain(lanes)
            raise
        if fplan is not None and forwarding is not None:
            forwarding.finish(fplan, done, handover)
        self._hand_over(handover, done)

    def _hand_over(self, handover: Handover | None, done: BatchDone) -> None:
        if handover is not None:
            # Straight to the local dispatcher, right after the commit (ACKs go out meanwhile).
            if handover.leased and self._on_leased is not None:
                self._on_leased(handover.leased)
            if handover.unleased_lanes and self._on_blocked is not None:
                self._on_blocked(handover.unleased_lanes)
        elif done.deliveries and self._on_enqueued is not None:
            self._on_enqueued()  # wake the local dispatcher right after the commit
