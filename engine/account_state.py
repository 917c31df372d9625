"""Per-account state that forwarding decisions depend on, and the pure rule that updates it."""

from __future__ import annotations

import msgspec

from protocols.signal import Event, Family

# PRODUCT.md "Forwarding semantics": the phone-line state is set by phone-line / communication
# failure signals (Contact ID 351, 352, 354; SIA LT, YC) and cleared by their restores.
_CID_LINE_FAULTS = frozenset({"351", "352", "354"})
_SIA_LINE_FAULT_SET = frozenset({"LT", "YC"})
_SIA_LINE_FAULT_CLEAR = frozenset({"LR", "YK"})


class AccountState(msgspec.Struct, frozen=True, kw_only=True):
    """What the engine knows about an account beyond its settings."""

    phone_line_failed: bool = False
    panel_not_responding: bool = False


def changes_state(event: Event) -> bool:
    """True when ``event`` can change an account's state (so its state row must be locked)."""
    if event.family is Family.CID:
        return event.code in _CID_LINE_FAULTS
    return event.code in _SIA_LINE_FAULT_SET or event.code in _SIA_LINE_FAULT_CLEAR


def apply_event(state: AccountState, event: Event) -> AccountState:
    """The state after ``event`` (returns ``state`` itself when nothing changes)."""
    failed: bool | None = None
    if event.family is Family.CID:
        if event.code in _CID_LINE_FAULTS:
            if event.qualifier == "3":
                failed = False
            elif event.qualifier in (None, "1", "6"):
                failed = True
    elif event.code in _SIA_LINE_FAULT_SET:
        failed = True
    elif event.code in _SIA_LINE_FAULT_CLEAR:
        failed = False
    if failed is None or failed == state.phone_line_failed:
        return state
    return AccountState(phone_line_failed=failed, panel_not_responding=state.panel_not_responding)
