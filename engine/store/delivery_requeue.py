"""Deliveries sent again on an operator's request (``alarmrelay deliveries requeue``).

A dead-lettered alarm (the receiver answered DUH: an account or key the station did not have, a
frame it could not read) stays in the outbox as ``dead``; a delivery waiting for its retry goes
on trying the receiver and station account it was decided with. Once the cause is fixed (the
account created at the station, the key or the account's receivers corrected), the operator
sends them again: each selected row becomes pending, due now, routed by its account's
forwarding settings as they are now (station account, primary and backup receiver), and an
engine's claim loop sends it within its poll (a second), with its own DC-09 seq.

What is not touched: rows an engine is sending right now (leased), delivered rows, and the
forwarding decision (the policy is not applied again: the row was meant for the station). A
row whose account is gone, is now a later customer's (its number given to another module after
a termination: the row's signal predates the account), or no longer names a station account
and primary receiver, keeps its own route. A requeued row may reach the station after signals
its account sent later.

Locks: a part's lanes first (advisory, in key order), then its rows (``SKIP LOCKED``), as the
dispatcher's failure writes and the ingest commits take them; at most
:data:`LANES_PER_TRANSACTION` lanes per transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
import msgspec
import structlog

from engine.account_model import ForwardingSettings
from engine.delivery_lane import lane_for

log = structlog.get_logger("engine.delivery_requeue")
_decode_forwarding = msgspec.json.Decoder(ForwardingSettings)
# Records a transaction's requeued delivery ids in it (the audit log).
Audit = Callable[[asyncpg.Connection, list[int]], Awaitable[None]]

_SELECT_SQL = """
SELECT d.id, d.account, d.state, d.lane, d.station_account, d.primary_receiver,
       d.backup_receiver, d.last_error, d.received_at, a.forwarding::text AS forwarding,
       coalesce(d.state = 'pending' AND d.lease_until >= now(), false) AS in_flight
FROM deliveries d
     -- the account's settings only when the row is its own: a number given back by a
     -- terminated customer and now another module's is another customer's account
     LEFT JOIN accounts a ON a.account = d.account AND a.created_at <= d.received_at
WHERE d.state = ANY($1::text[])
  AND ($2::text IS NULL OR $2 IN (d.primary_receiver, d.backup_receiver, d.receiver_used))
  AND ($3::text IS NULL OR d.account = $3)
  AND ($4::timestamptz IS NULL OR d.received_at >= $4)
ORDER BY d.id
"""

# Lanes are locked before their rows, as the dispatcher's failure writes do (the lane's lock,
# then its head and the rows released behind it), and in the order of their keys, as an ingest
# commit locks its lanes: either other order deadlocks with them.
_LOCK_LANES_SQL = """
SELECT pg_advisory_xact_lock(l.h)
FROM (SELECT DISTINCT hashtextextended(t.lane, 0) AS h FROM unnest($1::text[]) AS t(lane)
      ORDER BY 1) l
"""

# The selected rows still to requeue once their lanes are locked: an engine may have claimed
# one meanwhile (it is in flight then), or be writing its outcome (skipped: in flight too).
_LOCK_ROWS_SQL = """
SELECT id FROM deliveries
WHERE id = ANY($1::bigint[]) AND state = ANY($2::text[])
  AND NOT coalesce(state = 'pending' AND lease_until >= now(), false)
ORDER BY id
FOR UPDATE SKIP LOCKED
"""

_REQUEUE_SQL = """
UPDATE deliveries d SET state = 'pending', lane = u.lane, station_account = u.station_account,
    primary_receiver = u.primary_receiver, backup_receiver = u.backup_receiver,
    next_attempt_at = now(), lease_owner = NULL, lease_until = NULL,
    last_error = left('requeued by an operator; before: ' || coalesce(d.last_error, d.state), 500)
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
     AS u(id, lane, station_account, primary_receiver, backup_receiver)
WHERE d.id = u.id
"""


class RequeuedDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One row sent again: where it was going and where it goes now."""

    id: int
    account: str
    was: str  # dead | pending
    received_at: datetime
    last_error: str | None
    lane_before: str
    lane: str


class RequeueReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a requeue did (or, with ``dry_run``, would do)."""

    dry_run: bool
    requeued: int
    rerouted: int  # of those, now going to another station account or receiver
    in_flight: int  # pending rows an engine is sending right now: left alone
    deliveries: list[RequeuedDelivery]


def _route(row: asyncpg.Record) -> tuple[str, str, str | None]:
    """(station account, primary, backup) the row goes to: its account's settings now, when
    they name a station account and a primary receiver; else its own."""
    own = (row["station_account"], row["primary_receiver"], row["backup_receiver"])
    if row["forwarding"] is None:
        return own
    try:
        settings = _decode_forwarding.decode(row["forwarding"])
    except msgspec.DecodeError:  # an unreadable document (see account_row_invalid): keep it
        return own
    if not settings.station_account or not settings.primary_receiver:
        return own
    return settings.station_account, settings.primary_receiver, settings.backup_receiver


async def requeue_deliveries(
    pool: asyncpg.Pool,
    *,
    states: tuple[str, ...],
    receiver: str | None = None,
    account: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    audit: Audit | None = None,
) -> RequeueReport:
    """Send the selected ``dead`` and/or waiting ``pending`` deliveries again, in transactions
    of at most :data:`LANES_PER_TRANSACTION` lanes each (``audit`` records each transaction's
    requeued ids in it)."""
    if not states or not set(states) <= {"dead", "pending"}:
        raise ValueError("states must be 'dead' and/or 'pending'")
    rows = await pool.fetch(
        _SELECT_SQL, list(states), receiver, account.upper() if account else None, since
    )
    chosen = [r for r in rows if not r["in_flight"]]
    routes = {r["id"]: _route(r) for r in chosen}
    if dry_run or not chosen:
        return _report(rows, chosen, routes, dry_run=dry_run)
    requeued: list[asyncpg.Record] = []
    for part in _parts(chosen, routes):
        requeued.extend(await _requeue_part(pool, part, routes, states, audit))
    report = _report(rows, requeued, routes, dry_run=False)
    log.warning(
        "deliveries_requeued",
        requeued=report.requeued,
        rerouted=report.rerouted,
        in_flight=report.in_flight,
        states=list(states),
        receiver=receiver,
        account=account,
    )
    return report


# Each lane's lock is an entry of PostgreSQL's shared lock table (max_locks_per_transaction per
# connection): a station-wide refusal dead-letters one lane per account, and tens of thousands
# of lanes taken at once ran it out ("out of shared memory"), failing the engines' commits too.
LANES_PER_TRANSACTION = 500


def _parts(
    chosen: list[asyncpg.Record], routes: dict[int, tuple[str, str, str | None]]
) -> list[list[asyncpg.Record]]:
    """``chosen`` (in id order) cut where a part would touch more than the lanes allowed."""
    parts: list[list[asyncpg.Record]] = []
    part: list[asyncpg.Record] = []
    lanes: set[str] = set()
    for row in chosen:
        touched = {row["lane"], lane_for(*routes[row["id"]][:2])}
        if part and len(lanes | touched) > LANES_PER_TRANSACTION:
            parts.append(part)
            part, lanes = [], set()
        part.append(row)
        lanes |= touched
    if part:
        parts.append(part)
    return parts


async def _requeue_part(
    pool: asyncpg.Pool,
    part: list[asyncpg.Record],
    routes: dict[int, tuple[str, str, str | None]],
    states: tuple[str, ...],
    audit: Audit | None,
) -> list[asyncpg.Record]:
    """Requeue ``part`` in one transaction: its lanes locked, then the rows still to requeue
    (an engine may have claimed one since they were read). Returns those requeued."""
    lanes = {r["lane"] for r in part} | {lane_for(*routes[r["id"]][:2]) for r in part}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK_LANES_SQL, sorted(lanes))
        locked = {
            r["id"] for r in await conn.fetch(_LOCK_ROWS_SQL, [r["id"] for r in part], list(states))
        }
        done = [r for r in part if r["id"] in locked]
        if done:
            await conn.execute(
                _REQUEUE_SQL,
                [r["id"] for r in done],
                [lane_for(*routes[r["id"]][:2]) for r in done],
                *([routes[r["id"]][i] for r in done] for i in range(3)),
            )
            if audit is not None:
                await audit(conn, [r["id"] for r in done])
    return done


def _report(
    rows: list[asyncpg.Record],
    chosen: list[asyncpg.Record],
    routes: dict[int, tuple[str, str, str | None]],
    *,
    dry_run: bool,
) -> RequeueReport:
    own = {
        r["id"]: (r["station_account"], r["primary_receiver"], r["backup_receiver"]) for r in chosen
    }
    return RequeueReport(
        dry_run=dry_run,
        requeued=len(chosen),
        rerouted=sum(routes[r["id"]] != own[r["id"]] for r in chosen),
        in_flight=len(rows) - len(chosen),
        deliveries=[
            RequeuedDelivery(
                id=r["id"],
                account=r["account"],
                was=r["state"],
                received_at=r["received_at"],
                last_error=r["last_error"],
                lane_before=r["lane"],
                lane=lane_for(*routes[r["id"]][:2]),
            )
            for r in chosen
        ],
    )
