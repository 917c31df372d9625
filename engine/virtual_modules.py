"""Virtual modules: the engine plays the module of each virtual customer (demos, dealer training).

A virtual module checks in every ``virtual.checkin_interval_s`` (a real contact: it resets
supervision and sets first/last contact) and sends the signals queued for it in
``virtual_requests`` (by ``POST /v1/customers/{id}/virtual-signals``). Both go through the ingest
pipeline like any module's signals, so policy, forwarding and delivery are the real ones.

Both work lists live in PostgreSQL and are claimed with ``FOR UPDATE SKIP LOCKED``, so several
engine processes share them and each check-in and request is done by one of them. A request's
signal carries the dedupe key ``virtual:<id>``, held for a week: if an engine dies between the
signal's commit and marking the request done, the retry (however long after, within that week) is
recognised as a duplicate and not forwarded twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime

import asyncpg
import structlog
from prometheus_client import Counter

from engine.deadline_timer import Clock, DeadlineTimer, utc_now
from engine.events_signal import signal_from_events
from engine.ingest_types import (
    InboundSignal,
    IngestRefused,
    IngestResult,
    IngestSink,
    IngestUnavailable,
    SignalKind,
    Transport,
)
from protocols.mqtt_payloads import MqttPayloadError, decode_events

log = structlog.get_logger("engine.virtual_modules")

VIRTUAL_SIGNALS = Counter(
    "alarmrelay_virtual_signals_total",
    "Signals sent by simulated (virtual) modules, by kind and result",
    ["kind", "result"],
)

# How long a request's key is held. A retry comes when an engine runs again, which may be long
# after dc09.duplicate_window_s; the key is the request's own (never reused), so holding it long
# costs one row per request.
REQUEST_KEY_HELD_S = 7 * 86_400

_SYNC_SCHEDULE = """
WITH added AS (
    INSERT INTO virtual_schedule (account, next_checkin_at)
    SELECT account, $1::timestamptz FROM accounts WHERE virtual
    ON CONFLICT (account) DO NOTHING RETURNING 1
), removed AS (
    DELETE FROM virtual_schedule s
    WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account = s.account AND a.virtual)
    RETURNING 1
)
SELECT (SELECT count(*) FROM added) AS added, (SELECT count(*) FROM removed) AS removed
"""
_CLAIM_CHECKINS = """
SELECT account FROM virtual_schedule WHERE next_checkin_at <= $2
ORDER BY next_checkin_at LIMIT $1 FOR UPDATE SKIP LOCKED
"""
# ``behind``: an earlier request of the same module is still to be sent and was not claimed here
# (another engine is sending it): this one waits, so a module's signals keep their order.
_CLAIM_REQUESTS = """
WITH claimed AS MATERIALIZED (
    SELECT r.id, r.account, r.payload FROM virtual_requests r
    WHERE r.done_at IS NULL ORDER BY r.id LIMIT $1 FOR UPDATE SKIP LOCKED
)
SELECT c.id, c.account, c.payload::text AS payload, (a.account IS NOT NULL) AS live,
       EXISTS (SELECT 1 FROM virtual_requests e
               WHERE e.done_at IS NULL AND e.account = c.account AND e.id < c.id
                 AND e.id NOT IN (SELECT k.id FROM claimed k)) AS behind
