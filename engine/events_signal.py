"""An events payload (the MQTT ``events`` JSON, also used by virtual modules) as an InboundSignal."""

from __future__ import annotations

from datetime import datetime

from engine.ingest_types import EntryDelay, InboundSignal, SignalKind, Transport
from protocols.mqtt_payloads import EventsV1, to_events


def signal_from_events(
    payload: EventsV1,
    *,
    account: str,
    transport: Transport,
    received_at: datetime,
    peer: str,
    raw: bytes,
    dedupe_key: str,
    dedupe_window_s: int | None = None,
) -> InboundSignal:
    """The event signal of a validated payload: classified events, entry delay, dialer flag."""
    entry = payload.entry_delay
    return InboundSignal(
        account=account,
        transport=transport,
        kind=SignalKind.EVENT,
        received_at=received_at,
        peer=peer,
        raw=raw,
        events=to_events(payload),
        sent_at=payload.sent_at,
        seq=payload.msg_id,
        dedupe_key=dedupe_key,
        dedupe_window_s=dedupe_window_s,
        dialer_failed=payload.dialer_failed,
        entry_delay=EntryDelay(
            partition=entry.partition, zone=entry.zone, entry_delay_s=entry.entry_delay_s
        )
        if entry is not None
        else None,
    )
