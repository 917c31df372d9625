"""DC-09 timestamps and the acceptance window (PROTOCOLS.md §1.9)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.dc09_timestamp import (
    TimestampWindow,
    as_local_time,
    format_timestamp,
    local_time_readings,
    parse_timestamp,
    parse_timestamp_bytes,
)

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


class TestParseFormat:
    def test_parse(self) -> None:
        """_HH:MM:SS,MM-DD-YYYY parses as an aware UTC datetime."""
        assert parse_timestamp("_16:20:01,09-24-2025") == datetime(
            2025, 9, 24, 16, 20, 1, tzinfo=UTC
        )

    def test_underscore_optional_on_parse(self) -> None:
        """The vectors file writes timestamps without the underscore; both forms parse."""
        assert parse_timestamp("16:20:01,09-24-2025") == parse_timestamp("_16:20:01,09-24-2025")

    def test_format_converts_to_utc(self) -> None:
        """Formatting writes UTC whatever the zone of the datetime."""
        local = datetime(2025, 9, 24, 18, 20, 1, tzinfo=ZoneInfo("Europe/Berlin"))
        assert format_timestamp(local) == "_16:20:01,09-24-2025"

    def test_round_trip(self) -> None:
        """format then parse gives the same instant."""
        assert parse_timestamp(format_timestamp(NOW)) == NOW

    @pytest.mark.parametrize(
        "text",
        [
            "_16:20:01,09-24-25",
            "_16-20-01,09-24-2025",
            "_25:00:00,01-01-2024",
            "_12:00:00,02-30-2024",
            "_1a:00:00,01-01-2024",
            "_١٢:00:00,01-01-2024",
            "",
        ],
    )
    def test_bad_timestamps_raise_value_error(self, text: str) -> None:
        """Malformed or impossible timestamps raise ValueError naming the expected form."""
        with pytest.raises(ValueError, match="timestamp"):
            parse_timestamp(text)


class TestMemoAndFastFormat:
    @given(
        st.text("0123456789:,-_a", min_size=18, max_size=21)
        | st.builds(
            "_{:02d}:{:02d}:{:02d},{:02d}-{:02d}-{:04d}".format,
            st.integers(0, 25),
            st.integers(0, 61),
            st.integers(0, 61),
            st.integers(0, 13),
            st.integers(0, 32),
            st.integers(0, 9999),
        )
    )
    def test_bytes_parse_matches_parse_timestamp(self, text: str) -> None:
        """The memoised bytes form returns and raises what parse_timestamp does, hit or miss."""
        for _ in range(2):  # the second call is served from the memo when the first succeeded
            try:
                expected: datetime | str = parse_timestamp(text)
            except ValueError as exc:
                expected = str(exc)
            try:
                got: datetime | str = parse_timestamp_bytes(text.encode("ascii"))
            except ValueError as exc:
                got = str(exc)
            assert got == expected

    def test_memo_stays_bounded(self) -> None:
        """Thousands of distinct timestamps do not grow the memo without limit."""
        from protocols import dc09_timestamp

        for n in range(3000):
            stamp = NOW + timedelta(seconds=n)
            assert parse_timestamp_bytes(format_timestamp(stamp).encode()) == stamp
        assert len(dc09_timestamp._PARSED) <= dc09_timestamp._CACHE_SIZE

    @given(st.datetimes(timezones=st.just(UTC)))
    def test_format_matches_strftime(self, moment: datetime) -> None:
        """The %-format gives strftime's exact text for any year (1-9999)."""
        utc = moment.astimezone(UTC)
        assert format_timestamp(moment) == f"_{utc:%H:%M:%S},{utc:%m-%d-%Y}"


