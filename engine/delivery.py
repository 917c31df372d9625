"""The delivery dispatcher: drains the outbox to station receivers, in order per lane.

Two ways a row reaches this engine, both as a lease on the row:

* **Fast path.** The ingest transaction inserts a forwarded signal's outbox row already leased to
  this engine when its lane holds nothing pending that is not ours (engine/forwarding_stage.py).
  After the commit the writer hands the row over (:meth:`Dispatcher.adopt`): no claim query, no
  wake-up, the station gets the signal within a few milliseconds of the module's ACK.
* **Claim loop.** Rows nobody holds (retries after a failure, rows another engine left when it
  died, rows committed while their lane was busy elsewhere) are claimed in one short transaction:
  the *head* (lowest id) pending row of ready lanes, most urgent first, ``FOR UPDATE SKIP
  LOCKED``, with a lease, together with up to ``claim_behind`` rows queued behind each head (up
  to the first one not free to take), so a backlog (a station back after an outage) drains a
  lane at a time instead of one claim query per row. A lane's next row is never a head while
  the previous one is pending.

Rows held in memory wait per lane (one in flight per lane: stop-and-wait order), and lanes wait
for a free slot most urgent first. Every held row's lease is renewed. When a head fails (no
answer), its lane's other rows are released to the claim loop, so nothing overtakes it. If an
engine dies mid-send its leases expire and another engine sends the rows again with the same
DC-09 sequence number (the documented crash window: a station ACK received but not yet
recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import structlog

from engine import metrics
from engine.background_task import restart_on_failure
from engine.bounded_connection import bounded_connection
from engine.claimed_rows import Unreadable, read_claimed
from engine.errors import DATABASE_ERRORS, is_database_unreachable
from engine.forwarding_stage import OwnedDelivery
from engine.outcome_writer import Outcome, OutcomeWriter
from engine.voice_session import VoiceCommand, VoiceCommandProblem, VoiceReceiver, VoiceSessions
from protocols.signal import Event

log = structlog.get_logger("engine.delivery")

CLAIM_SQL = """
WITH heads AS (
    SELECT DISTINCT ON (lane) id FROM deliveries WHERE state = 'pending' ORDER BY lane, id
), ready AS (
    SELECT d.id, d.lane, d.attempts FROM deliveries d JOIN heads h ON d.id = h.id
    WHERE d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now())
    ORDER BY d.priority, d.id
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
), behind AS (
    -- The rows queued behind each head claimed here, in lane order, up to $4 of them and up to
    -- the first one that is not free to take (leased elsewhere, or waiting for a retry): only
    -- the engine holding the head's lock takes them, and they go out after it, from memory.
    -- A head that was tried before goes alone: its receiver may still be down, and taking and
    -- handing back its whole run at every retry would only write rows for nothing.
    SELECT n.id FROM (SELECT * FROM ready WHERE attempts = 0) r CROSS JOIN LATERAL (
        SELECT q.id, bool_and(q.free) OVER (ORDER BY q.id) AS prefix
        FROM (SELECT x.id, x.next_attempt_at <= now()
                           AND (x.lease_until IS NULL OR x.lease_until < now()) AS free
              FROM deliveries x
              WHERE x.lane = r.lane AND x.state = 'pending' AND x.id > r.id
              ORDER BY x.id LIMIT $4) q
    ) n
    WHERE n.prefix
), claimed AS (
    SELECT id FROM ready UNION ALL SELECT id FROM behind
)
UPDATE deliveries d SET lease_owner = $2, lease_until = now() + $3::interval, attempts = d.attempts + 1
FROM claimed WHERE d.id = claimed.id
RETURNING d.id, d.account, d.lane, d.station_account, d.priority, d.event, d.primary_receiver,
          d.backup_receiver, d.seq, d.attempts, d.received_at, d.two_way_voice, d.signal_id
"""

_LOCK_LANE_SQL = "SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))"

# $6-$8: the primary's failure when this attempt failed over to the backup (NULL otherwise), put
# in the history before the backup's.
_FAILED_SQL = """
UPDATE deliveries SET last_error = $2, receiver_used = $3, next_attempt_at = now() + $4::interval,
    first_sent_at = COALESCE(first_sent_at, $5), lease_owner = NULL, lease_until = NULL,
    failed_attempts = failed_attempts_append(
        CASE WHEN $7::text IS NULL THEN failed_attempts
             ELSE failed_attempts_append(failed_attempts, $6::timestamptz, $7::text, $8::text) END,
        now(), $3::text, $2::text)
