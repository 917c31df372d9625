"""DC-09 timestamps ``_HH:MM:SS,MM-DD-YYYY`` (UTC) and the acceptance window (PROTOCOLS.md §1.9)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

import msgspec

TIMESTAMP_LENGTH = 20  # including the leading underscore


class TimestampWindow(msgspec.Struct, frozen=True, kw_only=True):
    """Accept a frame time within ``past_s`` before and ``future_s`` after our clock."""

    past_s: int = 40
    future_s: int = 20

    def check(self, timestamp: datetime, now: datetime) -> bool:
        """True when ``timestamp`` lies inside the window around ``now`` (both aware)."""
        return (
            now - timedelta(seconds=self.past_s)
            <= timestamp
            <= now + timedelta(seconds=self.future_s)
        )


_TIMESTAMP = re.compile(r"_?([0-9]{2}):([0-9]{2}):([0-9]{2}),([0-9]{2})-([0-9]{2})-([0-9]{4})")


def parse_timestamp(text: str) -> datetime:
    """Parse ``_HH:MM:SS,MM-DD-YYYY`` (underscore optional) as an aware UTC datetime.

    Raises ValueError with a clear message on anything else.
    """
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(f"bad timestamp {text!r}: expected _HH:MM:SS,MM-DD-YYYY")
    hour, minute, second, month, day, year = map(int, match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"bad timestamp {text!r}: {exc}") from None


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as ``_HH:MM:SS,MM-DD-YYYY`` in UTC."""
    utc = moment.astimezone(UTC)
    return f"_{utc:%H:%M:%S},{utc:%m-%d-%Y}"


def as_local_time(timestamp: datetime, zone: tzinfo) -> datetime:
    """Reinterpret a frame time that the panel wrote in local time (Trikdis, pysiaalarm#52)."""
    return timestamp.replace(tzinfo=zone).astimezone(UTC)
