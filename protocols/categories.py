"""Classification of Contact ID and SIA DC-03 codes into the 12 forwarding categories.

PROTOCOLS.md §4.1 is the authority (first match wins), §4.2 for the fire and CO flags. The tables
are precomputed at import; :func:`classify` is a couple of dict lookups on the per-signal path.
Unknown codes are UNCLASSIFIED (kept, never dropped); known informational codes are OTHER.
"""

from __future__ import annotations

from functools import lru_cache

from protocols.signal import Category, Classification, Family


def _codes(*spans: int | tuple[int, int]) -> frozenset[str]:
    out: set[str] = set()
    for span in spans:
        low, high = (span, span) if isinstance(span, int) else span
        out.update(f"{n:03d}" for n in range(low, high + 1))
    return frozenset(out)


# -- Contact ID (§4.1; Q=1 unless stated) ------------------------------------------------------
CID_PANICS = _codes(100, 101, (120, 125))
CID_SENSOR_TAMPER = _codes(137, 144, 145, 341, 383)
CID_CANCELS = _codes(406)
CID_BYPASS = _codes((570, 577))
CID_ARMING = _codes((400, 405), (407, 409), 441, 442, (450, 456), 459, 464, 910, 911)
CID_PHONE_TESTS = _codes(601, 602, 603, 608)
CID_PHONE_COMM_FAILURES = _codes((350, 357))
CID_ALARMS = _codes((110, 118), (130, 136), (138, 140), 146, (150, 155), (158, 163), 374, 457)
CID_TROUBLES = _codes(
    102, (141, 143), 147, 156, 157, (200, 206), (300, 304), (307, 312), (314, 339), (342, 344),
    (370, 382), (384, 393), 461, 654,
)  # fmt: skip
CID_OTHER = _codes(305, 306, 313, (411, 434), 458, 462, 463, (604, 607), (609, 632), (900, 902))
CID_FIRE = _codes((110, 118))
CID_CO = _codes(162)

# -- SIA DC-03 (§4.1) ----------------------------------------------------------------------------
SIA_PANICS = frozenset({"PA", "HA", "MA", "QA", "PH", "PR", "HH", "HR", "MH", "QH"})
SIA_SENSOR_TAMPER = frozenset({"TA", "TR", "TT", "ES", "EJ", "XS", "JA", "JC"})
SIA_CANCELS = frozenset({"BC", "FC", "OC", "AB"})
SIA_BYPASS = frozenset(
    {f"{family}{kind}" for family in "BFGHKMPQSTUWZ" for kind in "BU"}
)  # ?B / ?U pairs: BB, BU, FB, FU, …
SIA_ARMING = frozenset(
    {"OP", "CL", "OA", "CA", "OG", "CG", "OQ", "CQ", "OS", "CS", "CF", "NF", "NL", "NM", "CW", "CE",
     "CK", "CJ", "OK", "OJ", "CI", "OI", "CT", "OT", "CD", "CR", "OR"}
)  # fmt: skip
SIA_PHONE_TESTS = frozenset({"RP", "RX", "TX", "RY", "XX"})
SIA_PHONE_COMM_FAILURES = frozenset({"YC", "YS", "LT", "NT"})
SIA_ALARMS = frozenset(
    {"BA", "BH", "BR", "BV", "BG", "BM", "FA", "FH", "FR", "KA", "KH", "KR", "SA", "SH", "SR", "GA",
     "GH", "GR", "WA", "WH", "ZA", "ZH", "UA", "UH", "UR", "EA", "EE"}
)  # fmt: skip
SIA_ALARM_RESTORES = frozenset(
    {"BH", "BR", "FH", "FR", "KH", "KR", "SH", "SR", "GH", "GR", "WH", "ZH", "UH", "UR"}
)
SIA_TROUBLE_RESTORALS = frozenset(
    {"AR", "YR", "YQ", "XR", "XH", "BJ", "FJ", "FQ", "FV", "GJ", "KJ", "PJ", "HJ", "MJ", "QJ", "SJ",
     "UJ", "WJ", "ZJ", "ER", "EN", "IR", "YH", "YZ", "YK", "LR", "NR"}
)  # fmt: skip
SIA_TROUBLES = frozenset(
    {"AT", "YT", "YM", "YP", "XT", "XQ", "BT", "FT", "FS", "FW", "GT", "KT", "PT", "HT", "MT", "QT",
     "ST", "UT", "US", "BS", "BZ", "UY", "UZ", "ET", "EM", "IA", "YA", "YX", "YF", "RR", "NA"}
)  # fmt: skip
SIA_OTHER = frozenset(
    {"LB", "LX", "LS", "RB", "RS", "RU", "RD", "RA", "JT", "JD", "JS", "JL", "JO", "TS", "TE", "TP",
     "TC", "DD", "DF", "DG", "DK", "DL", "YG", "YY", "YN", "YW", "FX", "FI", "FK", "LF", "LE"}
)  # fmt: skip
SIA_FIRE = frozenset({"FA", "FH", "FR", "KA", "KH", "KR", "SA", "SH", "SR"})
# §4.2: DC-03 has no CO code; panels send GA (gas) and pysiaalarm maps CID 162 to GA. Without the
# zone's device type we cannot tell CO from combustible gas, so GA is flagged as possible CO: the
# safe side for two-way-voice rules ("no voice call on a CO alarm").
SIA_CO = frozenset({"GA", "GH", "GR"})

