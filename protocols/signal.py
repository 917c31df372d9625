"""The canonical signal model every payload family is parsed into.

A DC-09 frame or MQTT message carries one or more :class:`Event`. Contact ID and SIA DC-03 events
share this one shape; ``family`` says which wire family the code belongs to. Classification into
the 12 forwarding categories (PROTOCOLS.md §4) is attached when the event is parsed.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Family(StrEnum):
    """Payload family of an event code."""

    CID = "cid"  # Ademco Contact ID (SIA DC-05), 3-digit code + qualifier
    SIA = "sia"  # SIA DC-03, 2-letter code


class Category(StrEnum):
    """The 12 "events to forward" categories, plus the two non-forwardable tags."""

    PANEL_NOT_RESPONDING = "panel_not_responding"
    CRASH_SMASH = "crash_smash"
    PANICS = "panics"
    SENSOR_TAMPER = "sensor_tamper"
    CANCELS = "cancels"
    BYPASS = "bypass"
    ARMING = "arming"
    PHONE_TESTS = "phone_tests"
    PHONE_COMM_FAILURES = "phone_comm_failures"
    ALARMS = "alarms"
    TROUBLE_RESTORALS = "trouble_restorals"
    TROUBLES = "troubles"
    OTHER = "other"  # known code that is never forwarded (program mode, access control, …)
    UNCLASSIFIED = "unclassified"  # unknown code: kept, never dropped, never forwarded by category


FORWARDING_CATEGORIES: tuple[Category, ...] = (
    Category.ALARMS,
    Category.ARMING,
    Category.CANCELS,
    Category.CRASH_SMASH,
    Category.PANEL_NOT_RESPONDING,
    Category.PANICS,
    Category.PHONE_TESTS,
    Category.TROUBLES,
    Category.BYPASS,
    Category.PHONE_COMM_FAILURES,
    Category.SENSOR_TAMPER,
    Category.TROUBLE_RESTORALS,
)
"""The 12 selectable categories, in the order the account-creation flow lists them."""

DEFAULT_FORWARDED_CATEGORIES: frozenset[Category] = frozenset(
    {
        Category.ALARMS,
        Category.ARMING,
        Category.CANCELS,
        Category.CRASH_SMASH,
        Category.PANEL_NOT_RESPONDING,
        Category.PANICS,
        Category.PHONE_TESTS,
        Category.TROUBLES,
    }
)
"""Selected by default (PRODUCT.md "Forwarding semantics")."""


class Classification(msgspec.Struct, frozen=True, kw_only=True):
    """Where an event code falls for forwarding purposes."""

    category: Category
    fire: bool = False
    co: bool = False
    restore: bool = False
    status: bool = False  # Contact ID Q=6: condition still present


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One alarm event, whatever family and transport it came in."""

    family: Family
    code: str  # Contact ID "130" (3 digits) or SIA "BA" (2 letters), upper case
    qualifier: str | None = None  # Contact ID "1" new/opening, "3" restore/closing, "6" status
    zone: int | None = None
    partition: int | None = None  # Contact ID GG, SIA ri modifier (area)
    user: int | None = None
    text: str | None = None  # SIA ^text^ / |A text, or server-generated text
    account: str | None = None  # account inside the data block, when given
    time: str | None = None  # SIA ti modifier (event time as sent)
    classification: Classification


class XData(msgspec.Struct, frozen=True, kw_only=True):
    """One DC-09 extended-data block ``[<id><value>]`` (PROTOCOLS.md §1.8)."""

    id: str  # one upper-case letter
    value: str
