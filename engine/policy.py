"""The forwarding policy: a pure function from (event, settings, state) to a decision with a reason.

Exactly PRODUCT.md "Forwarding semantics". A signal is forwarded when all hold, else it is recorded
as not forwarded with the first failing rule as the reason:

1. the mode is not ``never``;
2. its category is selected (unclassified and "other" codes never are; on a UL/ETL installation
   Alarms and Panel Not Responding always are);
3. the mode is ``always``, or ``phone_line_failure`` and (the phone line is not connected, or the
   account's line is currently failed, or the panel's dialer could not deliver this signal).

Server-generated signals (Panel Not Responding, Crash & Smash) need only rules 1 and 2. A signal that
passes all three on an account without a station account number or primary receiver is a
misconfiguration: it is recorded as not forwarded with its own reason, so it shows in the history
and the metrics instead of vanishing. docs/forwarding.md has the reasons table.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from engine.account_model import ForwardingMode, ForwardingSettings
from engine.account_state import AccountState
from protocols.signal import Category, Event


class DecisionReason(StrEnum):
    """Why an event was or was not forwarded. Stored with the decision and used as a metric label:
    the values are stable."""

    FORWARDED = "forwarded"
    MODE_NEVER = "mode_never"  # rule 1: the account is self-monitored
    UNCLASSIFIED = "unclassified"  # rule 2: a code we do not know (kept, never forwarded)
    NOT_FORWARDABLE = "not_forwardable"  # rule 2: a known code of the "other" kind (§4.1)
    CATEGORY_NOT_SELECTED = "category_not_selected"  # rule 2: category not among the account's
    PHONE_LINE_OK = "phone_line_ok"  # rule 3: phone_line_failure mode and the panel's line works
    NO_STATION_ACCOUNT = "no_station_account"  # misconfiguration: nothing to address the station
    NO_RECEIVER = "no_receiver"  # misconfiguration: no primary receiver


class TwoWayVoiceAction(StrEnum):
    """What delivery does about two-way voice once the station has acknowledged the event."""

    NONE = "none"
    # Send listen-in-to-follow (CID 606 / SIA LF) to the same receiver and start a voice session
    # with the siren off on the module (PRODUCT.md "Two-way voice").
    LISTEN_IN_AFTER_DELIVERY = "listen_in_after_delivery"


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome for one event. Receivers and station account are set only when forwarded."""

    forward: bool
    reason: DecisionReason
    category: Category
    primary_receiver: str | None = None
    backup_receiver: str | None = None
    station_account: str | None = None
    two_way_voice: TwoWayVoiceAction = TwoWayVoiceAction.NONE


class TwoWayVoiceRequirement(StrEnum):
    """One of the three conditions the two-way-voice option needs (PRODUCT.md "Two-way voice")."""

    MODULE = "module_two_way_voice_capable"
    RECEIVER = "receiver_supports_two_way_voice"
    PACKAGE = "package_includes_two_way_voice"


_UL_LOCKED = frozenset({Category.ALARMS, Category.PANEL_NOT_RESPONDING})


def _rejections(reason: DecisionReason) -> dict[Category, Decision]:
    return {c: Decision(forward=False, reason=reason, category=c) for c in Category}


# Not-forwarded decisions depend only on (reason, category): built once, shared (they are frozen),
# so the per-signal path allocates only for forwarded events.
_MODE_NEVER = _rejections(DecisionReason.MODE_NEVER)
_NOT_SELECTED = _rejections(DecisionReason.CATEGORY_NOT_SELECTED)
_PHONE_LINE_OK = _rejections(DecisionReason.PHONE_LINE_OK)
_NO_STATION_ACCOUNT = _rejections(DecisionReason.NO_STATION_ACCOUNT)
_NO_RECEIVER = _rejections(DecisionReason.NO_RECEIVER)
_UNCLASSIFIED = Decision(
    forward=False, reason=DecisionReason.UNCLASSIFIED, category=Category.UNCLASSIFIED
)
_OTHER = Decision(forward=False, reason=DecisionReason.NOT_FORWARDABLE, category=Category.OTHER)
# Enum members bound once: on Python 3.11 `Enum.MEMBER` is a class-attribute lookup costing about
# as much as the whole rest of a decision.
_NEVER = ForwardingMode.NEVER
_LINE_FAILURE_ONLY = ForwardingMode.PHONE_LINE_FAILURE
_CAT_UNCLASSIFIED = Category.UNCLASSIFIED
_CAT_OTHER = Category.OTHER
_FORWARDED = DecisionReason.FORWARDED
_VOICE_NONE = TwoWayVoiceAction.NONE
_VOICE_LISTEN_IN = TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY


def ul_effective_categories(settings: ForwardingSettings) -> frozenset[Category]:
    """The categories in force: the selection, plus Alarms and Panel Not Responding on UL/ETL."""
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
    """Decide for one event whose effect on ``state`` has already been applied (pure; no I/O).

    ``server_generated``: Panel Not Responding or Crash & Smash raised by the engine (rules 1 and 2
    only; ``event`` carries its own category). ``dialer_failed``: the signal itself says the panel's
    dialer could not deliver it.
    """
    category = event.classification.category
    # Rule 1.
    if settings.mode is _NEVER:
        return _MODE_NEVER[category]
    # Rule 2. Unclassified and "other" codes are never selectable; say which one it was.
    if category is _CAT_UNCLASSIFIED:
        return _UNCLASSIFIED
    if category is _CAT_OTHER:
        return _OTHER
    if category not in settings.categories and not (settings.ul_listed and category in _UL_LOCKED):
        return _NOT_SELECTED[category]
    # Rule 3.
    if (
        settings.mode is _LINE_FAILURE_ONLY
        and not server_generated
        and settings.phone_line_connected
        and not state.phone_line_failed
        and not dialer_failed
    ):
        return _PHONE_LINE_OK[category]
    # Forwardable: it needs somewhere to go.
    if not settings.station_account:
        return _NO_STATION_ACCOUNT[category]
    if not settings.primary_receiver:
        return _NO_RECEIVER[category]
    cls = event.classification
    # A new fire or CO alarm only: not its restore, nor a Q=6 status repeat of a standing one.
    voice = (
        _VOICE_LISTEN_IN
        if settings.two_way_voice and (cls.fire or cls.co) and not cls.restore and not cls.status
        else _VOICE_NONE
    )
    return Decision(
        forward=True,
        reason=_FORWARDED,
        category=category,
        primary_receiver=settings.primary_receiver,
        backup_receiver=settings.backup_receiver,
        station_account=settings.station_account,
        two_way_voice=voice,
    )


def check_two_way_voice_eligibility(
    *, module_capable: bool, receiver_supports: bool, package_includes: bool
) -> list[TwoWayVoiceRequirement]:
    """The :class:`TwoWayVoiceRequirement` names that are missing (empty: eligible), in the
    order module, receiver, package; the API and import name them when refusing the option."""
    missing: list[TwoWayVoiceRequirement] = []
    if not module_capable:
        missing.append(TwoWayVoiceRequirement.MODULE)
    if not receiver_supports:
        missing.append(TwoWayVoiceRequirement.RECEIVER)
    if not package_includes:
        missing.append(TwoWayVoiceRequirement.PACKAGE)
    return missing
