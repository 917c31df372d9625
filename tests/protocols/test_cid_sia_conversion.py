"""Contact ID ↔ SIA conversion for single-family receivers: the meaning, the zone and the
opening/closing sense survive the trip (PROTOCOLS.md §2.2, §2.5)."""

from __future__ import annotations

import pytest

from protocols.categories import classify
from protocols.cid_sia_conversion import ConversionError, to_cid, to_sia
from protocols.contact_id import format_cid_block, format_dtmf, parse_cid_block
from protocols.signal import Event, Family


def sia(code: str, *, zone: int | None = None, partition: int | None = None) -> Event:
    return Event(
        family=Family.SIA,
        code=code,
        zone=zone,
        partition=partition,
        classification=classify(Family.SIA, code),
    )


class TestContactIdLimits:
    def test_numbers_contact_id_cannot_hold_are_errors_not_cut_down(self) -> None:
        """Zone 999 and partition 99 are written; zone 1000/1234 or partition 100 raise (they
        were written as 000/234 and 00: the station was sent to the wrong zone)."""
        event = parse_cid_block("#9|1130 99 999")[0]
        assert format_cid_block(event, "9") == "#9|1130 99 999"
        for zone, partition in ((1000, 1), (1234, 1), (5, 100)):
            wide = Event(
                family=Family.CID,
                code="130",
                qualifier="1",
                zone=zone,
                partition=partition,
                classification=classify(Family.CID, "130", "1"),
            )
            with pytest.raises(ValueError, match="Contact ID holds"):
                format_cid_block(wide, "9")
            with pytest.raises(ValueError, match="Contact ID holds"):
                format_dtmf(wide, "1234")

    def test_a_sia_zone_over_999_has_no_contact_id_form(self) -> None:
        with pytest.raises(ConversionError, match="does not fit Contact ID"):
            to_cid(sia("BA", zone=1234, partition=1))
        with pytest.raises(ConversionError, match="does not fit Contact ID"):
            to_cid(sia("BA", zone=3, partition=120))
        assert to_cid(sia("BA", zone=999, partition=99)).zone == 999


class TestToContactId:
    def test_a_hold_up_keeps_its_zone(self) -> None:
        """SIA HA (hold-up, addressed by zone) becomes 122 silent panic with the zone: it was
        121 duress, a user-addressed code, and the zone was written as user 000."""
        event = to_cid(sia("HA", zone=5, partition=1))
        assert (event.code, event.qualifier, event.zone) == ("122", "1", 5)
        assert format_cid_block(event, "9").endswith("1122 01 005")
        assert (to_cid(sia("HH", zone=5)).code, to_cid(sia("HH", zone=5)).qualifier) == ("122", "3")

    def test_armed_stay_is_a_closing(self) -> None:
        """SIA NL (armed perimeter / stay) becomes 441 with Q=3, a closing (arming): it was Q=1,
        an opening, so the station saw a disarm."""
        event = to_cid(sia("NL", partition=2))
        assert (event.code, event.qualifier) == ("441", "3")

    def test_no_equivalent_is_an_error(self) -> None:
        with pytest.raises(ConversionError):
            to_cid(sia("ZZ"))

    @pytest.mark.parametrize(
        ("code", "line", "expected"),
        [
            ("LT", 2, ("352", "1")),
            ("LR", 2, ("352", "3")),
            ("LT", 1, ("351", "1")),
            ("LR", None, ("351", "3")),
        ],
    )
    def test_phone_line_two_stays_line_two(
        self, code: str, line: int | None, expected: tuple[str, str]
    ) -> None:
        """SIA LT / LR carry the line number as their address (§3.2): line 2's trouble becomes
        352 telco 2 (it became 351, and a Contact ID station was told telco 1 failed)."""
        event = to_cid(sia(code, zone=line))
        assert (event.code, event.qualifier) == expected


class TestToSia:
    @pytest.mark.parametrize(
        ("block", "code"),
        [
            ("1441 02 007", "OP"),  # disarmed from STAY: an opening
            ("3441 02 007", "NL"),  # armed STAY: a closing
            ("1442 02 007", "OP"),
            ("3442 02 007", "NL"),
            ("1401 01 003", "OP"),
            ("3401 01 003", "CL"),
        ],
    )
    def test_openings_stay_openings_and_closings_closings(self, block: str, code: str) -> None:
        """Q=1 on 4xx is an opening and Q=3 a closing (§2.2): 441 Q=1 became NL, an arming."""
        [event] = parse_cid_block(f"#1234|{block}")
        assert to_sia(event).code == code

    @pytest.mark.parametrize(
        ("block", "expected"),
        [
            ("1351 00 000", ("LT", 1)),
            ("1352 00 000", ("LT", 2)),
            ("3352 00 000", ("LR", 2)),
            ("1352 00 007", ("LT", 7)),
        ],
    )
    def test_the_telco_line_becomes_the_address(
        self, block: str, expected: tuple[str, int]
    ) -> None:
        """Contact ID names the line by its code; SIA by LT's address. 352 without a number was
        sent as a bare LT, so a SIA station could not tell line 2 from line 1."""
        [event] = parse_cid_block(f"#1234|{block}")
        converted = to_sia(event)
        assert (converted.code, converted.zone) == expected

    def test_zone_partition_and_user_are_kept(self) -> None:
        [event] = parse_cid_block("#1234|1130 03 015")
        converted = to_sia(event)
        assert (converted.code, converted.zone, converted.partition) == ("BA", 15, 3)