WHERE id = $1
  -- Only while the row is still leased to this engine under the lease this attempt was made
  -- under ($10: the attempts the claim or commit leased it with; a claim adds one, a hand-back
  -- takes it off again, so the owner must match too). A late write (this engine's lease lapsed,
  -- stalled or cut off from the database) must not end another engine's lease, touch a row that
  -- is finished, nor add a second failure to the history of a row another engine claimed and
  -- handed back or failed meanwhile, or that this engine claimed again since. Also a retry of
  -- this transaction whose first try committed (its reply lost) finds the row unleased: the
  -- failure is not recorded twice. (Written so that it does not match the partial index on
  -- pending rows: the primary key finds the row.)
  AND state NOT IN ('delivered', 'dead') AND lease_owner = $9 AND attempts = $10
RETURNING id
"""

# Every row of the lane this engine holds, behind a failed head: back to the outbox, unsent.
_RELEASE_LANE_SQL = """
UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0)
WHERE lane = $1 AND state = 'pending' AND lease_owner = $2 AND id <> $3
RETURNING id
"""

# Rows handed back unsent: their lease goes, and so does the attempt their lease counted.
_RELEASE_SQL = """
UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0)
WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending'
"""


# Stopping: every row this engine still holds a lease on, back to the outbox unsent.
_RELEASE_OWNED_SQL = """
UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0)
WHERE lease_owner = $1 AND state = 'pending'
"""

# Held rows whose lease has less than $4 left: a new lease. Not the rows another transaction has
# locked (this engine's failure record or outcome of that row, an operator in psql): the round
# would wait for that lock, and every other held row's lease with it (cut at its bound and tried
# again, it waited again); such a row is renewed by a later round, once free.
_RENEW_SQL = """
UPDATE deliveries SET lease_until = now() + $3::interval
WHERE id IN (
    SELECT id FROM deliveries
    WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending'
      AND lease_until < now() + $4::interval
    FOR NO KEY UPDATE SKIP LOCKED
)
"""


def _bound(row: OwnedDelivery) -> Any:
    """The delivery's logger (bound only where something is logged: not per success)."""
    return log.bind(
        delivery=row.id, account=row.account, station_account=row.station_account, seq=row.seq
    )


class Attempt(Protocol):
    """What a receiver group reports for one delivery (receivers.DeliveryAttempt)."""

    outcome: str  # "acked" | "duh" | "failed" | "unsendable"
    receiver: str
    seq: str
    error: str | None
    family_sent: str | None


class ReceiverGroupLike(Protocol):
    async def deliver(
        self, *, account: str, event: Event, seq: str | None = None, priority: int = 0
    ) -> Any: ...


class RegistryLike(Protocol):
    def group(self, primary: str, backup: str | None) -> ReceiverGroupLike: ...

    def client(self, name: str) -> VoiceReceiver: ...


