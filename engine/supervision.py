"""Supervision: Panel Not Responding when a module is silent, and its restore on the next contact.

Deadlines live in PostgreSQL (``supervision``). Every committed contact (event, NULL link test,
MQTT check-in, virtual check-in) moves its account's deadline to contact + interval + grace in the
same statement as the signal; if the account was in a miss, the engine then commits the
server-generated restore and ends the miss in one transaction (a crash in between leaves the
miss, and the next contact restores it). The deadline follows the account's latest contact
(``last_contact_at``, migration 0354), so a shorter interval (the 6-hour add-on, a per-account
value down to 200 s) applies from the next contact; changing an account's interval also moves its
pending deadline at once (a trigger, migration 0352).
:class:`SupervisionTimer` wakes for the earliest deadline only (the partial index
``supervision_due`` holds only rows that can fire: no scans), and in one transaction marks the
row missed and commits the Panel Not Responding signal with its decision and outbox row.
``FOR UPDATE SKIP LOCKED`` and the persisted ``missed`` flag make each miss fire exactly once
across engine processes and restarts. A timer raises nothing until ``supervision.grace_s`` after
its engine started or its database came back: a deadline that passed while no contact could be
committed is the engine's silence, not the module's, and the modules get that long to reach it.

Upstream the signal is Contact ID 356 (loss of central polling), Q=1 for the miss and Q=3 for the
restore (SIA YC / YK to a SIA-only receiver); it carries its own category (Panel Not Responding)
and is not re-classified.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from engine.account_directory import AccountDirectory
from engine.deadline_timer import TIMER_LAG, TIMERS_FIRED, Clock, DeadlineTimer, utc_now
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, SignalKind, Transport
from engine.store.signals import insert_signals_returning
from engine.timer_rows_held import HeldTimerRows, fire_round, on_held_lanes
from protocols.signal import Category, Classification, Event, Family

log = structlog.get_logger("engine.supervision")

MISSES = Counter(
    "alarmrelay_supervision_misses_total", "Panel Not Responding raised (a module stayed silent)."
)
RESTORES = Counter(
    "alarmrelay_supervision_restores_total", "Panel Not Responding restored by a contact."
)
SUPERVISED = Gauge(
    "alarmrelay_supervised_modules",
    "Modules with a pending supervision deadline (counted every supervised_count_s, not per tick).",
)

PNR_CODE = "356"

# A round: the due rows it can lock now, and (only when it got them all) the due rows it could
# not, held by another transaction, read in the same statement (engine/timer_rows_held.py).
DUE_SQL = """
WITH free AS MATERIALIZED (
    SELECT account, deadline FROM supervision
    WHERE NOT missed AND deadline <= $2
    ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED
)
SELECT account, deadline, false AS held FROM free
UNION ALL
(SELECT s.account, s.deadline, true FROM supervision s
 WHERE NOT s.missed AND s.deadline <= $2 AND (SELECT count(*) FROM free) < $1
   AND s.account NOT IN (SELECT account FROM free)
 ORDER BY s.deadline LIMIT $1)
