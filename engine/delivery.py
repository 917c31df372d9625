"""The delivery dispatcher: drains the outbox to station receivers, in order per lane.

Claiming: in one short transaction the dispatcher leases the *head* (lowest id) pending row of
ready lanes, most urgent first, with ``FOR UPDATE SKIP LOCKED`` and a lease time. A lane's next row
is never a head while the previous one is pending, so order per lane holds across any number of
engine processes, and a leased head is never sent twice at once. The outcome is written in a
second short transaction. If an engine dies mid-send its lease expires and another engine sends
the row again with the same DC-09 sequence number (the documented crash window: a station ACK
received but not yet recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
import msgspec
import structlog

from engine import metrics
from engine.outcome_writer import Outcome, OutcomeWriter
from protocols.signal import Category, Classification, Event, Family

log = structlog.get_logger("engine.delivery")

_event_decoder = msgspec.json.Decoder(Event)


def listen_in_event(alarm: Event) -> Event:
    """Listen-in to follow (Contact ID 606 / SIA LF) for the alarm's zone and partition."""
    if alarm.family is Family.SIA:
        return Event(
            family=Family.SIA,
            code="LF",
            zone=alarm.zone,
            partition=alarm.partition,
            classification=Classification(category=Category.OTHER),
        )
    return Event(
        family=Family.CID,
        code="606",
        qualifier="1",
        zone=alarm.zone,
        partition=alarm.partition,
        classification=Classification(category=Category.OTHER),
    )


CLAIM_SQL = """
WITH heads AS (
    SELECT DISTINCT ON (lane) id FROM deliveries WHERE state = 'pending' ORDER BY lane, id
), ready AS (
    SELECT d.id FROM deliveries d JOIN heads h ON d.id = h.id
    WHERE d.next_attempt_at <= now() AND (d.lease_until IS NULL OR d.lease_until < now())
    ORDER BY d.priority, d.id
    LIMIT $1
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE deliveries d SET lease_owner = $2, lease_until = now() + $3::interval, attempts = d.attempts + 1
FROM ready WHERE d.id = ready.id
RETURNING d.id, d.account, d.station_account, d.event, d.primary_receiver, d.backup_receiver, d.seq,
          d.attempts, d.received_at, d.two_way_voice, d.signal_id
"""


class Attempt(Protocol):
    """What a receiver group reports for one delivery (receivers.DeliveryAttempt)."""

    outcome: str  # "acked" | "duh" | "failed"
    receiver: str
    seq: str
    error: str | None
    family_sent: str | None


class ReceiverGroupLike(Protocol):
    async def deliver(self, *, account: str, event: Event, seq: str | None = None) -> Any: ...


class RegistryLike(Protocol):
    def group(self, primary: str, backup: str | None) -> ReceiverGroupLike: ...


