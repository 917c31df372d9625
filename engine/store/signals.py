"""Writing signals: one batch per group commit, inside the caller's transaction.

Per batch: claim dedupe keys (a duplicate inside the window is ACKed again but not stored twice;
the original's ``duplicates`` counter is raised), insert the new signals, and record the modules'
last contact. Link tests and check-ins only touch last contact. A handful of round trips per
batch, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg
import msgspec

from engine.ingest_types import InboundSignal, IngestResult, SignalKind
from protocols.signal import Event, XData

_events_encoder = msgspec.json.Encoder()
_CONTACT_ONLY = (SignalKind.LINK_TEST, SignalKind.CHECKIN)


class StoredSignal(msgspec.Struct, frozen=True, kw_only=True):
    """What the batch writer knows about one input signal after the insert."""

    result: IngestResult
    signal_id: int | None  # None for link tests/check-ins (not stored) and duplicates
    received_at: datetime


def _events_json(events: tuple[Event, ...]) -> str:
    return _events_encoder.encode(events).decode()


def _xdata_json(xdata: tuple[XData, ...]) -> str | None:
    return _events_encoder.encode(xdata).decode() if xdata else None


async def insert_signals(
    conn: asyncpg.Connection, signals: Sequence[InboundSignal], *, duplicate_window_s: int
) -> list[IngestResult]:
    """Store a batch; results in input order. Call inside a transaction."""
    return [
        s.result
        for s in await insert_signals_returning(
            conn, signals, duplicate_window_s=duplicate_window_s
        )
    ]


async def insert_signals_returning(
    conn: asyncpg.Connection, signals: Sequence[InboundSignal], *, duplicate_window_s: int
) -> list[StoredSignal]:
    """Store a batch and return each signal's result and id. Call inside a transaction."""
    stored_idx = [i for i, s in enumerate(signals) if s.kind not in _CONTACT_ONLY]
    ids: list[int] = []
    if stored_idx:
        ids = await conn.fetchval(
            "SELECT array_agg(nextval('signals_id_seq')) FROM generate_series(1, $1)",
            len(stored_idx),
        )
    id_of = dict(zip(stored_idx, ids, strict=True))

    duplicate: set[int] = set()
    keyed = [i for i in stored_idx if signals[i].dedupe_key and signals[i].kind is SignalKind.EVENT]
    if keyed:
        # First occurrence in the batch claims the key; later copies in the same batch are duplicates.
        first: dict[str, int] = {}
        for i in keyed:
            key = signals[i].dedupe_key
            assert key is not None
            if key in first:
                duplicate.add(i)
            else:
                first[key] = i
        keys = list(first)
        window = timedelta(seconds=duplicate_window_s)
        claimed = await conn.fetch(
            """
            INSERT INTO signal_dedupe (dedupe_key, signal_id, received_at, expires_at)
            SELECT k, id, at, at + $4::interval FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS t(k, id, at)
            ON CONFLICT (dedupe_key) DO UPDATE
                SET signal_id = EXCLUDED.signal_id, received_at = EXCLUDED.received_at, expires_at = EXCLUDED.expires_at
                WHERE signal_dedupe.expires_at <= EXCLUDED.received_at
            RETURNING dedupe_key
            """,
            keys,
            [id_of[first[k]] for k in keys],
            [signals[first[k]].received_at for k in keys],
            window,
        )
        owned = {row["dedupe_key"] for row in claimed}
        duplicate.update(first[k] for k in keys if k not in owned)
        if duplicate:
            await conn.execute(
                """
                UPDATE signals s SET duplicates = s.duplicates + d.n
                FROM (SELECT d.signal_id, d.received_at, count(*) AS n
                      FROM unnest($1::text[]) AS k JOIN signal_dedupe d ON d.dedupe_key = k
                      GROUP BY d.signal_id, d.received_at) d
                WHERE s.id = d.signal_id AND s.received_at = d.received_at
                """,
                [signals[i].dedupe_key for i in duplicate],
            )

    new = [i for i in stored_idx if i not in duplicate]
    if new:
        rows = [signals[i] for i in new]
        await conn.execute(
            """
            INSERT INTO signals (id, received_at, account, transport, kind, peer, token, encrypted, seq, receiver,
                                 line, raw, events, categories, xdata, sent_at, dedupe_key, reject_reason)
            SELECT id, received_at, account, transport, kind, peer, token, encrypted, seq, receiver, line, raw,
                   events::jsonb, string_to_array(categories, ','), xdata::jsonb, sent_at, dedupe_key, reject_reason
            FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                        $8::boolean[], $9::text[], $10::text[], $11::text[], $12::bytea[], $13::text[], $14::text[],
                        $15::text[], $16::timestamptz[], $17::text[], $18::text[])
                 AS t(id, received_at, account, transport, kind, peer, token, encrypted, seq, receiver, line, raw,
                      events, categories, xdata, sent_at, dedupe_key, reject_reason)
            """,
            [id_of[i] for i in new],
            [s.received_at for s in rows],
            [s.account for s in rows],
            [s.transport.value for s in rows],
            [s.kind.value for s in rows],
            [s.peer for s in rows],
            [s.token for s in rows],
            [s.encrypted for s in rows],
            [s.seq for s in rows],
            [s.receiver for s in rows],
            [s.line for s in rows],
            [s.raw for s in rows],
            [_events_json(s.events) for s in rows],
            [",".join(e.classification.category.value for e in s.events) for s in rows],
            [_xdata_json(s.xdata) for s in rows],
            [s.sent_at for s in rows],
            [s.dedupe_key for s in rows],
            [s.reject_reason for s in rows],
        )

    # Last contact: any valid signal, link test or check-in (not rejected payloads).
    latest: dict[str, datetime] = {}
    for s in signals:
        if s.kind is SignalKind.REJECTED:
            continue
        if s.account not in latest or s.received_at > latest[s.account]:
            latest[s.account] = s.received_at
    if latest:
        accounts = sorted(latest)  # stable lock order between engine processes
        await conn.execute(
            """
            UPDATE accounts a SET last_contact_at = GREATEST(a.last_contact_at, t.at),
                                  first_contact_at = COALESCE(a.first_contact_at, t.at)
            FROM unnest($1::text[], $2::timestamptz[]) AS t(account, at)
            WHERE a.account = t.account
            """,
            accounts,
            [latest[a] for a in accounts],
        )

    out: list[StoredSignal] = []
    for i, s in enumerate(signals):
        if s.kind in _CONTACT_ONLY:
            out.append(
                StoredSignal(
                    result=IngestResult.ACCEPTED, signal_id=None, received_at=s.received_at
                )
            )
        elif i in duplicate:
            out.append(
                StoredSignal(
                    result=IngestResult.DUPLICATE, signal_id=None, received_at=s.received_at
                )
            )
        elif s.kind is SignalKind.REJECTED:
            out.append(
                StoredSignal(
                    result=IngestResult.REJECTED, signal_id=id_of[i], received_at=s.received_at
                )
            )
        else:
            out.append(
                StoredSignal(
                    result=IngestResult.ACCEPTED, signal_id=id_of[i], received_at=s.received_at
                )
            )
    return out