FROM claimed c LEFT JOIN accounts a ON a.account = c.account AND a.virtual
ORDER BY c.id
"""
_NEXT = """
SELECT LEAST(
    (SELECT extract(epoch FROM min(next_checkin_at) - $1::timestamptz) FROM virtual_schedule),
    (SELECT 0 FROM virtual_requests WHERE done_at IS NULL LIMIT 1)
)
"""


class VirtualModules(DeadlineTimer):
    """Check-ins and requested signals of virtual modules, through ``sink`` (the pipeline)."""

    name = "virtual"

    def __init__(
        self,
        pool: asyncpg.Pool,
        sink: IngestSink,
        *,
        checkin_interval_s: int,
        poll_s: float,
        sync_interval_s: float = 30.0,
        batch: int = 500,
        clock: Clock = utc_now,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        """``known``: whether the engine's account directory has the account yet. A module
        created a moment ago is not sent for until it has: its signals would be committed
        without the account's supervision and forwarding settings (the first check-in armed no
        supervision deadline)."""
        super().__init__(max_sleep_s=poll_s, clock=clock)
        self._known = known or (lambda account: True)
        self._pool = pool
        self._sink = sink
        self._interval_s = checkin_interval_s
        self._sync_interval_s = sync_interval_s
        self._batch = batch
        self._synced_at = float("-inf")
        # The last round could not hand something to the pipeline (unavailable, shedding): the
        # next one waits a poll instead of retrying at once (it span every 10 ms before).
        self._held_back = False

    async def fire_due(self, now: datetime) -> int:
        """Sync the schedule with the virtual accounts (every ``sync_interval_s``), then send
        queued requests and the check-ins due at ``now``; returns how many signals were committed."""
        self._held_back = False
        if time.monotonic() - self._synced_at >= self._sync_interval_s:
            await self.sync_schedule(now)
        return await self.send_requests(now) + await self.send_checkins(now)

    async def seconds_to_next(self, now: datetime) -> float:
        if self._held_back:
            return self._max_sleep_s
        value = await self._pool.fetchval(_NEXT, now)
        return float(value) if value is not None else self._max_sleep_s

    async def sync_schedule(self, now: datetime) -> None:
        """Add new virtual accounts (due at ``now``) and drop the ones no longer virtual."""
        row = await self._pool.fetchrow(_SYNC_SCHEDULE, now)
        self._synced_at = time.monotonic()
        if row is not None and (row["added"] or row["removed"]):
            log.info("virtual_schedule_synced", added=row["added"], removed=row["removed"])

    async def send_checkins(self, now: datetime) -> int:
        """Check in every virtual module due at ``now`` once and move its next check-in on."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM_CHECKINS, self._batch, now)
            if not rows:
                return 0
            accounts = [r["account"] for r in rows if self._known(r["account"])]
            if len(accounts) < len(rows):
                self._held_back = True  # the others stay due: sent once the directory has them
            results = await asyncio.gather(
                *(self._sink.submit(self._checkin(a, now)) for a in accounts),
                return_exceptions=True,
            )
            done = [
                a for a, r in zip(accounts, results, strict=True) if isinstance(r, IngestResult)
            ]
            if len(done) < len(accounts):
                self._held_back = True
            for result in results:
                VIRTUAL_SIGNALS.labels(
                    "checkin", result.value if isinstance(result, IngestResult) else "unavailable"
                ).inc()
            # Failed ones stay due and are retried on the next round.
            await conn.execute(
                "UPDATE virtual_schedule SET next_checkin_at = $3::timestamptz + make_interval(secs => $2) "
                "WHERE account = ANY($1::text[])",
                done,
                float(self._interval_s),
                now,
            )
            return len(done)

    async def send_requests(self, now: datetime) -> int:
        """Send each queued request once, in order (a module's requests in their order also
        across engines), stamped ``now``; record the outcome on it."""
        sent = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for row in await conn.fetch(_CLAIM_REQUESTS, self._batch):
                if row["behind"]:
                    self._held_back = True
                    continue  # sent once the earlier one is done
                if row["live"] and not self._known(row["account"]):
                    self._held_back = True
                    break  # in order: this and the later ones wait for the directory
                outcome = await self._send_request(row, now)
                if outcome is None:
                    self._held_back = True
                    break  # the pipeline is unavailable: leave this and later ones queued
                result, at = outcome
                await conn.execute(
                    "UPDATE virtual_requests SET done_at = now(), result = $2, signal_at = $3 "
                    "WHERE id = $1",
                    row["id"],
                    result,
                    at,
                )
                sent += result in {"accepted", "duplicate"}
        return sent

    async def _send_request(
        self, row: asyncpg.Record, now: datetime
    ) -> tuple[str, datetime | None] | None:
        if not row["live"]:
            VIRTUAL_SIGNALS.labels("event", "not_virtual").inc()
            return "not sent: the account is no longer a virtual module", None
        raw = row["payload"].encode()
        try:
            payload = decode_events(raw)
        except MqttPayloadError as exc:  # validated by the API; kept for rows written by hand
            VIRTUAL_SIGNALS.labels("event", "invalid").inc()
            return f"not sent: {exc}", None
        signal = signal_from_events(
            payload,
            account=row["account"],
            transport=Transport.VIRTUAL,
            received_at=now,
            peer="virtual",
            raw=raw,
            dedupe_key=f"virtual:{row['id']}",
            dedupe_window_s=REQUEST_KEY_HELD_S,
        )
        try:
            result = await self._sink.submit(signal)
        except IngestRefused as exc:  # the database refuses this signal's data: for good
            VIRTUAL_SIGNALS.labels("event", "refused").inc()
            log.error("virtual_signal_refused", request=row["id"], account=row["account"])
            return f"not sent: refused by the database ({exc})", None
        except IngestUnavailable:
            VIRTUAL_SIGNALS.labels("event", "unavailable").inc()
            return None
        VIRTUAL_SIGNALS.labels("event", result.value).inc()
        log.info("virtual_signal_sent", request=row["id"], account=row["account"], result=result)
        return result.value, now

    @staticmethod
    def _checkin(account: str, now: datetime) -> InboundSignal:
        return InboundSignal(
            account=account,
            transport=Transport.VIRTUAL,
            kind=SignalKind.CHECKIN,
            received_at=now,
            peer="virtual",
        )