class Dispatcher:
    """Sends outbox rows through the receiver registry; several may run on one database."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: Callable[[], RegistryLike],
        *,
        owner: str | None = None,
        max_in_flight: int = 256,
        lease_s: float = 6.0,
        poll_s: float = 1.0,
        retry_base_s: float = 0.5,
        retry_max_s: float = 30.0,
        voice_command: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._registry = registry
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._max_in_flight = max_in_flight
        self._lease = timedelta(seconds=lease_s)
        self._poll_s = poll_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._voice_command = voice_command
        self._outcomes = OutcomeWriter(pool)
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._in_flight_ids: set[int] = set()
        self._lease_s = lease_s
        self._task: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._stopping = False
        self.delivered = 0

    def wake(self) -> None:
        """Something new may be ready (a commit in this process, a NOTIFY, a finished delivery)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-dispatcher")
        self._gauges = asyncio.create_task(self._outbox_gauges(), name="outbox-gauges")
        self._renewer = asyncio.create_task(self._renew_leases(), name="outbox-lease-renewal")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming; wait for sends in flight (their leases expire if they do not finish)."""
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

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if self._in_flight:
                # Coalesce the wake-ups of many finishing deliveries into one claim query.
                await asyncio.sleep(0.002)
            room = self._max_in_flight - len(self._in_flight)
            claimed: list[Any] = []
            if room > 0:
                try:
                    claimed = await self._pool.fetch(CLAIM_SQL, room, self.owner, self._lease)
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    TimeoutError,
                ) as exc:
                    log.warning("outbox_claim_failed", error=repr(exc))
                    await asyncio.sleep(self._poll_s)
                    continue
            for row in claimed:
                self._in_flight_ids.add(row["id"])
                task = asyncio.create_task(self._deliver(row), name=f"deliver-{row['id']}")
                self._in_flight.add(task)
                task.add_done_callback(self._done)
            metrics.DELIVERIES_IN_FLIGHT.set(len(self._in_flight))
            if claimed and len(claimed) == room:
                continue  # there may be more ready right now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        metrics.DELIVERIES_IN_FLIGHT.set(len(self._in_flight))
        self._wake.set()  # the lane's next row may now be a head

    async def _deliver(self, row: Any) -> None:
        try:
            await self._deliver_one(row)
        finally:
            self._in_flight_ids.discard(row["id"])

    async def _renew_leases(self) -> None:
        """Keep leases of rows still being sent alive, so a short lease only lapses for a dead engine."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            ids = sorted(self._in_flight_ids)  # id order, like the outcome batches
            if not ids:
                continue
            with contextlib.suppress(
                OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError
            ):
                await self._pool.execute(
                    "UPDATE deliveries SET lease_until = now() + $3::interval "
                    "WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending'",
                    ids,
                    self.owner,
                    self._lease,
                )

    async def _deliver_one(self, row: Any) -> None:
        bound = log.bind(
            delivery=row["id"],
            account=row["account"],
            station_account=row["station_account"],
            seq=row["seq"],
        )
        event = _event_decoder.decode(row["event"])
        try:
            group = self._registry().group(row["primary_receiver"], row["backup_receiver"])
        except (KeyError, ValueError) as exc:
            await self._failed(
                row, f"receiver not available: {exc}", receiver=row["primary_receiver"]
            )
            bound.error("delivery_no_receiver", error=str(exc))
            return
        sent_at = datetime.now(UTC)
        try:
            attempt = await group.deliver(
                account=row["station_account"], event=event, seq=row["seq"]
            )
        except Exception as exc:  # a bug in a connector must not lose the row: retry later
            await self._failed(
                row, f"{type(exc).__name__}: {exc}", receiver=row["primary_receiver"]
            )
            bound.exception("delivery_error")
            return
        outcome = str(getattr(attempt, "outcome", "failed"))
        receiver = str(getattr(attempt, "receiver", row["primary_receiver"]))
        metrics.DELIVERIES.labels(receiver, outcome).inc()
        if outcome == "acked":
            acked_at = getattr(attempt, "acked_at", None) or datetime.now(UTC)
            await self._finish(row, "delivered", receiver, attempt, sent_at, acked_at=acked_at)
            metrics.DELIVERY_LATENCY.observe(
                max(0.0, (acked_at - row["received_at"]).total_seconds())
            )
            self.delivered += 1
            bound.info("delivered", receiver=receiver, attempts=row["attempts"])
            if row["two_way_voice"]:
                await self._start_voice_session(row, group, event, bound)
        elif outcome == "duh":
            await self._finish(row, "dead", receiver, attempt, sent_at, acked_at=None)
            metrics.DEAD_LETTERED.labels(receiver).inc()
            bound.error("delivery_dead_lettered", receiver=receiver, reason="DUH from receiver")
        else:
            error = str(getattr(attempt, "error", None) or "no answer")
            await self._failed(row, error, receiver=receiver, sent_at=sent_at)
            bound.warning(
                "delivery_failed", receiver=receiver, error=error, attempts=row["attempts"]
            )

    async def _start_voice_session(
        self, row: Any, group: ReceiverGroupLike, event: Event, bound: Any
    ) -> None:
        """After a fire/CO alarm: listen-in-to-follow to the same receiver, then the module's command."""
        listen_in = listen_in_event(event)
        errors = []
        attempt = await group.deliver(account=row["station_account"], event=listen_in)
        if str(getattr(attempt, "outcome", "failed")) != "acked":
            errors.append(f"listen-in not acknowledged: {getattr(attempt, 'error', None)}")
        if self._voice_command is not None:
            try:
                await self._voice_command(row["account"], row["signal_id"])
            except Exception as exc:  # the alarm is delivered; a failed command must not undo that
                errors.append(f"voice command not sent: {exc}")
        else:
            errors.append("voice command not sent: MQTT is disabled")
        await self._write(
            "UPDATE deliveries SET voice_session_at = now(), voice_session_error = $2 WHERE id = $1",
            row["id"],
            "; ".join(errors) or None,
        )
        metrics.VOICE_SESSIONS.labels("started" if not errors else "incomplete").inc()
        bound.info("voice_session", errors=errors or None)

    async def _finish(
        self,
        row: Any,
        state: str,
        receiver: str,
        attempt: Any,
        sent_at: datetime,
        *,
        acked_at: datetime | None,
    ) -> None:
        await self._outcomes.record(
            Outcome(
                id=row["id"],
                state=state,
                receiver=receiver,
                family_sent=getattr(attempt, "family_sent", None),
                acked_at=acked_at,
                sent_at=sent_at,
                error=None if state == "delivered" else "DUH",
            )
        )

    async def _failed(
        self, row: Any, error: str, *, receiver: str, sent_at: datetime | None = None
    ) -> None:
        delay = min(self._retry_max_s, self._retry_base_s * 2 ** min(row["attempts"] - 1, 10))
        await self._write(
            """
            UPDATE deliveries SET last_error = $2, receiver_used = $3, next_attempt_at = now() + $4::interval,
                first_sent_at = COALESCE(first_sent_at, $5), lease_owner = NULL, lease_until = NULL
            WHERE id = $1
            """,
            row["id"],
            error[:500],
            receiver,
            timedelta(seconds=delay),
            sent_at,
        )

    async def _write(self, sql: str, *args: Any) -> None:
        # Recording an outcome must survive a short database blip; if it cannot, the lease expires
        # and the row is sent again with the same seq (the receiver dedupes).
        for attempt in range(5):
            try:
                await self._pool.execute(sql, *args)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("delivery_record_failed", error=repr(exc), attempt=attempt)
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                return

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