"""
# The next deadline to wake for; $1: after the round's instant, when that round found rows held
# (those are looked at again every max_sleep_s, not woken for: their deadlines have passed).
NEXT_SQL = "SELECT min(deadline) FROM supervision WHERE NOT missed AND deadline > $1"
_EVER = datetime.min.replace(tzinfo=UTC)  # $1 when no row was held: every pending deadline


def panel_not_responding(account: str, now: datetime, *, restore: bool) -> InboundSignal:
    """The server-generated Panel Not Responding signal (or its restore) for ``account``."""
    event = Event(
        family=Family.CID,
        code=PNR_CODE,
        qualifier="3" if restore else "1",
        text="Panel Not Responding restored" if restore else "Panel Not Responding",
        classification=Classification(category=Category.PANEL_NOT_RESPONDING, restore=restore),
    )
    return InboundSignal(
        account=account,
        transport=Transport.SERVER,
        kind=SignalKind.EVENT,
        received_at=now,
        events=(event,),
        token="SERVER",
    )


class SupervisionStage:
    """Plans each batch's deadline moves; commits the restores of accounts found in a miss."""

    def __init__(self, directory: AccountDirectory, *, grace_s: int) -> None:
        self._directory = directory
        self._grace = timedelta(seconds=grace_s)

    def deadlines(self, signals: Sequence[InboundSignal]) -> list[tuple[str, datetime]]:
        """(account, new deadline) for every account the batch heard from, sorted by account.

        Any valid contact counts (events, duplicates, NULL link tests, MQTT check-ins); rejected
        payloads and server-generated signals do not. The batch's write moves each deadline on
        (never back) and reports the accounts that were in a miss (:meth:`restore`).
        """
        latest: dict[str, datetime] = {}
        for signal in signals:
            if signal.transport is Transport.SERVER or signal.kind is SignalKind.REJECTED:
                continue
            seen = latest.get(signal.account)
            if seen is None or signal.received_at > seen:
                latest[signal.account] = signal.received_at
        out = []
        for account in sorted(latest):
            row = self._directory.get(account)
            if row is not None:
                interval = timedelta(seconds=row.supervision_interval_s)
                out.append((account, latest[account] + interval + self._grace))
        return out

    async def restore(
        self, conn: asyncpg.Connection, accounts: Sequence[str], now: datetime
    ) -> list[InboundSignal]:
        """End the misses of ``accounts`` (still missed: another engine may have been first) and
        return their restore signals, to be committed in the same transaction."""
        rows = await conn.fetch(
            "UPDATE supervision SET missed = false, missed_at = NULL, updated_at = now() "
            "WHERE account = ANY($1::text[]) AND missed RETURNING account",
            sorted(accounts),
        )
        out = [panel_not_responding(r["account"], now, restore=True) for r in rows]
        if out:
            RESTORES.inc(len(out))
            for signal in out:
                log.info("supervision_restored", account=signal.account)
        return out


