"""Crash & Smash: an entry delay that is neither disarmed nor alarmed becomes an alarm.

An entry-delay start (the MQTT ``entry_delay`` field, or a configured DC-09 code) opens a pending
timer per account and partition, due at entry delay + dialer delay + grace. A disarm (opening) or
any alarm from that partition closes it (the entry is only logged). When it runs out the engine
commits a server-generated Crash & Smash alarm: a burglary alarm (Contact ID 130) on the entry
zone with the text "Crash & Smash", category Crash & Smash, through the normal policy and delivery.
Pending timers live in PostgreSQL and fire once (``FOR UPDATE SKIP LOCKED``, persisted state); a
fired entry names the alarm it raised (``fired_signal_id``, migration 0440). An entry received
when its partition's pending one is already due does not move that deadline: it waits behind it
(``next_*``, migration 0540) and takes its place when the first fires or is closed before it;
entries line up behind it the same way (``later_entries``, migration 0551).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg
import structlog
from prometheus_client import Counter, Gauge

from engine.account_model import Account
from engine.deadline_timer import TIMER_LAG, TIMERS_FIRED, Clock, DeadlineTimer, utc_now
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, SignalKind, Transport
from engine.store.ingest_batch import EntryClose, EntryOpen
from engine.store.signals import insert_signals_returning
from engine.timer_rows_held import HeldTimerRows, fire_round, on_held_lanes
from protocols.signal import Category, Classification, Event, Family

log = structlog.get_logger("engine.crash_smash")

OPENED = Counter(
    "alarmrelay_crash_smash_opened_total", "Entry delays that opened a Crash & Smash timer."
)
CLOSED = Counter(
    "alarmrelay_crash_smash_closed_total",
    "Crash & Smash timers closed in time, by reason.",
    ["reason"],
)
FIRED = Counter("alarmrelay_crash_smash_fired_total", "Crash & Smash alarms raised.")
HELD = Counter(
    "alarmrelay_crash_smash_held_total",
    "Entry delays that came while their partition's entry was past its deadline, not yet fired: "
    "they wait until it fires or closes, and it keeps its deadline.",
)
PENDING = Gauge("alarmrelay_crash_smash_pending", "Crash & Smash timers waiting.")

# A round: the due entries it can lock now, and (only when it got them all) the due entries it
# could not, held by another transaction, read in the same statement (engine/timer_rows_held.py).
DUE_SQL = """
WITH free AS MATERIALIZED (
    SELECT account, partition, zone, deadline FROM pending_entries
    WHERE state = 'pending' AND deadline <= $2
    ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED
)
SELECT account, partition, zone, deadline, false AS held FROM free
UNION ALL
(SELECT e.account, e.partition, e.zone, e.deadline, true FROM pending_entries e
 WHERE e.state = 'pending' AND e.deadline <= $2 AND (SELECT count(*) FROM free) < $1
   AND (e.account, e.partition) NOT IN (SELECT account, partition FROM free)
 ORDER BY e.deadline LIMIT $1)
"""
# The next deadline to wake for and the pending count; $1: the round's instant when that round
# found entries held (those are looked at again every max_sleep_s, not woken for: their
# deadlines have passed), else NULL.
NEXT_SQL = """
SELECT min(deadline) FILTER (WHERE $1::timestamptz IS NULL OR deadline > $1) AS next,
       count(*) AS n
