"""Signal rows of a group-commit batch, and what became of each input signal.

The batch is written by ``ingest_batch`` (engine/migrations/0355_ingest_batch.sql, called from
:mod:`engine.store.ingest_batch`) in one round trip, the rows sent as one JSON parameter (msgspec
encodes it far faster than asyncpg encodes twenty arrays). What it does with them:

* every ``EVENT`` and ``REJECTED`` signal gets an id from ``signals_id_seq``;
* an ``EVENT`` with a ``dedupe_key`` claims the key in ``signal_dedupe`` for
  ``duplicate_window_s``. **Duplicates are stored once**: when the key is already held by an
  unexpired earlier signal, the copy is not inserted, the original's ``duplicates`` counter goes
  up, and the copy's result is ``IngestResult.DUPLICATE`` (the listener ACKs it again; it is never
  forwarded twice). Copies inside one batch are folded here, before the statement;
* the remaining signals are inserted into the partitioned ``signals`` table;
* ``LINK_TEST`` and ``CHECKIN`` are not stored as signals: with every other valid signal
  (duplicates included, rejected payloads excluded) they move the account's ``last_contact_at``
  forward (and set ``first_contact_at`` once), in account order, so that several engine processes
  committing at once take the row locks in the same order.

Results come back in input order. ``REJECTED`` signals are stored for audit with their reason.
When two engines commit the same dedupe key at once, the second waits on the key's row lock and
then reports DUPLICATE of the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg
import msgspec

from engine.ingest_types import InboundSignal, IngestResult, SignalKind, Transport
from engine.store.ingest_batch import BatchWrite, write_batch
from engine.store.pg_text import storable_json
from protocols.signal import Event, XData

_encoder = msgspec.json.Encoder()
_CONTACT_ONLY = frozenset({SignalKind.LINK_TEST, SignalKind.CHECKIN})
_REJECTED = SignalKind.REJECTED
_EVENT = SignalKind.EVENT
_SERVER = Transport.SERVER


class _Row(msgspec.Struct, frozen=True, kw_only=True):
    """One signal row of the batch (short keys: the batch goes as one JSON parameter)."""

    o: int  # position in the batch
    at: datetime  # received_at
    a: str  # account
    tr: str  # transport
    k: str  # kind
    p: str | None  # peer
    tok: str | None
    enc: bool
    seq: str | None
    rcv: str | None
    ln: str | None
    raw: bytes  # base64 in JSON
    ev: tuple[Event, ...]
    cat: list[str]
    x: tuple[XData, ...] | None
    st: datetime | None  # sent_at
    df: bool  # dialer_failed
    dk: str | None  # dedupe_key
    rr: str | None  # reject_reason
    n: int  # copies folded into this row
    w: int | None  # the dedupe key's own window (s) when longer than the batch's


class StoredSignal(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one input signal of a batch."""

    result: IngestResult
    signal_id: int | None  # the stored row (the original's id for a duplicate); None: not stored
    received_at: datetime


class SignalRows:
    """A batch's signals as the rows to send: in-batch copies folded, contacts collected."""

    __slots__ = (
        "_copies",
        "accounts",
        "copy_of",
        "first_of",
        "first_seen",
        "last_seen",
        "sent",
        "signals",
    )

    def __init__(self, signals: Sequence[InboundSignal]) -> None:
        self.signals = signals
        # The first occurrence of a key goes to the database and carries how many copies
        # followed it; the copies share its fate (new → DUPLICATE of it).
        self.first_of: dict[str, int] = {}
        self.copy_of: dict[int, int] = {}
        copies: dict[int, int] = {}
        sent: list[int] = []
        contacts: dict[str, tuple[datetime, datetime]] = {}  # account → (earliest, latest)
        for i, s in enumerate(signals):
            kind = s.kind
            # A module's contact: anything it sent that was not refused. The engine's own
            # signals (Panel Not Responding, Crash & Smash) are not contacts from the module.
            if kind is not _REJECTED and s.transport is not _SERVER:
                seen = contacts.get(s.account)
                at = s.received_at
                contacts[s.account] = (
                    (at, at) if seen is None else (min(seen[0], at), max(seen[1], at))
                )
            if kind in _CONTACT_ONLY:
                continue
            key = s.dedupe_key if kind is _EVENT else None
            if key is not None:
                first = self.first_of.get(key)
                if first is not None:
                    self.copy_of[i] = first
                    copies[first] += 1
                    continue
                self.first_of[key] = i
                copies[i] = 0
            sent.append(i)
        self.sent = sent
        self._copies = copies
        self.accounts = sorted(contacts)
        self.first_seen = [contacts[a][0] for a in self.accounts]
        self.last_seen = [contacts[a][1] for a in self.accounts]

    def document(self) -> str:
        """The rows sent, as the JSON text of the statement's parameter."""
        copies = self._copies
        signals = self.signals
        document = _encoder.encode(
            [
                _Row(
                    o=i,
                    at=s.received_at,
                    a=s.account,
                    tr=s.transport,  # StrEnum members: msgspec writes their values
                    k=s.kind,
                    p=s.peer,
                    tok=s.token,
                    enc=s.encrypted,
                    seq=s.seq,
                    rcv=s.receiver,
                    ln=s.line,
                    raw=s.raw,
                    ev=s.events,
                    cat=[e.classification.category for e in s.events],
                    x=s.xdata or None,
                    st=s.sent_at,
                    df=s.dialer_failed,
                    dk=s.dedupe_key,
                    rr=s.reject_reason,
                    n=copies.get(i, 0),
                    w=s.dedupe_window_s,
                )
                for i, s in ((i, signals[i]) for i in self.sent)
            ]
        ).decode()
        return storable_json(document)  # a NUL in a text field would fail the whole batch

    def results(self, kept: Mapping[int, int], originals: Mapping[str, int]) -> list[StoredSignal]:
        """One StoredSignal per input signal, from the ids of the rows kept (position → id) and
        the originals of the duplicates (dedupe key → original id)."""
        out: list[StoredSignal] = []
        signals = self.signals
        for i, s in enumerate(signals):
            first = self.copy_of.get(i, i)
            if s.kind in _CONTACT_ONLY:
                result, signal_id = IngestResult.ACCEPTED, None
            elif first in kept:
                signal_id = kept[first]
                if first != i:
                    result = IngestResult.DUPLICATE
                elif s.kind is _REJECTED:
                    result = IngestResult.REJECTED
                else:
                    result = IngestResult.ACCEPTED
            else:  # a copy of a signal committed by an earlier batch
                key = signals[first].dedupe_key
                assert key is not None
                result, signal_id = IngestResult.DUPLICATE, originals[key]
            out.append(StoredSignal(result=result, signal_id=signal_id, received_at=s.received_at))
        return out


async def insert_signals(
    conn: asyncpg.Connection, signals: Sequence[InboundSignal], *, duplicate_window_s: int
) -> list[IngestResult]:
    """Store a batch; one IngestResult per signal, in input order."""
    stored = await insert_signals_returning(conn, signals, duplicate_window_s=duplicate_window_s)
    return [s.result for s in stored]


async def insert_signals_returning(
    conn: asyncpg.Connection, signals: Sequence[InboundSignal], *, duplicate_window_s: int
) -> list[StoredSignal]:
    """Store a batch and return each signal's result and row id (no decisions, no outbox)."""
    if not signals:
        return []
    done = await write_batch(
        conn, BatchWrite(signals=SignalRows(signals)), duplicate_window_s=duplicate_window_s
    )
    return done.stored
