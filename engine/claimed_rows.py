"""Outbox rows as the dispatcher holds them, read from a claim's reply.

A claimed row this engine cannot read (an event written by another version of the engine, say)
must not cost the claim its other rows: it is set aside with its lane, and the dispatcher hands
it back with a failure record (see ``Dispatcher._set_aside``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from engine.forwarding_stage import OwnedDelivery
from protocols.signal import Event

_event_decoder = msgspec.json.Decoder(Event)


def owned_from_record(row: Any) -> OwnedDelivery:
    """A claimed outbox row as the dispatcher holds it."""
    return OwnedDelivery(
        id=row["id"],
        signal_id=row["signal_id"],
        account=row["account"],
        lane=row["lane"],
        station_account=row["station_account"],
        priority=row["priority"],
        event=_event_decoder.decode(row["event"]),
        primary_receiver=row["primary_receiver"],
        backup_receiver=row["backup_receiver"],
        seq=row["seq"],
        attempts=row["attempts"],
        received_at=row["received_at"],
        two_way_voice=row["two_way_voice"],
    )


class Unreadable(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed row this engine could not read: the first of its lane in the claim."""

    id: int
    lane: str
    attempts: int
    primary_receiver: str
    error: str


class ClaimedRows(msgspec.Struct, frozen=True, kw_only=True):
    """A claim's rows: those to send, in id order, and the lanes set aside."""

    readable: list[OwnedDelivery]
    unreadable: list[Unreadable]


def read_claimed(records: Iterable[Any]) -> ClaimedRows:
    """Read a claim's rows. A lane with a row that cannot be read is set aside whole (none of
    its rows is sent): rows behind that one must not overtake it, and those before it are
    handed back with it and claimed again at once (sending them from here while the lane is
    handed back would leave them unleased while in flight)."""
    readable: list[OwnedDelivery] = []
    unreadable: dict[str, Unreadable] = {}
    for record in sorted(records, key=lambda r: int(r["id"])):
        lane = str(record["lane"])
        try:
            readable.append(owned_from_record(record))
        except Exception as exc:  # whatever the cause, a row we cannot read is set aside alike
            if lane not in unreadable:
                unreadable[lane] = Unreadable(
                    id=int(record["id"]),
                    lane=lane,
                    attempts=int(record["attempts"]),
                    primary_receiver=str(record["primary_receiver"]),
                    error=f"{type(exc).__name__}: {exc}"[:400],
                )
    return ClaimedRows(
        readable=[row for row in readable if row.lane not in unreadable],
        unreadable=list(unreadable.values()),
    )
