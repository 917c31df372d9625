"""Ademco Contact ID (SIA DC-05): the DC-09 ``ADM-CID`` block and the 16-digit DTMF message.

DC-09 form (§2.3): ``#ACCT|QXYZ GG CCC``; DTMF form (§2.1): ``ACCT MT Q XYZ GG CCC S`` with the
mod-15 checksum of §2.4. CCC is a user number for open/close and other user events, else a zone.
"""

from __future__ import annotations

import re

from protocols.categories import classify
from protocols.errors import RemoteProtocolError, Reply
from protocols.signal import Event, Family

# Codes whose CCC is a user number (PROTOCOLS.md §2.5, column "CCC").
USER_CODES = frozenset(
    {"121", "313", "400", "401", "402", "403", "404", "405", "406", "407", "408", "409", "441", "442",
     "450", "451", "452", "453", "454", "455", "456", "457", "458", "459", "462", "463", "464", "573",
     "604", "607", "625", "900", "901", "902", "910", "911"}
    | {f"{n}" for n in range(411, 421)}
)  # fmt: skip

# The account part may be left out, '|' and all or keeping the '|' (§1.7: "[|Nri1/CL501]").
_BLOCK = re.compile(r"(?:#([0-9A-Za-z]{1,16})\||\|)?([136])(\d{3}) (\d{2}) (\d{3})")
_DTMF_VALUES = {
    **{str(d): d for d in range(1, 10)},
    "0": 10,
    "B": 11,
    "C": 12,
    "D": 13,
    "E": 14,
    "F": 15,
}


def _duh(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reply=Reply.DUH)


def _event(
    account: str | None, qualifier: str, code: str, group: str, ccc: str, text: str | None = None
) -> Event:
    partition = int(group) or None
    number = int(ccc) or None
    is_user = code in USER_CODES
    return Event(
        family=Family.CID,
        code=code,
        qualifier=qualifier,
        zone=None if is_user else number,
        partition=partition,
        user=number if is_user else None,
        text=text,
        account=account.upper() if account else None,
        classification=classify(Family.CID, code, qualifier),
    )


def parse_cid_block(data: str) -> tuple[Event, ...]:
    """Parse the data of an ``ADM-CID`` frame, e.g. ``#1234|1130 01 015``."""
    if len(data) > 256:
        raise _duh("Contact ID block too long")
    match = _BLOCK.fullmatch(data.strip())
    if match is None:
        raise _duh(f"not a Contact ID block (#ACCT|QXYZ GG CCC): {data[:64]!r}")
    account, qualifier, code, group, ccc = match.groups()
    return (_event(account, qualifier, code, group, ccc),)


def contact_id_checksum(digits15: str) -> str:
    """The 16th digit S so the weighted sum of all 16 digits is a multiple of 15 (§2.4)."""
    try:
        total = sum(_DTMF_VALUES[d] for d in digits15.upper())
    except KeyError as exc:
        raise ValueError(f"invalid Contact ID digit {exc.args[0]!r}") from None
    check = 15 - total % 15
    return "0" if check == 10 else "F" if check == 15 else format(check, "X")


def parse_dtmf(message: str) -> Event:
    """Parse a 16-digit DTMF Contact ID message ``ACCT MT Q XYZ GG CCC S`` (spaces allowed)."""
    digits = message.replace(" ", "").upper()
    if len(digits) != 16:
        raise _duh(f"Contact ID DTMF message must have 16 digits, got {len(digits)}")
    if any(d not in _DTMF_VALUES for d in digits):
        raise _duh("Contact ID DTMF message has a digit outside 0-9, B-F")
    if sum(_DTMF_VALUES[d] for d in digits) % 15 != 0:
        raise _duh(
            f"Contact ID checksum mismatch: expected {contact_id_checksum(digits[:15])}, got {digits[15]}"
        )
    account, mt, qualifier, code, group, ccc = (
        digits[0:4],
        digits[4:6],
        digits[6],
        digits[7:10],
        digits[10:12],
        digits[12:15],
    )
    if mt not in ("18", "98"):
        raise _duh(f"Contact ID message type must be 18 or 98, got {mt}")
    if qualifier not in "136" or not (code + group + ccc).isdigit():
        raise _duh("Contact ID qualifier must be 1, 3 or 6 and code/group/zone decimal")
    return _event(account, qualifier, code, group, ccc)


def cid_fits(event: Event) -> bool:
    """Whether ``event``'s partition fits Contact ID's GG (0-99) and its zone, or its user for a
    user code, fits CCC (0-999). Panels and MQTT modules number zones up to 999999 (SIA)."""
    number = event.user if event.code in USER_CODES else event.zone
    return 0 <= (event.partition or 0) <= 99 and 0 <= (number or 0) <= 999


def _gg_ccc(event: Event) -> str:
    """``GG CCC`` of ``event``; a number Contact ID cannot hold is an error, never cut down (zone
    1234 written as 234 would send the station to the wrong zone)."""
    if not cid_fits(event):
        raise ValueError(
            f"Contact ID holds partitions 0-99 and zones/users 0-999: partition "
            f"{event.partition}, zone {event.zone}, user {event.user}"
        )
    number = event.user if event.code in USER_CODES else event.zone
    return f"{event.partition or 0:02d} {number or 0:03d}"


def format_cid_block(event: Event, account: str) -> str:
    """The ``ADM-CID`` data for ``event`` under ``account``: ``#ACCT|QXYZ GG CCC``."""
    if event.family is not Family.CID:
        raise ValueError("format_cid_block needs a Contact ID event")
    return f"#{account}|{event.qualifier or '1'}{event.code} {_gg_ccc(event)}"


def format_dtmf(event: Event, account: str, message_type: str = "18") -> str:
    """The 16-digit DTMF message for ``event`` (account of 4 digits)."""
    body = f"{account[-4:]:0>4}{message_type}{event.qualifier or '1'}{event.code}{_gg_ccc(event).replace(' ', '')}"
    return body + contact_id_checksum(body)
