"""The forwarding policy: a pure function from (event, settings, state) to a decision with a reason.

Exactly PRODUCT.md "Forwarding semantics": a signal is forwarded when (1) the mode is not
``never``, (2) its category is selected (on a UL/ETL installation Alarms and Panel Not Responding
cannot be deselected), and (3) the mode is ``always``, or ``phone_line_failure`` and the phone line
is not connected, has failed, or the panel's dialer could not deliver this signal. Server-generated
signals need only (1) and (2). The first failing rule is the reason.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from engine.account_model import ForwardingMode, ForwardingSettings
from engine.account_state import AccountState
from protocols.signal import FORWARDING_CATEGORIES, Category, Event


class DecisionReason(StrEnum):
    """Why a signal was or was not forwarded (stored, exported as a metric label)."""

    FORWARDED = "forwarded"
    MODE_NEVER = "mode_never"
    NOT_FORWARDABLE = "not_forwardable"  # unclassified code or a code that is never forwarded
    CATEGORY_NOT_SELECTED = "category_not_selected"
    PHONE_LINE_OK = "phone_line_ok"  # phone_line_failure mode, line connected and healthy
    NO_STATION_ACCOUNT = (
        "no_station_account"  # misconfiguration: nothing to address the station with
    )
    NO_RECEIVER = "no_receiver"  # misconfiguration: no primary receiver


class TwoWayVoiceAction(StrEnum):
    NONE = "none"
    LISTEN_IN_AFTER_DELIVERY = "listen_in_after_delivery"


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome for one event."""

    forward: bool
    reason: DecisionReason
    category: Category
    primary_receiver: str | None = None
    backup_receiver: str | None = None
    station_account: str | None = None
    two_way_voice: TwoWayVoiceAction = TwoWayVoiceAction.NONE


_FORWARDABLE = frozenset(FORWARDING_CATEGORIES)
_UL_LOCKED = frozenset({Category.ALARMS, Category.PANEL_NOT_RESPONDING})


def ul_effective_categories(settings: ForwardingSettings) -> frozenset[Category]:
    """The categories in force: on a UL/ETL installation Alarms and PNR are always selected."""
    if settings.ul_listed:
        return settings.categories | _UL_LOCKED
    return settings.categories


def decide(
    event: Event,
    settings: ForwardingSettings,
    state: AccountState,
    *,
    server_generated: bool = False,
    dialer_failed: bool = False,
) -> Decision:
    """Decide for one event (pure; no I/O)."""
    category = event.classification.category
    if settings.mode is ForwardingMode.NEVER:
        return Decision(forward=False, reason=DecisionReason.MODE_NEVER, category=category)
    if category not in _FORWARDABLE:
        return Decision(forward=False, reason=DecisionReason.NOT_FORWARDABLE, category=category)
    selected = category in settings.categories or (settings.ul_listed and category in _UL_LOCKED)
    if not selected:
        return Decision(
            forward=False, reason=DecisionReason.CATEGORY_NOT_SELECTED, category=category
        )
    if (
        not server_generated
        and settings.mode is ForwardingMode.PHONE_LINE_FAILURE
        and settings.phone_line_connected
        and not state.phone_line_failed
        and not dialer_failed
    ):
        return Decision(forward=False, reason=DecisionReason.PHONE_LINE_OK, category=category)
    if not settings.station_account:
        return Decision(forward=False, reason=DecisionReason.NO_STATION_ACCOUNT, category=category)
    if not settings.primary_receiver:
        return Decision(forward=False, reason=DecisionReason.NO_RECEIVER, category=category)
    cls = event.classification
    voice = (
        TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY
        if settings.two_way_voice and (cls.fire or cls.co) and not cls.restore
        else TwoWayVoiceAction.NONE
    )
    return Decision(
        forward=True,
        reason=DecisionReason.FORWARDED,
        category=category,
        primary_receiver=settings.primary_receiver,
        backup_receiver=settings.backup_receiver,
        station_account=settings.station_account,
        two_way_voice=voice,
    )


def check_two_way_voice_eligibility(
    *, module_capable: bool, receiver_supports: bool, package_includes: bool
) -> list[str]:
    """What is missing for the two-way-voice option (empty: eligible)."""
    missing = []
    if not module_capable:
        missing.append("module is not two-way-voice capable")
    if not receiver_supports:
        missing.append("selected receiver does not support two-way voice")
    if not package_includes:
        missing.append("service package does not include two-way voice")
    return missing
