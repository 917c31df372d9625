"""MQTT topics and payloads between modules and the engine (version 1, JSON via msgspec).

module → engine: ``{prefix}/modules/{serial}/checkin`` and ``…/events``
engine → module: ``{prefix}/modules/{serial}/ack`` and ``…/commands``
Every payload carries ``"v": 1``. Decoding raises only :class:`MqttPayloadError`, whose message is
the reason sent back in a ``rejected`` ack.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

import msgspec

from protocols.categories import classify
from protocols.signal import Event, Family

VERSION = 1
MAX_EVENTS_PER_MESSAGE = 32
MAX_TEXT = 256
MAX_REASON = 200  # characters of a rejected ack's reason (it may quote the module's field names)


class MqttPayloadError(Exception):
    """A module's payload cannot be accepted; ``str(error)`` is the reason for the ack."""


class TopicKind(StrEnum):
    CHECKIN = "checkin"
    EVENTS = "events"
    ACK = "ack"
    COMMANDS = "commands"


# Zones, partitions and users as panels number them (Contact ID's are 3 digits, SIA's up to 6).
PanelNumber = Annotated[int, msgspec.Meta(ge=0, le=999_999)]
# An entry delay is seconds to a few minutes (EN 50131: at most 45 s for grade 2); an hour bounds it.
EntryDelaySeconds = Annotated[int, msgspec.Meta(ge=0, le=3600)]


class _Payload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Common options of every payload: frozen, keyword-only, unknown fields refused."""


class MqttEvent(_Payload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One alarm event as a module sends it."""

    family: Literal["cid", "sia"]
    code: str
    qualifier: Literal["1", "3", "6"] | None = None  # Contact ID only
    zone: PanelNumber | None = None
    partition: PanelNumber | None = None
    user: PanelNumber | None = None
    text: str | None = None