class SupervisionTimer(DeadlineTimer):
    """Fires due supervision deadlines, each exactly once."""

    name = "supervision"

    def __init__(
        self,
        pool: asyncpg.Pool,
        forwarding: ForwardingStage,
        *,
        duplicate_window_s: int,
        max_sleep_s: float = 5.0,
        on_enqueued: Callable[[], None] | None = None,
        batch: int = 500,
        clock: Clock = utc_now,
        supervised_count_s: float = 60.0,
        settle_s: float = 0.0,
    ) -> None:
        super().__init__(max_sleep_s=max_sleep_s, clock=clock, settle_s=settle_s)
        self._pool = pool
        self._forwarding = forwarding
        self._duplicate_window_s = duplicate_window_s
        self._on_enqueued = on_enqueued
        self._batch = batch
        self._count_every_s = supervised_count_s
        self._counted_at = float("-inf")
        self._held = HeldTimerRows("supervision", report_after_s=max_sleep_s)

    async def seconds_to_next(self, now: datetime) -> float:
        """The earliest pending deadline (one probe of the ``supervision_due`` index), or the end
        of the settling time when that is later. Rows the last round found held are looked at
        again after ``max_sleep_s``."""
        settling = self._settling_s(now)
        held = bool(self._held)
        with self._on_database():
            nearest = await self._pool.fetchval(NEXT_SQL, now if held else _EVER)
            if time.monotonic() - self._counted_at >= self._count_every_s:
                # Counting a million rows is not free: the gauge is refreshed once a minute, never per tick.
                SUPERVISED.set(
                    await self._pool.fetchval("SELECT count(*) FROM supervision WHERE NOT missed")
                )
                self._counted_at = time.monotonic()
        if nearest is None:
            return max(settling, self._max_sleep_s)
        wait = float((nearest - now).total_seconds())
        return max(settling, min(wait, self._max_sleep_s) if held else wait)

    async def fire_due(self, now: datetime) -> int:
        """Raise Panel Not Responding for every deadline due at ``now`` (one transaction per batch),
        unless the engine is still settling (:meth:`_settling_s`). A row held by another
        transaction is left to a later round; the others fire now."""
        if self._settling_s(now) > 0:
            return 0
        with self._on_database():
            return await self._fire(now)

    async def _fire(self, now: datetime) -> int:
        return await fire_round(lambda lanes: self._round(now, lanes=lanes), self._held)

    async def _round(self, now: datetime, *, lanes: bool) -> int:
        """One transaction: the due rows fired, those held left (``lanes``: those whose lane
        another transaction holds too)."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(DUE_SQL, self._batch, now)
            free = [r for r in rows if not r["held"]]
            held: dict[Hashable, tuple[Mapping[str, object], datetime]] = {
                r["account"]: ({"account": r["account"], "lock": "row"}, r["deadline"])
                for r in rows
                if r["held"]
            }
            due = await self._fireable(conn, free, held, now, lanes=lanes) if free else []
            enqueued = await self._commit_misses(conn, due, now) if due else 0
        if len(free) < self._batch:  # else the held rows were not read: a later round will
            self._held.found(held, now)
        if not due:
            return 0
        for row in due:
            TIMER_LAG.labels("supervision").observe(
                max(0.0, (now - row["deadline"]).total_seconds())
            )
            log.warning(
                "panel_not_responding", account=row["account"], deadline=row["deadline"].isoformat()
            )
        MISSES.inc(len(due))
        TIMERS_FIRED.labels("supervision").inc(len(due))
        self.fired += len(due)
        if enqueued and self._on_enqueued is not None:
            self._on_enqueued()
        return len(due)

    async def _fireable(
        self,
        conn: asyncpg.Connection,
        due: list[asyncpg.Record],
        held: dict[Hashable, tuple[Mapping[str, object], datetime]],
        now: datetime,
        *,
        lanes: bool,
    ) -> list[asyncpg.Record]:
        """The locked due rows to fire now: not those of terminated accounts (dropped), nor, with
        ``lanes``, those whose delivery lane another transaction holds (added to ``held``, left
        pending)."""
        # A contact committed between a customer's termination and the engines learning of
        # it writes a deadline for an account that no longer exists: dropped, not raised (its
        # miss would reach a new customer given the number, as a restore with no miss).
        gone = {
            r["account"]
            for r in await conn.fetch(
                "DELETE FROM supervision s WHERE s.account = ANY($1::text[]) "
                "AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account = s.account) "
                "RETURNING s.account",
                [r["account"] for r in due],
            )
        }
        if gone:
            log.info("supervision_dropped_unknown_accounts", accounts=sorted(gone)[:20])
            due = [r for r in due if r["account"] not in gone]
        if not lanes:
            return due
        signals = [panel_not_responding(r["account"], now, restore=False) for r in due]
        on_lanes = await on_held_lanes(conn, self._forwarding, signals)
        for i, lane in on_lanes.items():
            account = due[i]["account"]
            held[account] = ({"account": account, "lock": "lane", "lane": lane}, due[i]["deadline"])
        return [r for i, r in enumerate(due) if i not in on_lanes]

    async def _commit_misses(
        self, conn: asyncpg.Connection, due: list[asyncpg.Record], now: datetime
    ) -> int:
        """Mark ``due`` missed and store their Panel Not Responding with decisions and outbox
        rows (in the caller's transaction); returns how many deliveries were enqueued."""
        accounts = [r["account"] for r in due]
        await conn.execute(
            "UPDATE supervision SET missed = true, missed_at = $2, updated_at = now() WHERE account = ANY($1::text[])",
            accounts,
            now,
        )
        signals = [panel_not_responding(a, now, restore=False) for a in accounts]
        stored = await insert_signals_returning(
            conn, signals, duplicate_window_s=self._duplicate_window_s
        )
        return await self._forwarding(conn, signals, stored)