_SIA_ORDER: tuple[tuple[frozenset[str], Category], ...] = (
    (SIA_PANICS, Category.PANICS),
    (SIA_SENSOR_TAMPER, Category.SENSOR_TAMPER),
    (SIA_CANCELS, Category.CANCELS),
    (SIA_BYPASS, Category.BYPASS),
    (SIA_ARMING, Category.ARMING),
    (SIA_PHONE_TESTS, Category.PHONE_TESTS),
    (SIA_PHONE_COMM_FAILURES, Category.PHONE_COMM_FAILURES),
    (SIA_ALARMS, Category.ALARMS),
    (SIA_TROUBLE_RESTORALS, Category.TROUBLE_RESTORALS),
    (SIA_TROUBLES, Category.TROUBLES),
    (SIA_OTHER, Category.OTHER),
)
_SIA_RESTORES = (
    SIA_ALARM_RESTORES
    | SIA_TROUBLE_RESTORALS
    | frozenset({"PH", "PR", "HH", "HR", "MH", "QH", "TR", "EJ", "JC"})
)


def _sia_table() -> dict[str, Classification]:
    table: dict[str, Classification] = {}
    for codes, category in reversed(_SIA_ORDER):  # earlier rules win: write them last
        for code in codes:
            table[code] = Classification(
                category=category,
                fire=code in SIA_FIRE,
                co=code in SIA_CO,
                restore=code in _SIA_RESTORES,
            )
    return table


_SIA = _sia_table()

_CID_ORDER: tuple[tuple[frozenset[str], Category], ...] = (
    (CID_PANICS, Category.PANICS),
    (CID_SENSOR_TAMPER, Category.SENSOR_TAMPER),
    (CID_CANCELS, Category.CANCELS),
    (CID_BYPASS, Category.BYPASS),
    (CID_ARMING, Category.ARMING),
    (CID_PHONE_TESTS, Category.PHONE_TESTS),
    (CID_PHONE_COMM_FAILURES, Category.PHONE_COMM_FAILURES),
    (CID_ALARMS, Category.ALARMS),
    (CID_TROUBLES, Category.TROUBLES),
    (CID_OTHER, Category.OTHER),
)


def _cid_base() -> dict[str, Category]:
    table: dict[str, Category] = {}
    for codes, category in reversed(_CID_ORDER):
        for code in codes:
            table[code] = category
    return table


_CID_BASE = _cid_base()
_UNCLASSIFIED = Classification(category=Category.UNCLASSIFIED)


@lru_cache(maxsize=4096)
def _classify_cid(code: str, qualifier: str | None) -> Classification:
    base = _CID_BASE.get(code)
    if base is None:
        return _UNCLASSIFIED
    fire = code in CID_FIRE
    co = code in CID_CO
    q = qualifier or "1"
    status = q == "6"
    if q != "3" or base in (Category.ARMING, Category.BYPASS, Category.CANCELS, Category.OTHER):
        # Q=1 new event; Q=6 status (same category, flagged). For 4xx arming Q=3 is a closing,
        # for 57x bypass Q=3 an unbypass: neither is a "restore".
        return Classification(category=base, fire=fire, co=co, status=status, restore=False)
    # Q=3: restore.
    if base in (Category.TROUBLES, Category.PHONE_COMM_FAILURES):
        return Classification(category=Category.TROUBLE_RESTORALS, restore=True)
    return Classification(category=base, fire=fire, co=co, restore=True)


def classify(family: Family, code: str, qualifier: str | None = None) -> Classification:
    """The forwarding classification of one event code (never raises)."""
    if family is Family.SIA:
        return _SIA.get(code.upper(), _UNCLASSIFIED)
    return _classify_cid(code, qualifier)