FROM pending_entries WHERE state = 'pending'
"""

# A disarm closes the timer: Contact ID 4xx openings (Q=1) and SIA opening codes.
_SIA_OPENINGS = frozenset({"OP", "OA", "OG", "OQ", "OS", "OK", "OJ", "OR"})
# Arming codes whose Q=1 says nobody opened: late to open/close (404), deferred (405), failed to
# open or close (453, 454), auto-arm failed (455), partial arm (456), recent close (459), auto-arm
# time extended (464). A break-in during an entry delay must not be closed by one of these.
_CID_NOT_OPENINGS = frozenset({"404", "405", "453", "454", "455", "456", "459", "464"})


def crash_smash_alarm(
    account: str, partition: int, zone: int | None, now: datetime
) -> InboundSignal:
    """The server-generated Crash & Smash alarm for one partition."""
    event = Event(
        family=Family.CID,
        code="130",
        qualifier="1",
        zone=zone,
        partition=partition,
        text="Crash & Smash",
        classification=Classification(category=Category.CRASH_SMASH),
    )
    return InboundSignal(
        account=account,
        transport=Transport.SERVER,
        kind=SignalKind.EVENT,
        received_at=now,
        events=(event,),
        token="SERVER",
    )


def closes_entry(event: Event) -> str | None:
    """Why ``event`` closes a pending entry ("disarm" or "alarm"), or None."""
    cls = event.classification
    if cls.category in (Category.ALARMS, Category.PANICS) and not cls.restore:
        return "alarm"
    if (
        event.family is Family.CID
        and event.code.startswith("4")
        and cls.category is Category.ARMING
        and event.qualifier == "1"
        and event.code not in _CID_NOT_OPENINGS
    ):
        return "disarm"
    if event.family is Family.SIA and event.code in _SIA_OPENINGS:
        return "disarm"
    return None


def _until(sent: datetime | None, extra: timedelta) -> datetime | None:
    """The latest module time of a disarm that closes an entry sent at ``sent`` (None when the
    module gave no time, or one so near year 9999 that nothing later can be written)."""
    if sent is None:
        return None
    try:
        return sent + extra
    except OverflowError:
        return None


def _sent_before(close: datetime | None, entry: datetime | None) -> bool:
    """Whether the module's own times say a close was sent before an entry (both known)."""
    return close is not None and entry is not None and close < entry


class AccountLookup(Protocol):
    """Where the stage finds an account's own dialer delay (the engine's account directory)."""

    def get(self, account_number: str) -> Account | None: ...