class Dispatcher:
    """Sends outbox rows through the receiver registry; several may run on one database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: Callable[[], RegistryLike],
        *,
        owner: str | None = None,
        max_in_flight: int = 256,
        claim_behind: int = 32,
        lease_s: float = 6.0,
        poll_s: float = 1.0,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        voice_command: VoiceCommand | None = None,
        voice_command_problem: VoiceCommandProblem | None = None,
        voice_retry_s: float = 60.0,
        outcome_pool: asyncpg.Pool | None = None,
        release_timeout_s: float = 2.0,
    ) -> None:
        self._pool = pool
        # Outcomes and lease renewals: a PostgreSQL crash that loses one only means a resend with
        # the same seq (the documented window), so their commits need not wait for the WAL flush.
        self._relaxed = outcome_pool or pool
        self._registry = registry
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._max_in_flight = max_in_flight
        self._claim_behind = claim_behind  # rows taken behind each claimed lane head
        self._more_ready = False  # the last claim filled every free slot
        self._lanes_with_more: set[str] = set()  # claimed with a full run behind the head
        self._empty_claim_at: float | None = None  # monotonic: the last claim found nothing
        # Failed heads and the rows they hand back are written two at a time: a receiver that
        # goes down fails every delivery in flight to it at once, and those transactions must
        # not take every connection of the pool the group commits also need.
        self._failure_writes = asyncio.Semaphore(2)
        self._claiming = asyncio.Lock()  # a claim and a release of rows to the outbox
        self._releasing: Counter[str] = Counter()  # lanes with rows being handed back
        # One try of a hand-back or of a failure record (which hands its lane back), the
        # connection's return to the pool included: a hand-back holds the claim loop's lock, a
        # failure record one of the two failure-write slots and its lane, and a connection gone
        # half-open answers nothing, ever (see bounded_connection). Also the hand-back at stop.
        self._release_timeout_s = release_timeout_s
        # While a claim is in flight: rows commits leased us meanwhile, adopted after its rows
        # (see adopt). None when no claim is in flight.
        self._deferred: list[OwnedDelivery] | None = None
        # One try of a claim, the connection's return to the pool included: half a lease. The
        # claim runs in milliseconds; by then its rows' leases would be half gone before sent.
        self._claim_timeout_s = lease_s / 2
        self._lease = timedelta(seconds=lease_s)
        self.lease_s = lease_s
        self._poll_s = poll_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self.voice = VoiceSessions(
            pool, voice_command, command_problem=voice_command_problem, retry_s=voice_retry_s
        )
        self._outcomes = OutcomeWriter(self._relaxed, owner=self.owner)
        self._wake = asyncio.Event()
        self._lanes: dict[str, deque[OwnedDelivery]] = {}  # held rows per lane, head first
        self._held: set[int] = set()  # ids of every held row
        self._ready: list[tuple[int, int, str]] = []  # (priority, id, lane) heads awaiting a slot
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sending: set[int] = set()  # ids of the lane heads being delivered
        self._blocked: set[str] = set()  # lanes with rows committed unleased behind ours
        self._released: set[int] = set()  # ids handed back after a failure (bounded)
        # Lanes with a row leased to us that we do not hold (its failure could not be recorded,
        # or a commit's reply was lost): lane → (that row's id, 0 when unknown; monotonic time
        # its lease surely ended). Until then a row a commit leases us on the lane must not go
        # before it (see _hold_lane and adopt).
        self._lease_holds: dict[str, tuple[int, float]] = {}
        # Monotonic time until which every lane is held so (0.0: none): a claim's connection
        # went before its reply, and it may have leased us lane heads we never got.
        self._claim_lost_until = 0.0
        self._released_order: deque[int] = deque()
        self._task: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0

    def wake(self) -> None:
        """Rows nobody holds may be ready (a commit that left rows unleased, a NOTIFY, a retry)."""
        self._wake.set()

    def adopt(self, rows: Iterable[OwnedDelivery], *, claimed: bool = False) -> None:
        """Take over rows leased to this engine (in id order per lane) and start what can go.

        ``claimed``: the claim loop's rows (lane heads and the runs behind them, in order);
        otherwise rows a commit leased to us."""
        if not claimed and self._deferred is not None:
            # A claim's reply is on its way: it may bring a row of these lanes it leased us
            # before this commit saw the lane ours (its last pending row leased to us), and
            # that older row must go first. Taken over right after the claim's rows.
            self._deferred.extend(rows)
            return
        behind_held: list[int] = []
        held_lanes: set[str] = set()
        for row in rows:
            if row.id in self._held or row.id in self._released:
                continue  # already queued here, or handed back with its lane after a failure
            hold = self._lease_holds.get(row.lane)
            if hold is None and not claimed and self._claim_lost_until:
                if time.monotonic() < self._claim_lost_until:
                    hold = self._lease_holds[row.lane] = (0, self._claim_lost_until)
                else:
                    self._claim_lost_until = 0.0
            if hold is not None and not claimed:
                # Only time ends the wait: a claimed row of the lane (the claim loop sends the
                # lane in order) does not tell that no other row of it is still leased to us
                # unknown (a second lost commit, a release that failed), and a commit's row
                # would overtake that one.
                # Nor while a row of the lane handed back is not released yet: it is still
                # leased to us (the lane looks ours to a commit), and would go after this one.
                if time.monotonic() >= hold[1] and not self._releasing[row.lane]:
                    del self._lease_holds[row.lane]
                elif row.id > hold[0]:
                    behind_held.append(row.id)  # back to the outbox, behind the held row
                    held_lanes.add(row.lane)
                    if row.lane in self._lanes:  # claim it once the lane here is done
                        self._blocked.add(row.lane)
                    continue
            self._held.add(row.id)
            lane = self._lanes.get(row.lane)
            if lane is None:
                self._lanes[row.lane] = deque((row,))
                heapq.heappush(self._ready, (row.priority, row.id, row.lane))
            elif row.id > lane[-1].id:
                lane.append(row)
            else:
                # An older row of the lane arrived late (a claim racing a commit): keep id
                # order, before the head too while the head still waits for a slot.
                start = 1 if lane[0].id in self._sending else 0
                at = next((i for i in range(start, len(lane)) if lane[i].id > row.id), len(lane))
                lane.insert(at, row)
        if behind_held:
            self._forget(behind_held)
            self._release_in_background(behind_held, held_lanes)
        self._pump()

    def _adopt_deferred(self) -> None:
        """The claim is answered (or failed): the rows commits leased us meanwhile, in order."""
        rows, self._deferred = self._deferred, None
        if rows:
            self.adopt(rows)

    def uncertain(self, lanes: Iterable[str]) -> None:
        """A commit failed without telling whether it happened (the connection went during it):
        it may have left rows of these lanes leased to us that we never got. Until such a lease
        has surely ended, rows a commit leases us on these lanes go back to the outbox (adopt),
        so that the claim loop sends the lane in order, the unknown rows first."""
        for lane in lanes:
            self._hold_lane(lane, 0)
        self._wake.set()

    def _hold_lane(self, lane: str, row_id: int) -> None:
        """Rows a commit leases us on ``lane`` wait behind ``row_id`` (0: an unknown row) until
        its lease has surely ended (:meth:`adopt`)."""
        self._lease_holds[lane] = (row_id, time.monotonic() + self.lease_s)
        if len(self._lease_holds) > 100_000:  # bounded: drop the oldest entries (long expired)
            for old in list(self._lease_holds)[:10_000]:
                del self._lease_holds[old]

    def blocked(self, lanes: Iterable[str]) -> None:
        """Rows of these lanes were committed unleased: claim them once the lane is free here,
        or at once when another engine (or a retry) holds the lane, unless the last claim found
        nothing less than a poll ago. During a station outage every commit leaves its rows
        unleased behind heads waiting for their retry, and a claim per commit would read every
        pending head each time for nothing; the poll takes them then."""
        for lane in lanes:
            if lane in self._lanes:
                self._blocked.add(lane)
            elif (
                self._empty_claim_at is None
                or time.monotonic() - self._empty_claim_at >= self._poll_s
            ):
                self._wake.set()

    def _pump(self) -> None:
        while self._ready and len(self._in_flight) < self._max_in_flight and not self._stopping:
            _, _, name = heapq.heappop(self._ready)
            row = self._lanes[name][0]
            self._sending.add(row.id)
            task = asyncio.create_task(self._deliver(row), name=f"deliver-{row.id}")
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        metrics.DELIVERIES_IN_FLIGHT.set(len(self._in_flight))

    def start(self) -> None:
        self._task = asyncio.create_task(
            restart_on_failure("delivery-dispatcher", self._run, pause_s=self._poll_s),
            name="delivery-dispatcher",
        )
        self._gauges = asyncio.create_task(self._outbox_gauges(), name="outbox-gauges")
        self._renewer = asyncio.create_task(
            restart_on_failure("outbox-lease-renewal", self._renew_leases),
            name="outbox-lease-renewal",
        )

    @property
    def running(self) -> bool:
        """Whether the claim loop and the lease renewal are alive (``/readyz``'s "delivery")."""
        return all(task is not None and not task.done() for task in (self._task, self._renewer))

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming; wait for sends in flight; hand rows not yet sent back to the outbox."""
        self._stopping = True
        self._wake.set()
        for task in (self._task, self._gauges, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout_s)
        for task in list(self._in_flight):
            task.cancel()
        await self.voice.stop()
        # Every row still leased to us, not only those held here: also the rows a commit or a
        # claim whose reply was lost leased us, and those of a hand-back cut short. Otherwise
        # their leases expire and another engine sends them only then (their lanes in order
        # either way: the claim loop takes lane heads). Bounded like a hand-back, and tried
        # again once on another connection: one never answered (a half-open connection) held
        # the engine's shutdown for good.
        for attempt in range(2):
            try:
                async with bounded_connection(
                    self._pool, self._release_timeout_s, work="stop_hand_back"
                ) as conn:
                    await conn.execute(_RELEASE_OWNED_SQL, self.owner)
            except DATABASE_ERRORS as exc:
                log.warning("delivery_record_failed", error=repr(exc), attempt=attempt)
            else:
                return
        log.error("outbox_stop_release_failed", lease_s=self.lease_s)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if self._in_flight:
                # Coalesce the wake-ups of many finishing deliveries into one claim query.
                await asyncio.sleep(0.002)
            room = self._max_in_flight - len(self._in_flight)
            claimed: list[Any] = []
            if room > 0:
                sent = answered = False
                try:
                    # Nothing awaits from the claim's reply to adopt() below: once this lock is
                    # let go, the claimed rows are held (see _release).
                    # Bounded (see _claim_timeout_s): a claim never answered (a half-open
                    # connection) held this loop, and every row a commit hands over meanwhile
                    # (adopt defers them), for good. One that timed out may have committed
                    # (sent, the reply never came): handled below as a reply lost.
                    async with (
                        self._claiming,
                        bounded_connection(self._pool, self._claim_timeout_s, work="claim") as conn,
                    ):
                        # Commits' rows wait for the claim from here only: waiting for the lock
                        # (a release in flight) or for a connection, it has leased us nothing.
                        if self._deferred is None:
                            self._deferred = []
                        sent = True
                        claimed = await conn.fetch(
                            CLAIM_SQL, room, self.owner, self._lease, self._claim_behind
                        )
                        answered = True
                except DATABASE_ERRORS as exc:
                    if answered:
                        # The reply came; the connection broke after it, as it went back to the
                        # pool (its reset failed). The claimed rows are leased to us and in hand:
                        # taken over below like any claim's, not left to their lease.
                        log.warning(
                            "outbox_claim_connection_lost", error=repr(exc), rows=len(claimed)
                        )
                    else:
                        log.warning("outbox_claim_failed", error=repr(exc))
                        if sent and is_database_unreachable(exc):
                            # The connection went during the claim: it may have committed,
                            # leasing us lane heads we never got. Until those leases have surely
                            # ended, rows commits lease us go back to the outbox (adopt), so the
                            # claim loop sends every lane in order, those heads first.
                            self._claim_lost_until = time.monotonic() + self.lease_s
                            log.error("outbox_claim_reply_lost", hold_s=self.lease_s)
                        self._adopt_deferred()
                        await asyncio.sleep(self._poll_s)
                        continue
                except BaseException:
                    self._adopt_deferred()  # not left waiting for a claim that may not come
                    raise
            try:
                # In id order: each lane's head before the rows behind it (adopt keeps a lane's
                # first row where it is, as it may be in flight).
                rows = read_claimed(claimed)
                owned = rows.readable
                if room > 0:  # a claim ran: remember whether it found nothing
                    self._empty_claim_at = None if claimed else time.monotonic()
                for unreadable in rows.unreadable:
                    # Before the rows commits leased us meanwhile are taken over (below): on
                    # this lane they go back to the outbox, behind the row set aside.
                    self._hold_lane(unreadable.lane, 0)
                    self._set_aside_in_background(unreadable)
                self._released.difference_update(r.id for r in owned)  # leased to us again
                self.adopt(owned, claimed=True)
            finally:
                # However this round ends, the rows commits handed over meanwhile do not wait
                # for the next claim.
                self._adopt_deferred()
            # Every slot taken: more lanes may be ready. Claim again as soon as slots are free
            # (a finished lane wakes this loop) rather than at the next poll. Likewise a lane
            # that came with a full run behind its head may have more rows behind those.
            per_lane = Counter(r.lane for r in owned)
            self._more_ready = bool(claimed) and len(per_lane) + len(rows.unreadable) == room
            self._lanes_with_more.update(
                lane for lane, n in per_lane.items() if n > self._claim_behind
            )
            # A retried head comes alone (CLAIM_SQL): its lane may have rows behind it too.
            self._lanes_with_more.update(r.lane for r in owned if r.attempts > 1)
            if self._more_ready and len(self._in_flight) < self._max_in_flight:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    async def _deliver(self, row: OwnedDelivery) -> None:
        moved_on = False
        try:
            moved_on = await self._deliver_one(row)
        finally:
            # This slot is free now, not only once the task's done-callback has run: with every
            # slot busy, a head waiting for one (a fire alarm among them) would otherwise wait
            # for the next claim or commit to start it, up to a poll later.
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)
            self._lane_done(row, moved_on)
            self._pump()

    def _lane_done(self, row: OwnedDelivery, moved_on: bool) -> None:
        """The head is finished: start the lane's next row, or let go of the lane."""
        lane = self._lanes.get(row.lane)
        self._held.discard(row.id)
        self._sending.discard(row.id)
        if lane is None:
            return
        lane.popleft()
        if moved_on and lane:
            nxt = lane[0]
            heapq.heappush(self._ready, (nxt.priority, nxt.id, nxt.lane))
            return
        del self._lanes[row.lane]
        more_behind = row.lane in self._lanes_with_more
        self._lanes_with_more.discard(row.lane)
        if (self._more_ready or (more_behind and moved_on)) and (
            self._max_in_flight - len(self._in_flight) >= max(1, self._max_in_flight // 4)
        ):
            # More may be ready and a quarter of the slots are free: claim once for them all
            # (each claim reads every lane's head, so not once per finished lane).
            self._wake.set()
        if lane:
            # The head waits for a retry: the rows behind it go back to the outbox, unleased,
            # so they are claimed after it (the claim loop takes only lane heads).
            ids = [r.id for r in lane]
            self._held.difference_update(ids)
            # Those the failure's own transaction released already are not released again: a
            # second release, queued behind other failure writes, could come after we claimed
            # them again and clear those leases (another engine would then send them too).
            unreleased = [i for i in ids if i not in self._released]
            if unreleased:
                self._release_in_background(unreleased, {row.lane})
        if row.lane in self._blocked or lane:
            self._blocked.discard(row.lane)
            self._wake.set()

    def _release_in_background(self, ids: list[int], lanes: set[str]) -> None:
        """Hand ``ids`` (rows of ``lanes``) back to the outbox without waiting (tracked, so
        stop() waits for it). Until they are released, those lanes' waits last (adopt)."""
        self._releasing.update(lanes)
        task = asyncio.create_task(self._release(ids, lanes), name="outbox-release")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _release(self, ids: list[int], lanes: set[str]) -> None:
        try:
            released = await self._release_rows(ids)
        finally:
            self._releasing.subtract(lanes)
            for lane in lanes:
                if self._releasing[lane] <= 0:
                    del self._releasing[lane]
        if not released:
            # Still leased to us, maybe: until their leases have surely ended, a commit's row
            # on these lanes would go before them (see adopt).
            for lane in lanes:
                self._hold_lane(lane, 0)
            log.error("outbox_release_failed", rows=len(ids), lanes=sorted(lanes)[:20])
        self._wake.set()  # free now: the claim loop may take them (in lane order)

    async def _release_rows(self, ids: list[int]) -> bool:
        """Whether ``ids`` are released: retried through a short database blip."""
        for attempt in range(5):
            try:
                async with self._failure_writes, self._claiming:
                    # Not the rows our claim loop took again meanwhile (this release waited for
                    # a slot longer than their lease, or its first try's reply was lost after
                    # the commit): it would end that new lease while we send them, and another
                    # engine would claim and send them too. (Under the claim's lock: a claim
                    # whose reply is on its way has not marked its rows held yet.)
                    ids = [i for i in ids if i not in self._held]
                    if ids:
                        # A try that takes longer fails (TimeoutError) and the next takes another
                        # connection.
                        async with bounded_connection(
                            self._pool, self._release_timeout_s, work="hand_back"
                        ) as conn:
                            await conn.execute(_RELEASE_SQL, ids, self.owner)
            except DATABASE_ERRORS as exc:
                log.warning("delivery_record_failed", error=repr(exc), attempt=attempt)
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                return True
        return False

    async def _renew_leases(self) -> None:
        """Keep leases of held rows alive, so a short lease only lapses for a dead engine.

        Every sixth of a lease, the held rows whose lease has less than two thirds of it left
        get a new one (a row is renewed about once per third of a lease, not at every round). A
        round not answered within a sixth of a lease is given up and tried again at once, on
        another connection."""
        due = self._lease * 2 / 3
        every = self.lease_s / 6
        loop = asyncio.get_running_loop()
        pause = every
        while True:
            await asyncio.sleep(pause)
            began = loop.time()
            pause = every
            # id order, like the outcome batches (and the rows waiting for a claim's reply)
            ids = sorted(self._held.union(r.id for r in self._deferred or ()))
            if not ids:
                continue
            # Bounded: a round never answered (a half-open connection) held this loop for good,
            # and every held row's lease, still being sent, lapsed. A row is renewed with half
            # of its lease left at least (rounds start a sixth of a lease apart, their own time
            # included); a round cut short takes twice its bound at most (the statement, then
            # the connection's return to the pool), so that the next try, at once, still comes
            # a sixth of a lease before the lease ends. The bound is a sixth, not less: on a
            # loaded server a renewal taking half a second is no fault, and one cut then and
            # tried again, as slow, never went through (the lease lapsed mid-send).
            try:
                async with bounded_connection(self._relaxed, every, work="lease_renewal") as conn:
                    await conn.execute(_RENEW_SQL, ids, self.owner, self._lease, due)
            except DATABASE_ERRORS as exc:  # the next round renews them
                log.warning("outbox_lease_renewal_failed", error=repr(exc), rows=len(ids))
                if isinstance(exc, TimeoutError):
                    pause = 0.0  # it has waited its round already: again at once, elsewhere
                    continue
            pause = max(0.0, every - (loop.time() - began))

    async def _deliver_one(self, row: OwnedDelivery) -> bool:
        """Send one row and record its outcome; True when the lane may move on."""
        event = row.event
        try:
            group = self._registry().group(row.primary_receiver, row.backup_receiver)
        except (KeyError, ValueError) as exc:
            metrics.child(metrics.DELIVERIES, row.primary_receiver, "no_receiver").inc()
            await self._failed(row, f"receiver not available: {exc}", receiver=row.primary_receiver)
            _bound(row).error("delivery_no_receiver", error=str(exc))
            return False
        sent_at = datetime.now(UTC)
        try:
            # The row's priority also orders it among deliveries waiting for one of the
            # receiver's connections (an alarm does not queue behind a routine backlog there).
            attempt = await group.deliver(
                account=row.station_account, event=event, seq=row.seq, priority=row.priority
            )
        except Exception as exc:  # a bug in a connector must not lose the row: retry later
            await self._failed(row, f"{type(exc).__name__}: {exc}", receiver=row.primary_receiver)
            _bound(row).exception("delivery_error")
            return False
        outcome = str(getattr(attempt, "outcome", "failed"))
        receiver = str(getattr(attempt, "receiver", row.primary_receiver))
        metrics.child(metrics.DELIVERIES, receiver, outcome).inc()
        before = getattr(attempt, "failed_over_from", None)
        if before is not None:  # the primary failed or refused first, in this same delivery
            refused = getattr(before, "outcome", None) == "duh"
            metrics.child(metrics.DELIVERIES, before.receiver, "duh" if refused else "failed").inc()
            if refused:
                _bound(row).warning(
                    "delivery_refused",
                    receiver=before.receiver,
                    reason="DUH from receiver",
                    tried_backup=receiver,
                )
            else:
                _bound(row).warning(
                    "delivery_failed",
                    receiver=before.receiver,
                    error=before.error,
                    failed_over=True,
                )
        if outcome == "acked":
            acked_at = getattr(attempt, "acked_at", None) or datetime.now(UTC)
            await self._finish(row, "delivered", receiver, attempt, sent_at, acked_at=acked_at)
            metrics.DELIVERY_LATENCY.observe(max(0.0, (acked_at - row.received_at).total_seconds()))
            self.delivered += 1
            if row.two_way_voice:
                await self.voice.after_delivery(row, receiver, self._registry(), _bound(row))
            return True
        if outcome in ("duh", "unsendable"):
            # DUH: the receiver refuses this frame for good. Unsendable: no frame can be made
            # (e.g. a station account the format cannot carry): retrying cannot help either,
            # and the lane must not wait behind it.
            reason = (
                "DUH"
                if outcome == "duh"
                else str(getattr(attempt, "error", None) or "frame not built")[:500]
            )
            await self._finish(row, "dead", receiver, attempt, sent_at, acked_at=None, error=reason)
            metrics.DEAD_LETTERED.labels(receiver).inc()
            _bound(row).error(
                "delivery_dead_lettered",
                receiver=receiver,
                reason="DUH from receiver" if outcome == "duh" else reason,
            )
            return True
        error = str(getattr(attempt, "error", None) or "no answer")
        await self._failed(row, error, receiver=receiver, sent_at=sent_at, before=before)
        _bound(row).warning(
            "delivery_failed", receiver=receiver, error=error, attempts=row.attempts
        )
        return False

    async def _finish(
        self,
        row: OwnedDelivery,
        state: str,
        receiver: str,
        attempt: Any,
        sent_at: datetime,
        *,
        acked_at: datetime | None,
        error: str | None = None,
    ) -> None:
        before = getattr(attempt, "failed_over_from", None)
        await self._outcomes.record(
            Outcome(
                id=row.id,
                state=state,
                receiver=receiver,
                family_sent=getattr(attempt, "family_sent", None),
                acked_at=acked_at,
                sent_at=sent_at,
                error=None if state == "delivered" else (error or "DUH"),
                # The primary's failure in this same delivery: when the backup was tried.
                failed_at=(getattr(attempt, "sent_at", None) or datetime.now(UTC))
                if before is not None
                else None,
                failed_receiver=None if before is None else str(before.receiver),
                failed_error=None if before is None else str(before.error or "no answer")[:500],
            )
        )

    async def _failed(
        self,
        row: OwnedDelivery,
        error: str,
        *,
        receiver: str,
        sent_at: datetime | None = None,
        before: Any = None,
    ) -> None:
        """The head waits for a retry: record why, and hand every row of its lane this engine
        holds back to the outbox (:meth:`_record_failure`)."""
        if not await self._record_failure(
            row.id,
            row.lane,
            row.attempts,
            error,
            receiver=receiver,
            sent_at=sent_at,
            before=before,
        ):
            # Could not record it: the leases expire and the lane is claimed again, in order.
            # Until the head's has, rows a commit leases us behind it go back to the outbox
            # (adopt).
            self._hold_lane(row.lane, row.id)
            _bound(row).error("delivery_failure_not_recorded", error=error)

    def _set_aside_in_background(self, row: Unreadable) -> None:
        """A claimed row this engine cannot read: counted, logged, and handed back with its
        lane without waiting (tracked, so stop() waits for it)."""
        metrics.DELIVERIES_UNREADABLE.inc()
        log.error(
            "delivery_unreadable",
            delivery=row.id,
            lane=row.lane,
            attempts=row.attempts,
            error=row.error,
        )
        task = asyncio.create_task(self._set_aside(row), name="outbox-set-aside")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _set_aside(self, row: Unreadable) -> None:
        """Recorded as a failed attempt, visible in the delivery's history: the row waits for a
        retry with the usual backoff (up to ``retry_max_s``), unleased, so that any engine may
        take it then (one that can read it: a newer version); the rest of its lane waits
        behind it, in order, as behind a receiver that does not answer. Never dropped: an alarm
        must not vanish because one engine cannot read it."""
        error = f"this engine ({self.owner}) cannot read the delivery: {row.error}"
        if not await self._record_failure(
            row.id, row.lane, row.attempts, error, receiver=row.primary_receiver
        ):
            self._hold_lane(row.lane, 0)  # its lease, and those behind it, run out
            log.error("delivery_failure_not_recorded", delivery=row.id, error=error)
        self._wake.set()  # the rows before it in its lane, handed back, go again at once

    async def _record_failure(
        self,
        delivery: int,
        lane: str,
        attempts: int,
        error: str,
        *,
        receiver: str,
        sent_at: datetime | None = None,
        before: Any = None,
    ) -> bool:
        """Record that ``delivery`` (the head of ``lane``) waits for a retry, and hand every row
        of its lane this engine holds back to the outbox, in one transaction under the lane's
        lock; whether it was written.

        The lock waits for any commit that saw the lane clear and leased a row to it; that row is
        released here too (and :meth:`adopt` skips it when it arrives), so no row of the lane is
        sent before the head's retry, and the fast path's clear-lane test (the lane's last
        pending row is ours) stays true."""
        delay = min(self._retry_max_s, self._retry_base_s * 2 ** min(attempts - 1, 10))
        for attempt in range(5):
            try:
                # Bounded like a hand-back: a try never answered would hold its failure-write
                # slot (two in all: hand-backs and the other failures wait for them) and its
                # lane for good. One that timed out may have committed, like one whose reply
                # was lost: the retry then finds the row no longer leased under this attempt.
                async with (
                    self._failure_writes,
                    bounded_connection(
                        self._pool, self._release_timeout_s, work="failure_record"
                    ) as conn,
                    conn.transaction(),
                ):
                    await conn.execute(_LOCK_LANE_SQL, lane)
                    written = await conn.fetchval(
                        _FAILED_SQL,
                        delivery,
                        error[:500],
                        receiver,
                        timedelta(seconds=delay),
                        sent_at,
                        # the primary's failure, when this attempt failed over (see _finish)
                        None if before is None else (getattr(before, "sent_at", None) or sent_at),
                        None if before is None else str(before.receiver),
                        None if before is None else str(before.error or "no answer")[:500],
                        self.owner,
                        attempts,
                    )
                    released = await conn.fetch(_RELEASE_LANE_SQL, lane, self.owner, delivery)
            except DATABASE_ERRORS as exc:
                log.warning("delivery_record_failed", error=repr(exc), attempt=attempt)
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if written is None and not attempt:  # (a retry: most likely the first try's commit)
                log.warning(
                    "delivery_failure_superseded",
                    delivery=delivery,
                    attempts=attempts,
                    reason="no longer leased to this engine under this attempt",
                )
            self._forget([r["id"] for r in released])
            return True
        return False

    def _forget(self, ids: list[int]) -> None:
        """Rows handed back to the outbox: never send them from memory (a late :meth:`adopt`)."""
        self._released.update(ids)
        self._released_order.extend(ids)
        while len(self._released_order) > 100_000:
            self._released.discard(self._released_order.popleft())

    async def _outbox_gauges(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                row = await self._pool.fetchrow(
                    "SELECT count(*) AS n, min(committed_at) AS oldest FROM deliveries WHERE state = 'pending'"
                )
                if row is not None:
                    metrics.OUTBOX_DEPTH.set(row["n"])
                    oldest = row["oldest"]
                    metrics.OUTBOX_OLDEST_AGE.set(
                        (datetime.now(UTC) - oldest).total_seconds() if oldest else 0
                    )
            await asyncio.sleep(5)
