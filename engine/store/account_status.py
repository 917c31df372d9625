"""What the engine currently knows about one account, gathered from every state table.

Each fact is read from the one table that records it: the phone line from ``account_state``
(written with the decisions that change it), Panel Not Responding from ``supervision.missed``
(written with the miss and with its restore), entries from ``pending_entries`` (with the entries
waiting behind an overdue one: ``next_*``, then ``later_entries``).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec


class WaitingEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An entry received when the one before it in its partition's line was already past its
    deadline: it takes the row's place, timed to ``deadline``, once those before it fired or were
    closed by a close sent before it."""

    zone: int | None
    deadline: datetime


class PendingEntry(msgspec.Struct, frozen=True, kw_only=True):
    partition: int
    zone: int | None
    deadline: datetime
    state: str
    closed_reason: str | None
    fired_signal_id: int | None = None  # the Crash & Smash alarm raised (state "fired")
    # the entries waiting behind this one, in order (migrations 0540, 0551)
    waiting: tuple[WaitingEntry, ...] = ()


class AccountStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Phone line, supervision, Crash & Smash timers, contacts and queued deliveries."""

    account: str
    first_contact_at: datetime | None
    last_contact_at: datetime | None
    phone_line_failed: bool
    supervision_deadline: datetime | None
    panel_not_responding: bool
    panel_not_responding_since: datetime | None  # when the miss was raised (None: not in a miss)
    entries: tuple[PendingEntry, ...]
    deliveries_pending: int
    deliveries_dead: int


async def account_status(
    pool: asyncpg.Pool, account: str, *, since: datetime | None = None
) -> AccountStatus | None:
    """The status of ``account`` (None when there is no such account). ``since``: count only the
    deliveries of signals received from then on (a customer's own, when its account number was
    an earlier customer's)."""
    account = account.upper()
    row = await pool.fetchrow(
        """
        SELECT a.account, a.first_contact_at,
               GREATEST(a.last_contact_at, v.last_contact_at) AS last_contact_at,
               coalesce(s.phone_line_failed, false) AS phone_line_failed,
               v.deadline AS supervision_deadline, coalesce(v.missed, false) AS missed,
               v.missed_at,
               (SELECT count(*) FROM deliveries d WHERE d.account = a.account AND d.state = 'pending'
                   AND ($2::timestamptz IS NULL OR d.received_at >= $2)) AS pending,
               (SELECT count(*) FROM deliveries d WHERE d.account = a.account AND d.state = 'dead'
                   AND ($2::timestamptz IS NULL OR d.received_at >= $2)) AS dead
        FROM accounts a
        LEFT JOIN account_state s ON s.account = a.account
        LEFT JOIN supervision v ON v.account = a.account
        WHERE a.account = $1
        """,
        account,
        since,
    )
    if row is None:
        return None
    entries = await pool.fetch(
        "SELECT partition, zone, deadline, state, closed_reason, "
        "CASE WHEN state = 'fired' THEN fired_signal_id END AS fired_signal_id, "
        "next_zone, next_deadline, later_entries "
        "FROM pending_entries WHERE account = $1 ORDER BY partition",
        account,
    )
    return AccountStatus(
        account=row["account"],
        first_contact_at=row["first_contact_at"],
        last_contact_at=row["last_contact_at"],
        phone_line_failed=row["phone_line_failed"],
        supervision_deadline=row["supervision_deadline"],
        panel_not_responding=row["missed"],
        panel_not_responding_since=row["missed_at"] if row["missed"] else None,
        entries=tuple(_entry(e) for e in entries),
        deliveries_pending=row["pending"],
        deliveries_dead=row["dead"],
    )


def _entry(row: asyncpg.Record) -> PendingEntry:
    """A ``pending_entries`` row, with the entries waiting behind it (``next_*``, then
    ``later_entries``)."""
    waiting: list[WaitingEntry] = []
    if row["next_deadline"] is not None:
        waiting.append(WaitingEntry(zone=row["next_zone"], deadline=row["next_deadline"]))
        waiting += [
            WaitingEntry(zone=w["zone"], deadline=w["deadline"]) for w in row["later_entries"]
        ]
    return PendingEntry(
        partition=row["partition"],
        zone=row["zone"],
        deadline=row["deadline"],
        state=row["state"],
        closed_reason=row["closed_reason"],
        fired_signal_id=row["fired_signal_id"],
        waiting=tuple(waiting),
    )
