"""Time zone from a US ZIP code, by 3-digit prefix ranges.

Approximate on purpose: a few prefixes straddle a zone line (western Kentucky and Tennessee, the
Florida panhandle, parts of Indiana, Kansas, Nebraska, the Dakotas, Texas, Oregon, Idaho and
Michigan's Upper Peninsula), and those get the zone of most of their addresses. The flow shows
the detected zone and lets the dealer choose another; a chosen zone always wins.
"""

from __future__ import annotations

import zoneinfo
from functools import cache

# (first prefix, last prefix, IANA zone), inclusive, for the 3-digit ZIP prefix.
_RANGES: tuple[tuple[int, int, str], ...] = (
    (6, 9, "America/Puerto_Rico"),
    (10, 323, "America/New_York"),
    (324, 325, "America/Chicago"),  # Florida panhandle west of the Apalachicola
    (326, 349, "America/New_York"),
    (350, 372, "America/Chicago"),  # Alabama, middle Tennessee
    (373, 379, "America/New_York"),  # east Tennessee
    (380, 397, "America/Chicago"),
    (398, 418, "America/New_York"),  # Georgia (398-399), eastern Kentucky
    (420, 427, "America/Chicago"),  # western Kentucky
    (430, 459, "America/New_York"),
    (460, 462, "America/Indiana/Indianapolis"),
    (463, 464, "America/Chicago"),  # northwest Indiana (Gary)
    (465, 475, "America/Indiana/Indianapolis"),
    (476, 477, "America/Chicago"),  # southwest Indiana (Evansville)
    (478, 479, "America/Indiana/Indianapolis"),
    (480, 497, "America/Detroit"),
    (498, 499, "America/Menominee"),  # Upper Peninsula, mostly central time near Wisconsin
    (500, 576, "America/Chicago"),
    (577, 577, "America/Denver"),  # western South Dakota
    (580, 588, "America/Chicago"),
    (590, 599, "America/Denver"),
    (600, 692, "America/Chicago"),
    (693, 693, "America/Denver"),  # western Nebraska
    (700, 797, "America/Chicago"),
    (798, 799, "America/Denver"),  # El Paso
    (800, 831, "America/Denver"),
    (832, 837, "America/Boise"),
    (838, 838, "America/Los_Angeles"),  # northern Idaho
    (840, 847, "America/Denver"),
    (850, 865, "America/Phoenix"),
    (870, 885, "America/Denver"),
    (889, 961, "America/Los_Angeles"),
    (967, 968, "Pacific/Honolulu"),
    (969, 969, "Pacific/Guam"),
    (970, 994, "America/Los_Angeles"),
    (995, 999, "America/Anchorage"),
)


def zone_for_zip(zip_code: str, country: str = "US") -> str | None:
    """The IANA zone for a US ZIP (5 digits, or ZIP+4), or None when it cannot be told."""
    if country.upper() not in {"US", "USA", "PR", "GU"}:
        return None
    head = zip_code.strip()[:5]
    if len(head) != 5 or not (head.isascii() and head.isdigit()):  # not "²²²²²" nor "٧٨٧٠١"
        return None
    prefix = int(head[:3])
    for low, high, zone in _RANGES:
        if low <= prefix <= high:
            return zone
    return None


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def valid_zone(name: str) -> bool:
    """True for an IANA zone name known to this system (tzdata)."""
    return name in _zones()