class EntryDelayStart(_Payload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Armed system, entry door opened: the entry delay runs (used for Crash & Smash)."""

    partition: PanelNumber = 1
    zone: PanelNumber | None = None
    entry_delay_s: EntryDelaySeconds = 30


class CheckinV1(_Payload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Periodic check-in (supervision)."""

    v: Literal[1]
    msg_id: str | None = None
    sent_at: datetime | None = None


class EventsV1(_Payload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One or more events; ``dialer_failed`` says the panel's own dialer could not deliver them."""

    v: Literal[1]
    msg_id: str
    sent_at: datetime | None = None
    events: tuple[MqttEvent, ...] = ()
    entry_delay: EntryDelayStart | None = None
    dialer_failed: bool = False


class AckStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class AckV1(_Payload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Engine → module, sent only after the signal is committed (or rejected)."""

    v: Literal[1] = 1
    msg_id: str | None
    status: AckStatus
    reason: str | None = None


class StartVoiceSessionV1(_Payload, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Engine → module: open a two-way-voice session; ``siren_off`` so the call can be heard,
    false when the station did not acknowledge the listen-in (nobody is known to be listening)."""

    v: Literal[1] = 1
    command: Literal["start_voice_session"] = "start_voice_session"
    siren_off: bool = True
    signal_id: int | None = None


_checkin_decoder = msgspec.json.Decoder(CheckinV1)
_events_decoder = msgspec.json.Decoder(EventsV1)
_encoder = msgspec.json.Encoder()


def parse_topic(topic: str, prefix: str) -> tuple[str, TopicKind]:
    """(serial, kind) of ``{prefix}/modules/{serial}/{kind}``; MqttPayloadError otherwise."""
    head = prefix.rstrip("/") + "/modules/"
    if not topic.startswith(head):
        raise MqttPayloadError(f"topic {topic!r} is not under {head}")
    rest = topic[len(head) :].split("/")
    if len(rest) != 2 or not rest[0]:
        raise MqttPayloadError(f"topic {topic!r}: expected {head}<serial>/<kind>")
    try:
        return rest[0], TopicKind(rest[1])
    except ValueError:
        raise MqttPayloadError(f"topic {topic!r}: unknown kind {rest[1]!r}") from None


def topic(prefix: str, serial: str, kind: TopicKind) -> str:
    """The topic for ``serial`` and ``kind``."""
    return f"{prefix.rstrip('/')}/modules/{serial}/{kind.value}"


def _decode(
    decoder: msgspec.json.Decoder[CheckinV1] | msgspec.json.Decoder[EventsV1],
    data: bytes,
    max_bytes: int,
) -> object:
    if len(data) > max_bytes:
        raise MqttPayloadError(f"payload of {len(data)} bytes exceeds {max_bytes}")
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MqttPayloadError(bounded_reason(f"invalid payload: {exc}")) from None
    except msgspec.DecodeError as exc:
        raise MqttPayloadError(bounded_reason(f"malformed JSON: {exc}")) from None


def bounded_reason(text: str) -> str:
    """``text`` cut to :data:`MAX_REASON` characters: the ack carrying it stays small (an
    unknown field's 10 KB name must not make an ack the broker refuses)."""
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


class _MsgIdOnly(msgspec.Struct):
    msg_id: object = None


_msg_id_decoder = msgspec.json.Decoder(_MsgIdOnly)


def msg_id_of(data: bytes, *, max_bytes: int = 16_384) -> str | None:
    """The ``msg_id`` of a payload that did not validate, when one can be read (1-64
    characters), so that its ``rejected`` ack names the message; None otherwise."""
    if len(data) > max_bytes:
        return None
    try:
        msg_id = _msg_id_decoder.decode(data).msg_id
    except (msgspec.DecodeError, RecursionError):
        return None
    return msg_id if isinstance(msg_id, str) and 1 <= len(msg_id) <= 64 else None


_Sent = TypeVar("_Sent", CheckinV1, EventsV1)
_ZERO = timedelta(0)


def decode_checkin(data: bytes, *, max_bytes: int = 16_384) -> CheckinV1:
    """A check-in payload (an empty payload is accepted as a bare check-in)."""
    if not data.strip():
        return CheckinV1(v=1)
    result = _decode(_checkin_decoder, data, max_bytes)
    assert isinstance(result, CheckinV1)
    if result.msg_id is not None and not 1 <= len(result.msg_id) <= 64:
        raise MqttPayloadError("msg_id must be 1-64 characters")
    return _in_utc(result)


def decode_events(data: bytes, *, max_bytes: int = 16_384) -> EventsV1:
    """An events payload, validated (codes, counts, sizes)."""
    if not data.strip():
        # Also what a broker delivers when someone clears a retained message on the topic.
        raise MqttPayloadError("empty payload (an events message needs v, msg_id and events)")
    result = _decode(_events_decoder, data, max_bytes)
    assert isinstance(result, EventsV1)
    if not result.events and result.entry_delay is None:
        raise MqttPayloadError("events payload has no events and no entry_delay")
    if len(result.events) > MAX_EVENTS_PER_MESSAGE:
        raise MqttPayloadError(f"too many events ({len(result.events)} > {MAX_EVENTS_PER_MESSAGE})")
    if not 1 <= len(result.msg_id) <= 64:
        raise MqttPayloadError("msg_id must be 1-64 characters")
    for index, event in enumerate(result.events):
        problem = _check_event(event)
        if problem:
            raise MqttPayloadError(f"events[{index}]: {problem}")
    return _in_utc(result)


def _in_utc(payload: _Sent) -> _Sent:
    """``payload`` with its ``sent_at`` in UTC. One that gives no time zone is read as UTC (as
    DC-09 times are): left naive, it was read in the database session's zone and could not be
    compared with the module's other times. One with an offset is the same instant in UTC:
    JSON allows offsets up to ±23:59, PostgreSQL reads at most ±15:59 (a larger one failed the
    commit, and the alarm was refused)."""
    sent = payload.sent_at
    if sent is None:
        return payload
    if sent.tzinfo is None:
        return msgspec.structs.replace(payload, sent_at=sent.replace(tzinfo=UTC))
    if sent.utcoffset() == _ZERO:
        return payload
    try:
        return msgspec.structs.replace(payload, sent_at=sent.astimezone(UTC))
    except OverflowError:  # within hours of year 1 or 9999: kept as written
        return payload


def _check_event(event: MqttEvent) -> str | None:
    if event.family == "cid":
        if len(event.code) != 3 or not (event.code.isascii() and event.code.isdigit()):
            return f"Contact ID code must be 3 digits, got {event.code!r}"
    elif (
        len(event.code) != 2
        or not event.code.isalpha()
        or not event.code.isupper()
        or not event.code.isascii()
    ):
        return f"SIA code must be 2 upper-case letters, got {event.code!r}"
    if event.family == "sia" and event.qualifier is not None:
        return "qualifier applies to Contact ID only"
    for name in ("zone", "partition", "user"):
        value = getattr(event, name)
        if value is not None and not 0 <= value <= 999_999:
            return f"{name} out of range"
    if event.text is not None and len(event.text) > MAX_TEXT:
        return f"text longer than {MAX_TEXT} characters"
    return None


def to_events(payload: EventsV1) -> tuple[Event, ...]:
    """The canonical, classified events of a payload."""
    out = []
    for item in payload.events:
        family = Family(item.family)
        qualifier = (item.qualifier or "1") if family is Family.CID else None
        out.append(
            Event(
                family=family,
                code=item.code,
                qualifier=qualifier,
                zone=item.zone,
                partition=item.partition,
                user=item.user,
                text=item.text,
                classification=classify(family, item.code, qualifier),
            )
        )
    return tuple(out)


def encode(payload: AckV1 | StartVoiceSessionV1) -> bytes:
    """JSON bytes of an engine → module payload."""
    return _encoder.encode(payload)
