"""Contact ID ↔ SIA DC-03 conversion for receivers that accept only one family.

The table is PROTOCOLS.md §2.5's "SIA equiv." column: each Contact ID code maps to its SIA code
for a new event (Q=1) and for a restore / closing (Q=3). The reverse direction picks one canonical
Contact ID per SIA code (the first in the table), so the first is one addressed as the SIA code
is: HA (a zone) becomes 122 silent panic, not 121 duress (a user: the zone would be lost). On
4xx codes Q=1 is an opening (disarm) and Q=3 a closing (arm): 441/442 armed STAY is OP when
disarmed and NL (armed perimeter/stay) when armed, never an arming code for a disarm. The phone
line keeps its number: 352 (telco 2) is LT / LR with address 2, and SIA LT2 is 352, not 351.
Zone, partition, user and text are kept; the
converted event is re-classified in its new family (callers keep the original decision's
category). A code without an equivalent, or a SIA event whose zone, user or partition Contact ID
cannot hold (zone over 999, partition over 99), raises :class:`ConversionError`: deliver it in its
own family instead.
"""

from __future__ import annotations

from protocols.categories import classify
from protocols.contact_id import cid_fits
from protocols.signal import Event, Family


class ConversionError(ValueError):
    """No equivalent code in the other family."""


def _pairs(spec: str) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    for item in spec.split():
        codes, sia = item.split("=")
        new, _, restore = sia.partition("/")
        for code in codes.split(","):
            out[code] = (new, restore or None)
    return out


# CID=NEW/RESTORE, from §2.5 (pysiaalarm ADM_MAPPING where it exists, else the doc's suggestion).
CID_TO_SIA: dict[str, tuple[str, str | None]] = _pairs(
    "100=MA/MH 101=QA/QH 110,111,112,115,116,117,118=FA/FH 113=SA/SH 114=KA/KH 120,123=PA/PH "
    "122,121,124,125=HA/HH 130,131,132,133,134,135,136,138,139,140,155=BA/BH 137,144=TA/TR 145=ES/EJ "
    "146=HA/HH 143,333,337,338,339,342,343=ET/ER 150=UA/UH 151,162=GA/GH 152,153=ZA/ZH 154=WA/WH "
    "156=BT/BJ 157=GT/GJ 158=KA/KH 159=ZA/ZH 200,201,202,203,204,205,206=FS/FV "
    "300,303,304,307,308,310,321,322,330,331,332,334,380,393=YX/YZ 301=AT/AR 302,309=YT/YR 311=YM/YR "
    "312=YP/YQ 305=RR 306=YG 320,323,324,325,326,327=RC/RO 335=VO/VI 336=VT/VR 341=ES/EJ 344=XQ/XH "
    "350,353,354,355,356,357=YC/YK 351,352=LT/LR 373=FT/FJ 374=EA 375=PT/PJ 376=HT/HR 383=TA/TR 384=XT/XR "
    "400,401,408=OP/CL 402=OG/CG 403=OA/CA 404=OT/CT 406=OC 407=OQ/CQ 409=OS/CS 441,442=OP/NL 453=OI/CI "
    "457=EE 461=JA 570,572,573,574=BB/BU 571=FB/FU 601=RX 602,603=RP 604=FX 606=LF 607=TS/TE 608=RY "
    "627=LB 628=LX 654=NA"
)

# The phone line: Contact ID names it by the code (351 telco 1, 352 telco 2), SIA LT / LR by their
# address, the line number (§3.2). Converted, the line is kept: SIA LT2 is 352, not 351.
_TELCO_LINE = {"351": 1, "352": 2}
_LINE_CODES = frozenset({"LT", "LR"})

SIA_TO_CID: dict[str, tuple[str, str]] = {}
for _cid, (_new, _restore) in CID_TO_SIA.items():
    SIA_TO_CID.setdefault(_new, (_cid, "1"))
    if _restore is not None:
        SIA_TO_CID.setdefault(_restore, (_cid, "3"))


def to_sia(event: Event) -> Event:
    """The SIA DC-03 form of a Contact ID event."""
    if event.family is Family.SIA:
        return event
    pair = CID_TO_SIA.get(event.code)
    if pair is None:
        raise ConversionError(f"Contact ID {event.code} has no SIA equivalent")
    new, restore = pair
    code = restore if event.qualifier == "3" else new
    if code is None:
        raise ConversionError(f"Contact ID {event.code} with qualifier 3 has no SIA equivalent")
    zone = event.zone
    if not zone and event.code in _TELCO_LINE:
        zone = _TELCO_LINE[event.code]  # LT's address is the line
    return Event(
        family=Family.SIA,
        code=code,
        zone=zone,
        partition=event.partition,
        user=event.user,
        text=event.text,
        account=event.account,
        time=event.time,
        classification=classify(Family.SIA, code),
    )


def to_cid(event: Event) -> Event:
    """The Contact ID form of a SIA DC-03 event."""
    if event.family is Family.CID:
        return event
    pair = SIA_TO_CID.get(event.code)
    if pair is None:
        raise ConversionError(f"SIA {event.code} has no Contact ID equivalent")
    code, qualifier = pair
    if event.code in _LINE_CODES and event.zone == _TELCO_LINE["352"]:
        code = "352"  # line 2's trouble is telco 2, not telco 1
    converted = Event(
        family=Family.CID,
        code=code,
        qualifier=qualifier,
        zone=event.zone,
        partition=event.partition,
        user=event.user,
        text=event.text,
        account=event.account,
        time=event.time,
        classification=classify(Family.CID, code, qualifier),
    )
    if not cid_fits(converted):
        raise ConversionError(
            f"SIA {event.code} with partition {event.partition}, zone {event.zone}, user "
            f"{event.user} does not fit Contact ID (partition 0-99, zone/user 0-999)"
        )
    return converted