class CrashSmashStage:
    """Plans each batch's entries: timers opened on entry delays, closed on disarm or alarm."""

    def __init__(
        self,
        *,
        dialer_delay_s: int,
        grace_s: int,
        entry_codes: frozenset[str] = frozenset(),
        entry_delay_s: int = 30,
        accounts: AccountLookup | None = None,
        opens: bool = True,
    ) -> None:
        self._opens = opens  # False (crash_smash.enabled off): entries are only closed
        self._extra = timedelta(seconds=dialer_delay_s + grace_s)
        self._grace_s = grace_s
        self._accounts = accounts  # per-account dialer delay overrides the default
        self._entry_codes = (
            entry_codes  # "cid:XYZ" / "sia:XX" codes that mean "entry delay started"
        )
        # A DC-09 entry code does not say how long the entry delay is: this is assumed.
        self._code_entry = timedelta(seconds=entry_delay_s)

    def _extra_for(self, account: str) -> timedelta:
        """Dialer delay + grace: the account's own dialer delay when it has one."""
        row = self._accounts.get(account) if self._accounts is not None else None
        if row is None or row.dialer_delay_s is None:
            return self._extra
        return timedelta(seconds=row.dialer_delay_s + self._grace_s)

    def _entry_from_event(self, event: Event) -> bool:
        """A configured entry code, as a new event (a Contact ID restore, Q=3, opens nothing)."""
        if event.family is Family.CID and event.qualifier not in ("1", None):
            return False
        return f"{event.family.value}:{event.code}" in self._entry_codes

    def plan(self, signals: Sequence[InboundSignal]) -> tuple[list[EntryOpen], list[EntryClose]]:
        """The entry delays the batch opens and closes, each tagged with its signal's position.

        The batch's write applies only those of signals it stores (a duplicate changes nothing).
        Within the batch a later disarm or alarm of a partition supersedes its entry, unless the
        module's own times say the close came first (a late copy of an old disarm); of a
        partition's closes, the one the module sent last is written. A close without a partition
        is kept beside them (it closes every partition): of it and a partition's own, the write
        applies to that partition's entry the one sent last, by the same order (migration 0550;
        each close carries its event's place in the signal for a tie of module times).
        """
        opens: dict[tuple[str, int], EntryOpen] = {}
        closes: dict[tuple[str, int | None], EntryClose] = {}
        keys: set[str] = set()
        for o, signal in enumerate(signals):
            if signal.transport is Transport.SERVER or signal.kind is not SignalKind.EVENT:
                continue
            dedupe = signal.dedupe_key
            if dedupe is not None:
                # A copy of an earlier signal of the batch (a retransmission, a resend) is
                # stored as that one: it is the same event, and its own position is never
                # written, so an open or close tagged with it would be dropped.
                if dedupe in keys:
                    continue
                keys.add(dedupe)
            account = signal.account
            sent = signal.sent_at
            if signal.entry_delay is not None:
                entry = signal.entry_delay
                extra = timedelta(seconds=entry.entry_delay_s) + self._extra_for(account)
                opens[(account, entry.partition)] = EntryOpen(
                    o=o,
                    a=account,
                    p=entry.partition,
                    z=entry.zone,
                    d=signal.received_at + extra,
                    s=sent,
                    u=_until(sent, extra),
                    r=signal.received_at,
                )
            for i, event in enumerate(signal.events):
                if self._entry_codes and self._entry_from_event(event):
                    partition = event.partition or 1
                    extra = self._code_entry + self._extra_for(account)
                    opens[(account, partition)] = EntryOpen(
                        o=o,
                        a=account,
                        p=partition,
                        z=event.zone,
                        d=signal.received_at + extra,
                        s=sent,
                        u=_until(sent, extra),
                        r=signal.received_at,
                    )
                    continue
                reason = closes_entry(event)
                if reason is not None:
                    # Of a partition's closes in the batch the one the module sent last is
                    # written (one without a module time closes whatever it finds: it stays);
                    # a late copy of an older one would close less, or nothing, in its place.
                    key = (account, event.partition)
                    kept = closes.get(key)
                    if kept is None or (kept.s is not None and not _sent_before(sent, kept.s)):
                        closes[key] = EntryClose(
                            o=o, a=account, p=event.partition, r=reason, s=sent, i=i
                        )
                    # an event after the entry in the same batch supersedes it, unless the
                    # module sent it before the entry
                    for key in [
                        k
                        for k, opened in opens.items()
                        if k[0] == account
                        and (event.partition is None or k[1] == event.partition)
                        and not _sent_before(sent, opened.s)
                    ]:
                        del opens[key]
        ordered_closes = sorted(closes.values(), key=lambda c: (c.a, -1 if c.p is None else c.p))
        if not self._opens:
            return [], ordered_closes
        return [opens[k] for k in sorted(opens)], ordered_closes

    @staticmethod
    def record(
        opened: Sequence[tuple[str, int]],
        closed: Sequence[tuple[str, int, str]],
        stale: Sequence[tuple[str, int]] = (),
        held: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Count and log what the batch's write opened and closed."""
        if opened:
            OPENED.inc(len(opened))
        for account, partition in held:
            # the partition's pending entry was already due: it keeps its deadline
            HELD.inc()
            log.info("crash_smash_entry_held", account=account, partition=partition)
        for account, partition, reason in closed:
            CLOSED.labels(reason).inc()
            log.info("crash_smash_closed", account=account, partition=partition, reason=reason)
        for account, partition in stale:
            # committed after a disarm the module sent later: it was closed before it got here
            CLOSED.labels("disarmed_before").inc()
            log.info("crash_smash_entry_already_disarmed", account=account, partition=partition)


class CrashSmashTimer(DeadlineTimer):
    """Fires expired entry delays as Crash & Smash alarms, each once."""

    name = "crash_smash"

    def __init__(
        self,
        pool: asyncpg.Pool,
        forwarding: ForwardingStage,
        *,
        duplicate_window_s: int,
        max_sleep_s: float = 1.0,
        on_enqueued: Callable[[], None] | None = None,
        batch: int = 200,
        clock: Clock = utc_now,
        settle_s: float = 0.0,
    ) -> None:
        super().__init__(max_sleep_s=max_sleep_s, clock=clock, settle_s=settle_s)
        self._pool = pool
        self._forwarding = forwarding
        self._duplicate_window_s = duplicate_window_s
        self._on_enqueued = on_enqueued
        self._batch = batch
        self._held = HeldTimerRows("crash_smash", report_after_s=max_sleep_s)

    async def seconds_to_next(self, now: datetime) -> float:
        settling = self._settling_s(now)
        held = bool(self._held)
        # The partial index ``pending_entries_due`` holds only pending timers (a handful), so the
        # count for the gauge costs as little as the minimum.
        with self._on_database():
            row = await self._pool.fetchrow(NEXT_SQL, now if held else None)
        PENDING.set(0 if row is None else row["n"])
        if row is None or row["next"] is None:
            return max(settling, self._max_sleep_s)
        wait = float((row["next"] - now).total_seconds())
        return max(settling, min(wait, self._max_sleep_s) if held else wait)

    async def fire_due(self, now: datetime) -> int:
        """Raise a Crash & Smash alarm for every entry timer due at ``now``, unless the engine is
        still settling (``crash_smash.grace_s`` after it started or its database came back: a
        disarm sent meanwhile could not be committed, and the module gets that long to send it
        again). An entry held by another transaction is left to a later round; the others fire
        now."""
        if self._settling_s(now) > 0:
            return 0
        with self._on_database():
            return await self._fire(now)

    async def _fire(self, now: datetime) -> int:
        return await fire_round(lambda lanes: self._round(now, lanes=lanes), self._held)

    async def _round(self, now: datetime, *, lanes: bool) -> int:
        """One transaction: the due entries fired, those held left (``lanes``: those whose lane
        another transaction holds too)."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(DUE_SQL, self._batch, now)
            free = [r for r in rows if not r["held"]]
            held: dict[Hashable, tuple[Mapping[str, object], datetime]] = {
                (r["account"], r["partition"]): (
                    {"account": r["account"], "partition": r["partition"], "lock": "row"},
                    r["deadline"],
                )
                for r in rows
                if r["held"]
            }
            due = await self._fireable(conn, free, held, now, lanes=lanes) if free else []
            enqueued = await self._commit_alarms(conn, due, now) if due else 0
        if len(free) < self._batch:  # else the held rows were not read: a later round will
            self._held.found(held, now)
        if not due:
            return 0
        for r in due:
            TIMER_LAG.labels("crash_smash").observe(max(0.0, (now - r["deadline"]).total_seconds()))
            log.warning(
                "crash_smash_alarm", account=r["account"], partition=r["partition"], zone=r["zone"]
            )
        FIRED.inc(len(due))
        TIMERS_FIRED.labels("crash_smash").inc(len(due))
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
        """The locked due entries to fire now: not those of terminated accounts (closed), nor,
        with ``lanes``, those whose alarm's delivery lane another transaction holds (added to
        ``held``, left pending)."""
        # An entry committed between a customer's termination and the engines learning of it
        # belongs to an account that no longer exists: closed, not raised.
        gone = {
            r["account"]
            for r in await conn.fetch(
                "UPDATE pending_entries e SET state = 'closed', closed_reason = 'terminated', "
                "closed_at = $2 WHERE e.account = ANY($1::text[]) AND e.state = 'pending' "
                "AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account = e.account) "
                "RETURNING e.account",
                sorted({r["account"] for r in due}),
                now,
            )
        }
        if gone:
            log.info("crash_smash_dropped_unknown_accounts", accounts=sorted(gone)[:20])
            due = [r for r in due if r["account"] not in gone]
        if not lanes:
            return due
        signals = [crash_smash_alarm(r["account"], r["partition"], r["zone"], now) for r in due]
        on_lanes = await on_held_lanes(conn, self._forwarding, signals)
        for i, lane in on_lanes.items():
            r = due[i]
            held[(r["account"], r["partition"])] = (
                {
                    "account": r["account"],
                    "partition": r["partition"],
                    "lock": "lane",
                    "lane": lane,
                },
                r["deadline"],
            )
        return [r for i, r in enumerate(due) if i not in on_lanes]

    async def _commit_alarms(
        self, conn: asyncpg.Connection, due: list[asyncpg.Record], now: datetime
    ) -> int:
        """Store the Crash & Smash alarms of ``due`` with decisions and outbox rows and mark the
        entries fired (in the caller's transaction); returns how many deliveries were enqueued."""
        signals = [crash_smash_alarm(r["account"], r["partition"], r["zone"], now) for r in due]
        stored = await insert_signals_returning(
            conn, signals, duplicate_window_s=self._duplicate_window_s
        )
        # An entry that came while this one was due (migration 0540) takes the row's place.
        await conn.execute(
            """
            UPDATE pending_entries e SET
                state = CASE WHEN e.next_deadline IS NULL THEN 'fired' ELSE 'pending' END,
                closed_at = CASE WHEN e.next_deadline IS NULL THEN $3::timestamptz END,
                fired_signal_id = t.s,
                zone = CASE WHEN e.next_deadline IS NULL THEN e.zone ELSE e.next_zone END,
                deadline = coalesce(e.next_deadline, e.deadline),
                opened_sent_at = CASE WHEN e.next_deadline IS NULL THEN e.opened_sent_at
                                      ELSE e.next_sent_at END,
                received_at = CASE WHEN e.next_deadline IS NULL THEN e.received_at
                                   ELSE e.next_received_at END,
                next_zone = NULL, next_deadline = NULL, next_sent_at = NULL,
                next_received_at = NULL
            FROM unnest($1::text[], $2::int[], $4::bigint[]) AS t(a, p, s)
            WHERE e.account = t.a AND e.partition = t.p
            """,
            [r["account"] for r in due],
            [r["partition"] for r in due],
            now,
            [row.signal_id for row in stored],
        )
        return await self._forwarding(conn, signals, stored)
