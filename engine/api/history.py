"""``/v1/customers/{id}/signals``: an account's signal history with each event's forwarding
decision (and reason) and its delivery to the station.

Reads ``signals`` (0001_core.sql), ``decisions`` and ``deliveries`` (0100_forwarding.sql) for every
DC-09 account the customer has had (module history), newest first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from litestar import Request, get
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api.auth import Caller
from engine.api.customer_store import fetch_customer
from engine.api.pagination import Page, clamp_limit
from engine.api.problems import ProblemError, bad_query_parameter
from protocols.signal import Category


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Forwarded or not, and why (the first failing rule), for one event."""

    event_index: int
    forward: bool
    reason: str
    category: str
    two_way_voice: str


class FailedAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt that the receiver did not acknowledge."""

    at: datetime
    receiver: str
    error: str


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One event's delivery to the monitoring station: how many attempts were made, the first
    and the acknowledged one's times, the last failure, and (while pending) the next attempt."""

    event_index: int
    state: Literal["pending", "delivered", "dead"]
    attempts: int
    station_account: str
    primary_receiver: str
    backup_receiver: str | None
    receiver_used: str | None
    family_sent: str | None
    first_sent_at: datetime | None
    acked_at: datetime | None
    last_error: str | None
    next_attempt_at: datetime | None  # null once delivered or dead-lettered
    # The failed attempts, oldest first (the latest 20); the final outcome is acked_at/state.
    failed_attempts: list[FailedAttempt]
    two_way_voice: bool
    voice_session_at: datetime | None  # listen-in sent and voice command published (or tried)
    voice_session_error: str | None = None  # what of the two did not happen, or why neither was
    # started | incomplete | command_retrying | not_started (engine/voice_session.py); null: none
    voice_session_state: str | None = None
    voice_command_attempts: int = 0


class SignalEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A stored signal with its decisions and deliveries."""

    id: int
    received_at: datetime
    account: str
    transport: str
    kind: str
    seq: str | None
    encrypted: bool
    events: list[Any]
    categories: list[str]
    reject_reason: str | None
    decisions: list[Decision]
    deliveries: list[Delivery]


def _out_of_range(name: str, message: str) -> ProblemError:
    return bad_query_parameter(name, "range", message)


def _refuse_numbers(request: Request[Any, Any, Any], *names: str) -> None:
    """400 for a time filter written as a number. The decoder reads ``2026`` as a Unix time
    (2026 s after 1970): ?until=2026, meant as a year, answered an empty page that reads as
    "no signals until then". The filters are ISO 8601 date and time only, as documented."""
    for name in names:
        raw = request.query_params.get(name)
        if raw is None:
            continue
        try:
            float(raw)
        except ValueError:
            continue
        raise bad_query_parameter(
            name, "type", "expected an ISO 8601 date and time (2026-01-01T00:00:00Z), not a number"
        )


def _utc(name: str, value: datetime | None) -> datetime | None:
    """A time filter in UTC. Without an offset it is UTC already (the database driver would read
    it in the engine host's local zone); 400 when UTC is beyond the calendar (year 1-9999)."""
    if value is None or value.tzinfo is None:
        return None if value is None else value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        message = f"{value.isoformat()} is beyond the years 1-9999 in UTC"
        raise _out_of_range(name, message) from None


@get("/customers/{customer_id:int}/signals", summary="Signal history of a customer's account")
async def signal_history(
    request: Request[Any, Any, Any],
    state: State,
    caller: Caller,
    customer_id: int,
    since: datetime | None = None,
    until: datetime | None = None,
    category: Category | None = None,
    forwarded: bool | None = Parameter(
        default=None, description="true: at least one event forwarded; false: none"
    ),
    limit: int = Parameter(default=50, ge=1, le=500),
    cursor: int | None = Parameter(
        default=None, ge=1, description="next_cursor of the previous page"
    ),
) -> Page[SignalEntry]:
    """Newest first (by signal id), filtered by time range, category and forwarded or not."""
    _refuse_numbers(request, "since", "until")
    since, until = _utc("since", since), _utc("until", until)
    if since is not None and until is not None and until < since:
        # swapped by mistake: an empty page would read as "no signals in that time"
        raise _out_of_range("until", "until is before since")
    customer = await fetch_customer(state.pool, caller, customer_id)
    # Each account number from the day this customer's module got it: a commitment activated
    # with a module that an earlier (terminated) customer had shows none of that one's signals.
    windows = await state.pool.fetch(
        "SELECT account, min(since) AS since FROM customer_modules WHERE customer_id = $1 "
        "GROUP BY account",
        customer_id,
    )
    accounts = [r["account"] for r in windows]
    starts = [r["since"] for r in windows]
    if customer.account and customer.account not in accounts:
        accounts.append(customer.account)
        starts.append(customer.created_at)
    limit = clamp_limit(limit)
    rows = await state.pool.fetch(
        """
        SELECT s.id, s.received_at, s.account, s.transport, s.kind, s.seq, s.encrypted, s.events::text AS events,
               s.categories, s.reject_reason,
               coalesce((SELECT json_agg(json_build_object('event_index', d.event_index, 'forward', d.forward, 'reason', d.reason,
                                'category', d.category, 'two_way_voice', d.two_way_voice) ORDER BY d.event_index)
                         FROM decisions d WHERE d.signal_id = s.id), '[]')::text AS decisions,
               coalesce((SELECT json_agg(json_build_object('event_index', v.event_index, 'state', v.state, 'attempts', v.attempts,
                                'station_account', v.station_account, 'primary_receiver', v.primary_receiver,
                                'backup_receiver', v.backup_receiver,
                                'receiver_used', v.receiver_used, 'family_sent', v.family_sent, 'first_sent_at', v.first_sent_at,
                                'acked_at', v.acked_at, 'last_error', v.last_error, 'two_way_voice', v.two_way_voice,
                                'next_attempt_at', CASE WHEN v.state = 'pending' THEN v.next_attempt_at END,
                                'failed_attempts', coalesce(v.failed_attempts, '[]'::jsonb),
                                'voice_session_at', v.voice_session_at,
                                'voice_session_error', v.voice_session_error,
                                'voice_session_state', v.voice_session_state,
                                'voice_command_attempts', v.voice_command_attempts) ORDER BY v.event_index)
                         FROM deliveries v WHERE v.signal_id = s.id), '[]')::text AS deliveries
        FROM signals s
        WHERE s.account = ANY($1)
          AND ($2::timestamptz IS NULL OR s.received_at >= $2) AND ($3::timestamptz IS NULL OR s.received_at < $3)
          AND ($4::text IS NULL OR $4 = ANY(s.categories))
          AND ($5::boolean IS NULL OR $5 = EXISTS (SELECT 1 FROM decisions d WHERE d.signal_id = s.id AND d.forward))
          AND ($6::bigint IS NULL OR s.id < $6)
          AND s.received_at >= ($8::timestamptz[])[array_position($1::text[], s.account)]
          AND s.received_at >= $10  -- the earliest of those: the days before are not read
          AND ($9::timestamptz IS NULL OR s.received_at <= $9)
        ORDER BY s.id DESC LIMIT $7
        """,
        accounts,
        since,
        until,
        category.value if category else None,
        forwarded,
        cursor,
        limit + 1,
        starts,  # an account number reused after a termination: only this customer's
        customer.terminated_at,
        # A bound the planner can prune the daily partitions with (the per-account one above
        # is a row's expression): without it every day kept was probed for a new customer.
        min(starts, default=customer.created_at),
    )
    items = [
        SignalEntry(
            id=r["id"],
            received_at=r["received_at"],
            account=r["account"],
            transport=r["transport"],
            kind=r["kind"],
            seq=r["seq"],
            encrypted=r["encrypted"],
            events=msgspec.json.decode(r["events"]),
            categories=list(r["categories"]),
            reject_reason=r["reject_reason"],
            decisions=msgspec.json.decode(r["decisions"], type=list[Decision]),
            deliveries=msgspec.json.decode(r["deliveries"], type=list[Delivery]),
        )
        for r in rows[:limit]
    ]
    return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


HISTORY_HANDLERS = [signal_history]