class TestWindow:
    @given(
        st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC)
        ),
        st.integers(-200_000_000, 200_000_000),
        st.integers(0, 100_000),
        st.integers(0, 100_000),
    )
    def test_check_matches_the_timedelta_formula(
        self, now: datetime, offset_us: int, past_s: int, future_s: int
    ) -> None:
        """The memoised bounds decide exactly as now - past <= t <= now + future, to the µs."""
        stamp = now + timedelta(microseconds=offset_us)
        expected = now - timedelta(seconds=past_s) <= stamp <= now + timedelta(seconds=future_s)
        assert TimestampWindow(past_s=past_s, future_s=future_s).check(stamp, now) is expected

    @pytest.mark.parametrize(
        ("offset_s", "inside"),
        [(-41, False), (-40, True), (0, True), (20, True), (21, False)],
    )
    def test_default_edges(self, offset_s: int, inside: bool) -> None:
        """The default window accepts 40 s before to 20 s after now, edges included."""
        assert TimestampWindow().check(NOW + timedelta(seconds=offset_s), NOW) is inside

    @pytest.mark.parametrize("seconds", [10**11, 10**15, 10**20])
    def test_a_window_beyond_the_dates_datetime_holds_is_open_on_that_side(
        self, seconds: int
    ) -> None:
        """Edges past year 1 or 9999 (a window of 10^11 s and more) never raise OverflowError:
        that side is simply open; the other keeps its edge."""
        far_past = datetime(1, 1, 2, tzinfo=UTC)
        assert TimestampWindow(past_s=seconds, future_s=20).check(far_past, NOW)
        assert not TimestampWindow(past_s=seconds, future_s=20).check(
            NOW + timedelta(seconds=21), NOW
        )
        assert TimestampWindow(past_s=40, future_s=seconds).check(
            NOW + timedelta(days=365 * 1000), NOW
        )
        assert not TimestampWindow(past_s=40, future_s=seconds).check(
            NOW - timedelta(seconds=41), NOW
        )

    def test_custom_window(self) -> None:
        """past_s and future_s move the edges."""
        window = TimestampWindow(past_s=600, future_s=0)
        assert window.check(NOW - timedelta(seconds=600), NOW)
        assert not window.check(NOW + timedelta(seconds=1), NOW)


class TestLocalTime:
    def test_local_wall_clock_becomes_utc(self) -> None:
        """A wall-clock time written as if UTC is reinterpreted in the panel's zone."""
        written = datetime(2023, 9, 7, 18, 1, 50, tzinfo=UTC)  # Vilnius is UTC+3 in September
        assert as_local_time(written, ZoneInfo("Europe/Vilnius")) == datetime(
            2023, 9, 7, 15, 1, 50, tzinfo=UTC
        )

    def test_the_repeated_hour_has_two_readings(self) -> None:
        """01:30 on the night New York's clocks go back is 05:30 and 06:30 UTC; a plain hour
        has one reading; as_local_time picks the one nearest now."""
        zone = ZoneInfo("America/New_York")
        written = datetime(2024, 11, 3, 1, 30, tzinfo=UTC)
        first, second = (
            datetime(2024, 11, 3, 5, 30, tzinfo=UTC),
            datetime(2024, 11, 3, 6, 30, tzinfo=UTC),
        )
        assert local_time_readings(written, zone) == (first, second)
        assert local_time_readings(written.replace(hour=3), zone) == (
            datetime(2024, 11, 3, 8, 30, tzinfo=UTC),
        )
        assert as_local_time(written, zone) == first
        assert as_local_time(written, zone, second + timedelta(seconds=5)) == second

    @pytest.mark.parametrize(
        ("written", "zone"),
        [
            (datetime(9999, 12, 31, 23, 30, tzinfo=UTC), "America/New_York"),
            (datetime(1, 1, 1, 0, 0, tzinfo=UTC), "Europe/Vilnius"),
        ],
    )
    def test_out_of_range_is_a_value_error(self, written: datetime, zone: str) -> None:
        """A local time whose UTC instant datetime cannot hold raises ValueError (a NAK), not
        OverflowError."""
        with pytest.raises(ValueError, match="out of range"):
            local_time_readings(written, ZoneInfo(zone))
