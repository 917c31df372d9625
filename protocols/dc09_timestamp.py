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
        bounds = _WINDOW_BOUNDS.get((self.past_s, self.future_s))
        if bounds is None:
            bounds = (_span(self.past_s), _span(self.future_s))
            if len(_WINDOW_BOUNDS) >= _CACHE_SIZE:
                _WINDOW_BOUNDS.clear()
            _WINDOW_BOUNDS[(self.past_s, self.future_s)] = bounds
        past, future = bounds
        try:
            return now - past <= timestamp <= now + future
        except OverflowError:  # an edge beyond the dates datetime holds: that side is open
            return (past >= now - _EARLIEST or now - past <= timestamp) and (
                future >= _LATEST - now or timestamp <= now + future
            )


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)


def _span(seconds: int) -> timedelta:
    """``seconds`` as a timedelta, at most the largest one (a window edge that large is open)."""
    return timedelta(seconds=min(seconds, 86_400 * 999_999_999))


# Memos of pure functions (sans-I/O: no clock involved). Building two timedeltas per check cost
# more than the comparison; a frame's timestamp is shared by every frame sent in that second.
_CACHE_SIZE = 1024
_WINDOW_BOUNDS: dict[tuple[int, int], tuple[timedelta, timedelta]] = {}
_PARSED: dict[bytes, datetime] = {}


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


def parse_timestamp_bytes(raw: bytes) -> datetime:
    """:func:`parse_timestamp` of the frame bytes ``raw``, memoised (datetimes are immutable).

    Raises what :func:`parse_timestamp` raises, or UnicodeDecodeError; failures are not memoised.
    """
    stamp = _PARSED.get(raw)
    if stamp is None:
        stamp = parse_timestamp(raw.decode("ascii"))
        if len(_PARSED) >= _CACHE_SIZE:
            _PARSED.clear()
        _PARSED[bytes(raw)] = stamp
    return stamp


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as ``_HH:MM:SS,MM-DD-YYYY`` in UTC."""
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # strftime's %Y does not pad these; keep its exact output
        return f"_{utc:%H:%M:%S},{utc:%m-%d-%Y}"
    return "_%02d:%02d:%02d,%02d-%02d-%d" % (  # noqa: UP031  # 3x faster than strftime
        utc.hour,
        utc.minute,
        utc.second,
        utc.month,
        utc.day,
        utc.year,
    )


def local_time_readings(timestamp: datetime, zone: tzinfo) -> tuple[datetime, ...]:
    """The UTC instants a frame time that the panel wrote in local time (Trikdis, pysiaalarm#52)
    can mean: one, or two in the hour that repeats when clocks go back (and in the hour skipped
    when they go forward), earliest first.

    Raises ValueError when the local time has no UTC instant datetime can hold (year 1 or 9999
    at the edge of the range)."""
    try:
        first = timestamp.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = timestamp.replace(tzinfo=zone, fold=1).astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"local time {timestamp:%Y-%m-%d %H:%M:%S} in {zone} is out of range"
        ) from None
    if first == second:
        return (first,)
    return (first, second) if first < second else (second, first)


def as_local_time(timestamp: datetime, zone: tzinfo, now: datetime | None = None) -> datetime:
    """The UTC instant of a frame time written in local time: of its readings
    (:func:`local_time_readings`), the one nearest ``now`` when given, else the earliest."""
    readings = local_time_readings(timestamp, zone)
    if now is None or len(readings) == 1:
        return readings[0]
    return min(readings, key=lambda reading: abs(reading - now))
