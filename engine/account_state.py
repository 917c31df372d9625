"""Per-account state that forwarding decisions depend on, and the pure rule that updates it.

PRODUCT.md "Forwarding semantics": the phone-line state is set by phone-line / communication
failure signals (Contact ID 351, 352, 354; SIA LT, YC) and cleared by *their* restores: each
failure is kept apart (line 2's restore does not end line 1's fault), and the line is failed while
any is. Contact ID names the line by its code (351 telco 1, 352 telco 2); SIA LT / LR by their
address, the line number (PROTOCOLS.md §3.2), so ``LT1`` and ``LT2`` are two failures. The caller
applies each event *before* deciding on it, so the failure signal itself can be forwarded.
"""

from __future__ import annotations

import msgspec

from protocols.signal import Category, Event, Family

# Contact ID 351 telco 1 fault, 352 telco 2 fault, 354 failure to communicate (PROTOCOLS.md §2.5).
_CID_LINE_FAULTS = frozenset({"351", "352", "354"})
# Q=1 new event and Q=6 status ("condition still present", §2.2) both mean the line is failed;
# None is what the encoders send as Q=1 (protocols/contact_id.py), so it counts as Q=1 too.
_CID_SETS = frozenset({"1", "6", None})
_CID_CLEARS = "3"
# SIA DC-03: LT phone line trouble / LR its restore; YC communications fail / YK its restore.
_SIA_SETS = frozenset({"LT", "YC"})
_SIA_RESTORES = {"LR": "LT", "YK": "YC"}  # restore code → the failure it ends
_SIA_LINE_CODES = _SIA_SETS | frozenset(_SIA_RESTORES)
_SIA_PER_LINE = "LT"  # its address is the line number: one failure per line
# A failure recorded before failures were kept apart (migration 0480): any restore ends it.
UNKNOWN_FAULT = "unknown"
# Server-generated signals carry their own category; their code is only the wire form they are
# sent upstream with and is not re-classified (PRODUCT.md). Panel Not Responding may go out as
# SIA YC, which must not be read as the panel's own communication failure.
_SYNTHETIC = frozenset({Category.PANEL_NOT_RESPONDING, Category.CRASH_SMASH})
_CID = Family.CID  # bound once: an Enum.MEMBER lookup is slow on Python 3.11 (per-event path)


class AccountState(msgspec.Struct, frozen=True, kw_only=True):
    """What the policy needs to know about an account beyond its settings (room for more, as
    fields with defaults).

    Panel Not Responding is not here: its one record is ``supervision.missed`` (engine/supervision.py),
    written with the miss and its restore; the policy does not depend on it.
    """

    line_faults: frozenset[str] = frozenset()  # the failures not restored yet: "351", "LT2", …

    @property
    def phone_line_failed(self) -> bool:
        return bool(self.line_faults)


def changes_state(event: Event) -> bool:
    """True when ``event`` can change an account's phone-line state (so its row must be locked)."""
    if event.classification.category in _SYNTHETIC:
        return False
    if event.family is _CID:
        return event.code in _CID_LINE_FAULTS
    return event.code in _SIA_LINE_CODES


def apply_event(state: AccountState, event: Event) -> AccountState:
    """The state after ``event``; ``state`` itself when nothing changes (no allocation).

    Contact ID 351/352/354: Q=1 (or Q=6 status) records that failure, Q=3 ends it. SIA LT and YC
    record theirs, LR ends LT and YK ends YC. LT is kept per line: LR2 ends LT2 (and an LT that
    named no line), not LT1; an LR that names no line ends every LT. Server-generated events
    (Panel Not Responding, Crash & Smash) never change it.
    """
    if event.classification.category in _SYNTHETIC:
        return state
    code = event.code
    faults = state.line_faults
    if event.family is _CID:
        if code not in _CID_LINE_FAULTS:
            return state
        qualifier = event.qualifier
        if qualifier == _CID_CLEARS:
            after = faults - {code, UNKNOWN_FAULT}
        elif qualifier in _CID_SETS:
            after = faults | {code}
        else:
            return state
    elif code in _SIA_SETS:
        after = faults | {_sia_fault(code, event.zone)}
    elif code in _SIA_RESTORES:
        failure = _SIA_RESTORES[code]
        if failure == _SIA_PER_LINE and not event.zone:
            # No line named: it ends the failure of every line.
            after = frozenset(
                f for f in faults if f != UNKNOWN_FAULT and not _is_line_fault(f, failure)
            )
        else:
            after = faults - {failure, _sia_fault(failure, event.zone), UNKNOWN_FAULT}
    else:
        return state
    if after == faults:
        return state
    return msgspec.structs.replace(state, line_faults=frozenset(after))


def _sia_fault(code: str, zone: int | None) -> str:
    """The failure a SIA line code stands for: ``LT2`` for line 2, ``LT`` when no line is named,
    ``YC`` whatever its address."""
    if code == _SIA_PER_LINE and zone:
        return f"{code}{zone}"
    return code


def _is_line_fault(fault: str, code: str) -> bool:
    """Whether ``fault`` is ``code`` itself or ``code`` for one line (``LT``, ``LT1``, …)."""
    return fault.startswith(code) and (len(fault) == len(code) or fault[len(code) :].isdigit())
