"""Writing signals: one batch per group commit, inside the caller's transaction.

What a batch does, in one round trip (data-modifying CTEs over ``unnest`` arrays), plus a second
one only when the batch holds resent copies of earlier signals:

* every ``EVENT`` and ``REJECTED`` signal gets an id from ``signals_id_seq``;
* an ``EVENT`` with a ``dedupe_key`` claims the key in ``signal_dedupe`` for
  ``duplicate_window_s``. **Duplicates are stored once**: when the key is already held by an
  unexpired earlier signal, the copy is not inserted, the original's ``duplicates`` counter goes
  up, and the copy's result is ``IngestResult.DUPLICATE`` (the listener ACKs it again; it is never
  forwarded twice). Copies inside one batch are folded in Python before the statement;
* the remaining signals are inserted into the partitioned ``signals`` table;
* ``LINK_TEST`` and ``CHECKIN`` are not stored as signals: with every other valid signal
  (duplicates included, rejected payloads excluded) they move the account's ``last_contact_at``
  forward (and set ``first_contact_at`` once). Account rows are locked in account order so that
  several engine processes committing at once cannot deadlock.

Results come back in input order. ``REJECTED`` signals are stored for audit with their reason.
When two engines commit the same dedupe key at once, the second waits on the key's row lock and
then reports DUPLICATE of the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import msgspec

from engine.ingest_types import InboundSignal, IngestResult, SignalKind

_encoder = msgspec.json.Encoder()
_CONTACT_ONLY = frozenset({SignalKind.LINK_TEST, SignalKind.CHECKIN})

_INSERT_BATCH = """
WITH input AS MATERIALIZED (
    SELECT nextval('signals_id_seq') AS id, t.*
    FROM unnest($1::int[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::bool[], $9::text[], $10::text[], $11::text[], $12::bytea[],
                $13::text[], $14::text[], $15::text[], $16::timestamptz[], $17::bool[],
                $18::text[], $19::text[], $20::int[])
         AS t(ord, received_at, account, transport, kind, peer, token, encrypted, seq, receiver,
              line, raw, events, categories, xdata, sent_at, dialer_failed, dedupe_key,
              reject_reason, copies)
),
claim AS (
    -- Claim each key, or take it over when the holder's window has expired. The no-op update of
    -- a live key returns the holder, so a duplicate learns its original's primary key.
    INSERT INTO signal_dedupe AS d (dedupe_key, signal_id, received_at, expires_at)
    SELECT dedupe_key, id, received_at, received_at + $21::interval
    FROM input WHERE dedupe_key IS NOT NULL AND kind = 'event'
    ON CONFLICT (dedupe_key) DO UPDATE SET
        signal_id = CASE WHEN d.expires_at <= EXCLUDED.received_at THEN EXCLUDED.signal_id ELSE d.signal_id END,
        received_at = CASE WHEN d.expires_at <= EXCLUDED.received_at THEN EXCLUDED.received_at ELSE d.received_at END,
        expires_at = CASE WHEN d.expires_at <= EXCLUDED.received_at THEN EXCLUDED.expires_at ELSE d.expires_at END
    RETURNING d.dedupe_key, d.signal_id, d.received_at
),
dup AS (
    -- Keys held by an earlier signal: the claim returned a holder that is not one of ours.
    SELECT c.dedupe_key, c.signal_id, c.received_at
    FROM claim c WHERE c.signal_id <> ALL (ARRAY(SELECT id FROM input))
),
inserted AS (
    INSERT INTO signals (id, received_at, account, transport, kind, peer, token, encrypted, seq,
                         receiver, line, raw, events, categories, xdata, sent_at, dialer_failed,
                         dedupe_key, reject_reason, duplicates)
    SELECT id, received_at, account, transport, kind, peer, token, encrypted, seq, receiver, line,
           raw, events::jsonb, string_to_array(categories, ','), xdata::jsonb, sent_at,
           dialer_failed, dedupe_key, reject_reason, copies
    FROM input i
    WHERE i.kind <> 'event' OR i.dedupe_key IS NULL
       OR NOT EXISTS (SELECT 1 FROM dup WHERE dup.dedupe_key = i.dedupe_key)
),
locked AS (
    SELECT a.account FROM accounts a WHERE a.account = ANY($22::text[])
    ORDER BY a.account FOR NO KEY UPDATE
),
touched AS (
    UPDATE accounts a SET last_contact_at = GREATEST(a.last_contact_at, t.last_at),
                          first_contact_at = COALESCE(a.first_contact_at, t.first_at)
    FROM unnest($22::text[], $23::timestamptz[], $24::timestamptz[]) AS t(account, first_at, last_at)
    WHERE a.account = t.account AND a.account IN (SELECT account FROM locked)
)
-- Two row shapes, no join: (ord, id) per row sent; (original id, dedupe_key, original
-- received_at) per duplicate.
SELECT ord, id, NULL::text AS dup_key, NULL::timestamptz AS dup_at FROM input
UNION ALL
SELECT NULL, signal_id, dedupe_key, received_at FROM dup
"""

_COUNT_DUPLICATES = """
UPDATE signals s SET duplicates = s.duplicates + t.n
FROM unnest($1::bigint[], $2::timestamptz[], $3::int[]) AS t(id, received_at, n)
WHERE s.id = t.id AND s.received_at = t.received_at
"""


class StoredSignal(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one input signal of a batch."""

    result: IngestResult
    signal_id: int | None  # the stored row (the original's id for a duplicate); None: not stored
    received_at: datetime


def _json_or_none(value: object) -> str | None:
    return _encoder.encode(value).decode() if value else None


async def insert_signals(
    conn: asyncpg.Connection, signals: Sequence[InboundSignal], *, duplicate_window_s: int
) -> list[IngestResult]:
    """Store a batch; one IngestResult per signal, in input order. Call inside a transaction."""
    stored = await insert_signals_returning(conn, signals, duplicate_window_s=duplicate_window_s)
    return [s.result for s in stored]


async def insert_signals_returning(
    conn: asyncpg.Connection, signals: Sequence[InboundSignal], *, duplicate_window_s: int
) -> list[StoredSignal]:
    """Store a batch and return each signal's result and row id. Call inside a transaction."""
    if not signals:
        return []
    # Fold copies inside the batch: the first occurrence of a key goes to the database and
    # carries how many copies followed it; the copies share its fate (new → DUPLICATE of it).
    first_of: dict[str, int] = {}
    copy_of: dict[int, int] = {}
    copies: dict[int, int] = {}
    rows: list[int] = []
    contacts: dict[str, tuple[datetime, datetime]] = {}  # account → (earliest, latest)
    for i, s in enumerate(signals):
        if s.kind is not SignalKind.REJECTED:
            seen = contacts.get(s.account)
            at = s.received_at
            contacts[s.account] = (at, at) if seen is None else (min(seen[0], at), max(seen[1], at))
        if s.kind in _CONTACT_ONLY:
            continue
        key = s.dedupe_key if s.kind is SignalKind.EVENT else None
        if key is not None:
            if key in first_of:
                copy_of[i] = first_of[key]
                copies[first_of[key]] += 1
                continue
            first_of[key] = i
            copies[i] = 0
        rows.append(i)

    batch = [signals[i] for i in rows]
    accounts = sorted(contacts)
    records = await conn.fetch(
        _INSERT_BATCH,
        rows,
        [s.received_at for s in batch],
        [s.account for s in batch],
        [s.transport.value for s in batch],
        [s.kind.value for s in batch],
        [s.peer for s in batch],
        [s.token for s in batch],
        [s.encrypted for s in batch],
        [s.seq for s in batch],
        [s.receiver for s in batch],
        [s.line for s in batch],
        [s.raw for s in batch],
        [_encoder.encode(s.events).decode() for s in batch],
        [",".join(e.classification.category.value for e in s.events) for s in batch],
        [_json_or_none(s.xdata) for s in batch],
        [s.sent_at for s in batch],
        [s.dialer_failed for s in batch],
        [s.dedupe_key for s in batch],
        [s.reject_reason for s in batch],
        [copies.get(i, 0) for i in rows],
        timedelta(seconds=duplicate_window_s),
        accounts,
        [contacts[a][0] for a in accounts],
        [contacts[a][1] for a in accounts],
    )

    outcome: dict[int, tuple[IngestResult, int]] = {}
    duplicates: list[tuple[int, int]] = []
    bumps: list[tuple[int, datetime, int]] = []  # (original id, its received_at, copies seen)
    for record in records:
        if record["dup_key"] is not None:
            first = first_of[record["dup_key"]]
            duplicates.append((first, record["id"]))
            bumps.append((record["id"], record["dup_at"], 1 + copies[first]))
        elif signals[record["ord"]].kind is SignalKind.REJECTED:
            outcome[record["ord"]] = (IngestResult.REJECTED, record["id"])
        else:
            outcome[record["ord"]] = (IngestResult.ACCEPTED, record["id"])
    for i, original_id in duplicates:
        outcome[i] = (IngestResult.DUPLICATE, original_id)
    if bumps:
        # A second statement, only when a batch resends earlier signals (rare): its fresh snapshot
        # also sees an original that another engine committed while the first statement waited.
        await conn.execute(
            _COUNT_DUPLICATES,
            [b[0] for b in bumps],
            [b[1] for b in bumps],
            [b[2] for b in bumps],
        )
    out: list[StoredSignal] = []
    for i, s in enumerate(signals):
        if s.kind in _CONTACT_ONLY:
            result, signal_id = IngestResult.ACCEPTED, None
        elif i in copy_of:
            _, signal_id = outcome[copy_of[i]]
            result = IngestResult.DUPLICATE
        else:
            result, signal_id = outcome[i]
        out.append(StoredSignal(result=result, signal_id=signal_id, received_at=s.received_at))
    return out
