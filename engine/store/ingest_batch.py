"""One group-commit batch in one statement: ``ingest_batch`` (migrations/0355_ingest_batch.sql).

The engine plans a batch in Python (signal rows, contacts, supervision deadlines, Crash & Smash
entries, forwarding decisions, outbox rows) and :func:`write_batch` sends it as one call. Outside
an explicit transaction that is one round trip and one commit, which is what lets a group commit
keep up with hundreds of stop-and-wait modules; inside one (the timers, batches whose decisions
need the phone-line state) it is one statement of that transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import msgspec

from engine.store.pg_text import storable_json
from protocols.signal import Event

if TYPE_CHECKING:
    from engine.store.signals import SignalRows, StoredSignal

_encoder = msgspec.json.Encoder()

# How long a call waits for a lock: the function's own setting (migration 0545, which a test
# checks against this). Past it the call fails with lock_not_available and the pipeline sets the
# held accounts' signals aside (engine/pipeline.py). Transactions of the ingest writer that lock
# rows before the call (the phone-line state, the restores) set it too.
INGEST_LOCK_TIMEOUT = "500ms"

_CALL = "SELECT * FROM ingest_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"


class EntryOpen(msgspec.Struct, frozen=True):
    """A Crash & Smash entry delay opened by the signal at position ``o``."""

    o: int
    a: str  # account
    p: int  # partition
    z: int | None  # entry zone
    d: datetime  # deadline
    s: datetime | None = None  # the module's time of the entry, when it gave one
    # s + entry delay + dialer delay + grace: a disarm the module sent in [s, u) closes the
    # entry even when it was committed first (migration 0520)
    u: datetime | None = None
    # when the signal was received: a pending entry already due then keeps its deadline, and
    # this one waits behind it (migration 0540)
    r: datetime | None = None


class EntryClose(msgspec.Struct, frozen=True):
    """Entry delays of an account (one partition, or all) closed by the signal at ``o``."""

    o: int
    a: str
    p: int | None
    r: str  # reason
    s: datetime | None = None  # the module's time of the close, when it gave one
    # the event's place in its signal: of two closes matching one entry with the same module
    # time, in the same signal, the later event counts (migration 0550)
    i: int = 0


class DecisionRow(msgspec.Struct, frozen=True):
    """A forwarding decision for event ``i`` of the signal at ``o`` (or of stored signal ``s``)."""

    o: int | None
    s: int | None
    i: int
    at: datetime
    a: str
    f: bool  # forwarded
    r: str  # reason
    c: str  # category
    v: str  # two-way-voice action


class OutboxRow(msgspec.Struct, frozen=True):
    """A delivery to enqueue, ``q`` its place in the batch's outbox (the order per lane)."""

    q: int
    o: int | None
    s: int | None
    i: int  # event index
    a: str  # account
    lane: str
    sa: str  # station account
    pr: int  # priority
    ev: Event
    rx: str  # primary receiver
    bx: str | None  # backup receiver
    at: datetime  # the signal's received_at
    v: bool  # listen-in after delivery (two-way voice)


class BatchWrite(msgspec.Struct, kw_only=True):
    """Everything one call writes. Positions refer to ``signals``' rows."""

    signals: SignalRows | None = None
    supervision: Sequence[tuple[str, datetime]] = ()  # (account, deadline), sorted by account
    opens: Sequence[EntryOpen] = ()
    closes: Sequence[EntryClose] = ()
    decisions: Sequence[DecisionRow] = ()
    outbox: Sequence[OutboxRow] = ()
    owner: str | None = None  # deliveries on clear lanes are inserted leased to it
    lease_s: float = 6.0


class Delivered(msgspec.Struct, frozen=True):
    """An outbox row the call inserted."""

    q: int  # its place in BatchWrite.outbox
    id: int
    leased: bool


class BatchDone(msgspec.Struct, kw_only=True):
    """What a call did."""

    stored: list[StoredSignal]
    kept: dict[int, int]  # position → new signal id (duplicates are not kept)
    restores: list[str]  # accounts whose Panel Not Responding the engine must restore
    opened: list[tuple[str, int]]
    closed: list[tuple[str, int, str]]
    deliveries: list[Delivered]
    # entries not opened: the module had already disarmed the partition after them
    stale: list[tuple[str, int]] = msgspec.field(default_factory=list)
    # entries waiting behind one of their partition already due (it fires or closes first)
    held: list[tuple[str, int]] = msgspec.field(default_factory=list)


def _doc(rows: Sequence[msgspec.Struct]) -> str | None:
    return storable_json(_encoder.encode(rows).decode()) if rows else None


async def write_batch(
    conn: asyncpg.Connection, plan: BatchWrite, *, duplicate_window_s: int
) -> BatchDone:
    """Write ``plan`` in one statement and report what happened."""
    rows = plan.signals
    records = await conn.fetch(
        _CALL,
        rows.document() if rows is not None else "[]",
        timedelta(seconds=duplicate_window_s),
        rows.accounts if rows is not None else [],
        rows.first_seen if rows is not None else [],
        rows.last_seen if rows is not None else [],
        [a for a, _ in plan.supervision],
        [d for _, d in plan.supervision],
        _doc(plan.opens),
        _doc(plan.closes),
        _doc(plan.decisions),
        _doc(plan.outbox),
        plan.owner,
        timedelta(seconds=plan.lease_s),
    )
    kept: dict[int, int] = {}
    originals: dict[str, int] = {}
    restores: list[str] = []
    opened: list[tuple[str, int]] = []
    closed: list[tuple[str, int, str]] = []
    stale: list[tuple[str, int]] = []
    held: list[tuple[str, int]] = []
    deliveries: list[Delivered] = []
    for r in records:
        kind = r["kind"]
        if kind == "signal":
            kept[r["ord"]] = r["id"]
        elif kind == "delivery":
            deliveries.append(Delivered(q=r["ord"], id=r["id"], leased=r["leased"]))
        elif kind == "dup":
            originals[r["dkey"]] = r["id"]
        elif kind == "restore":
            restores.append(r["account"])
        elif kind == "opened":
            opened.append((r["account"], r["part"]))
        elif kind == "closed":
            closed.append((r["account"], r["part"], r["reason"]))
        elif kind == "stale":
            stale.append((r["account"], r["part"]))
        elif kind == "held":
            held.append((r["account"], r["part"]))
    return BatchDone(
        stored=rows.results(kept, originals) if rows is not None else [],
        kept=kept,
        restores=restores,
        opened=opened,
        closed=closed,
        deliveries=deliveries,
        stale=stale,
        held=held,
    )
