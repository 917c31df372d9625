"""Category table of PROTOCOLS.md §4.1 (and the fire/CO flags of §4.2), transcribed from the doc."""

from __future__ import annotations

import pytest

from protocols.categories import classify
from protocols.signal import Category, Family


def _cid(spec: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            low, high = part.split("-")
            out += [f"{n:03d}" for n in range(int(low), int(high) + 1)]
        else:
            out.append(part)
    return out


# §4.1, Contact ID column, Q=1.
CID_TABLE: dict[Category, str] = {
    Category.PANICS: "120, 121, 122, 123, 124, 125, 100, 101",
    Category.SENSOR_TAMPER: "137, 144, 145, 341, 383",
    Category.CANCELS: "406",
    Category.BYPASS: "570-577",
    Category.ARMING: "400-405, 407-409, 441, 442, 450-456, 459, 464, 910, 911",
    Category.PHONE_TESTS: "601, 602, 603, 608",
    Category.PHONE_COMM_FAILURES: "350-357",
    Category.ALARMS: "110-118, 130-136, 138-140, 146, 150-155, 158-163, 374, 457",
    Category.TROUBLES: "102, 141-143, 147, 156, 157, 200-206, 300-304, 307-312, 314-339, 342-344, 370-373, 375-382, 384-393, 461, 654",
    Category.OTHER: "305, 306, 313, 411-434, 458, 462, 463, 604-607, 609-632, 900-902",
}
CID_CASES = [(code, cat) for cat, spec in CID_TABLE.items() for code in _cid(spec)]

# §4.1, SIA DC-03 column.
SIA_TABLE: dict[Category, str] = {
    Category.PANICS: "PA HA MA QA PH PR HH HR MH QH",
    Category.SENSOR_TAMPER: "TA TR TT ES EJ XS JA JC",
    Category.CANCELS: "BC FC OC AB",
    Category.BYPASS: "BB BU FB FU PB PU HB HU MB MU QB QU GB GU KB KU WB WU ZB ZU SB SU TB TU UB UU",
    Category.ARMING: "OP CL OA CA OG CG OQ CQ OS CS CF NF NL NM CW CE CK CJ OK OJ CI OI CT OT CD CR OR",
    Category.PHONE_TESTS: "RP RX TX RY XX",
    Category.PHONE_COMM_FAILURES: "YC YS LT NT",
    Category.ALARMS: "BA BH BR BV BG BM FA FH FR KA KH KR SA SH SR GA GH GR WA WH ZA ZH UA UH UR EA EE",
    Category.TROUBLE_RESTORALS: "AR YR YQ XR XH BJ FJ FQ FV GJ KJ PJ HJ MJ QJ SJ UJ WJ ZJ ER EN IR YH YZ YK LR NR",
    Category.TROUBLES: "AT YT YM YP XT XQ BT FT FS FW GT KT PT HT MT QT ST UT US BS BZ UY UZ ET EM IA YA YX YF RR NA",
    Category.OTHER: "LB LX RB RS RU JT JD JS TS TE YG YY YN YW",
}
SIA_CASES = [(code, cat) for cat, codes in SIA_TABLE.items() for code in codes.split()]


class TestContactId:
    @pytest.mark.parametrize(("code", "category"), CID_CASES)
    def test_new_event_category(self, code: str, category: Category) -> None:
        """Q=1 of each listed Contact ID code falls in its §4.1 category."""
        result = classify(Family.CID, code, "1")
        assert result.category is category
        assert not result.restore

    @pytest.mark.parametrize("code", [c for c, cat in CID_CASES if cat is Category.TROUBLES])
    def test_trouble_restore(self, code: str) -> None:
        """Q=3 of a trouble is a Trouble Restoral."""
        result = classify(Family.CID, code, "3")
        assert result.category is Category.TROUBLE_RESTORALS
        assert result.restore

    @pytest.mark.parametrize("code", _cid("350-357"))
    def test_comm_failure_restore(self, code: str) -> None:
        """Q=3 of 350-357 is a Trouble Restoral."""
        assert classify(Family.CID, code, "3").category is Category.TROUBLE_RESTORALS

    @pytest.mark.parametrize("code", _cid("110-118, 130-136, 162"))
    def test_alarm_restore_stays_alarm(self, code: str) -> None:
        """Q=3 of an alarm is an Alarm flagged as restore."""
        result = classify(Family.CID, code, "3")
        assert result.category is Category.ALARMS
        assert result.restore

    @pytest.mark.parametrize("code", ["401", "403", "407"])
    def test_closing_is_not_a_restore(self, code: str) -> None:
        """For 4xx, Q=1 is an opening and Q=3 a closing: both Arming, neither a restore."""
        assert classify(Family.CID, code, "3").category is Category.ARMING
        assert not classify(Family.CID, code, "3").restore

    def test_status_report(self) -> None:
        """Q=6 keeps the Q=1 category and is flagged as status."""
        result = classify(Family.CID, "302", "6")
        assert result.category is Category.TROUBLES
        assert result.status

    @pytest.mark.parametrize("code", _cid("110-118"))
    def test_fire_flag(self, code: str) -> None:
        """110-118 are fire alarms (§4.2)."""
        assert classify(Family.CID, code, "1").fire

    @pytest.mark.parametrize("code", ["200", "206", "373", "130", "162"])
    def test_not_fire(self, code: str) -> None:
        """Fire supervisory/trouble and other alarms are not fire alarms."""
        assert not classify(Family.CID, code, "1").fire

    def test_co_flag(self) -> None:
        """162 is carbon monoxide (§4.2)."""
        assert classify(Family.CID, "162", "1").co
        assert not classify(Family.CID, "151", "1").co

    @pytest.mark.parametrize("code", ["999", "000", "777"])
    def test_unknown_is_unclassified(self, code: str) -> None:
        """Unknown codes are kept as unclassified."""
        assert classify(Family.CID, code, "1").category is Category.UNCLASSIFIED


class TestSia:
    @pytest.mark.parametrize(("code", "category"), SIA_CASES)
    def test_category(self, code: str, category: Category) -> None:
        """Each listed SIA code falls in its §4.1 category."""
        assert classify(Family.SIA, code).category is category

    @pytest.mark.parametrize("code", ["FA", "FH", "FR", "KA", "KH", "KR", "SA", "SH", "SR"])
    def test_fire(self, code: str) -> None:
        """FA/KA/SA and their restores are fire (§4.2)."""
        assert classify(Family.SIA, code).fire

    @pytest.mark.parametrize("code", ["FS", "FW", "FT", "BA"])
    def test_not_fire(self, code: str) -> None:
        """Fire supervisory and trouble codes are not fire alarms."""
        assert not classify(Family.SIA, code).fire

    def test_gas_is_possible_co(self) -> None:
        """GA is flagged as possible CO (§4.2: no dedicated CO code)."""
        assert classify(Family.SIA, "GA").co

    @pytest.mark.parametrize("code", ["BH", "FR", "YR", "AR", "LR"])
    def test_restores_flagged(self, code: str) -> None:
        """Restore codes carry the restore flag."""
        assert classify(Family.SIA, code).restore

    def test_unknown(self) -> None:
        """Unknown SIA codes are unclassified, never an error."""
        assert classify(Family.SIA, "QQ").category is Category.UNCLASSIFIED
