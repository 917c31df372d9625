"""An events payload (the MQTT ``events`` JSON, also used by virtual modules) as an InboundSignal."""

from __future__ import annotations

import hashlib
from datetime import datetime

import msgspec

from engine.ingest_types import EntryDelay, InboundSignal, SignalKind, Transport
from protocols.mqtt_payloads import EventsV1, to_events


def mqtt_dedupe_key(serial: str, payload: EventsV1) -> str:
    """Same module + ``msg_id`` + content (events, entry delay, dialer flag; not ``sent_at``),
    as DC-09 dedupes on account + seq + data. A module whose counter restarts after a reboot
    reuses ids: its new alarms must not be acknowledged ``duplicate`` and dropped."""
    content = msgspec.json.encode((payload.events, payload.entry_delay, payload.dialer_failed))
    digest = hashlib.blake2b(content, digest_size=12).hexdigest()
    return f"mqtt:{serial}:{payload.msg_id}:{digest}"


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
