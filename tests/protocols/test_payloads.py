"""Contact ID and SIA DC-03 parsing into the canonical event model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.categories import classify
from protocols.contact_id import (
    contact_id_checksum,
    format_cid_block,
    format_dtmf,
    parse_cid_block,
    parse_dtmf,
)
from protocols.dc09_frame import encode_frame
from protocols.dc09_payload import parse_payload
from protocols.errors import RemoteProtocolError, Reply
from protocols.sia_dc03 import format_sia_block, parse_sia_block
from protocols.signal import Category, Event, Family


class TestContactIdBlocks:
    def test_burglary(self) -> None:
        """#1234|1130 02 001: burglary, partition 2, zone 1."""
        [e] = parse_cid_block("#1234|1130 02 001")
        assert (e.family, e.code, e.qualifier, e.partition, e.zone, e.user, e.account) == (
            Family.CID,
            "130",
            "1",
            2,
            1,
            None,
            "1234",
        )
        assert e.classification.category is Category.ALARMS

    def test_closing_by_user(self) -> None:
        """3401 02 005: closing by user 5 (CCC is a user for open/close)."""
        [e] = parse_cid_block("#1234|3401 02 005")
        assert (e.user, e.zone, e.classification.category) == (5, None, Category.ARMING)

    def test_dahua_account(self) -> None:
        """Non-decimal account B12345 (pysiaalarm#54) and group 00 = no partition."""
        [e] = parse_cid_block("#B12345|1602 00 000")
        assert (e.account, e.partition, e.zone) == ("B12345", None, None)
        assert e.classification.category is Category.PHONE_TESTS

    @pytest.mark.parametrize("data", ["|1130 01 001", "1130 01 001"])
    def test_without_account(self, data: str) -> None:
        """No account in the data block, with or without its '|' (§1.7): the event is read."""
        [e] = parse_cid_block(data)
        assert (e.code, e.qualifier, e.partition, e.zone, e.account) == ("130", "1", 1, 1, None)

    @pytest.mark.parametrize(
        "data", ["#1234|1130 1 001", "#1234|2130 01 001", "#1234|1130 01 0011", "garbage", ""]
    )
    def test_malformed(self, data: str) -> None:
        """Malformed Contact ID data is a DUH error."""
        with pytest.raises(RemoteProtocolError) as info:
            parse_cid_block(data)
        assert info.value.reply is Reply.DUH


class TestDtmf:
    @pytest.mark.parametrize(
        ("fifteen", "full"),
        [
            ("123418113101015", "1234181131010158"),
            ("123418160200000", "1234181602000002"),
            ("123418340101003", "1234183401010034"),
        ],
    )
    def test_checksum_examples(self, fifteen: str, full: str) -> None:
        """The §2.4 checksum examples."""
        assert fifteen + contact_id_checksum(fifteen) == full
        assert parse_dtmf(full).code == fifteen[7:10]

    def test_bad_checksum(self) -> None:
        """A wrong checksum digit is rejected with a clear message."""
        with pytest.raises(RemoteProtocolError, match="checksum"):
            parse_dtmf("1234181131010159")

    def test_format_dtmf(self) -> None:
        """format_dtmf builds the checksummed 16 digits."""
        [e] = parse_cid_block("#1234|1131 01 015")
        assert format_dtmf(e, "1234") == "1234181131010158"


class TestSiaBlocks:
    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            ("#1234|NRR|Atest", [("RR", None, None, None, "test", None)]),
            ("#0123|Nti20:50:26RP99", [("RP", 99, None, None, None, "20:50:26")]),
            ("#0000|Nri0/RP0000", [("RP", 0, 0, None, None, None)]),
            (
                "#000110|Nri0RP2^SL 1807110200065423^",
                [("RP", 2, 0, None, "SL 1807110200065423", None)],
            ),
            ("#3080|Nti19:44/id1/RP", [("RP", None, None, 1, None, "19:44")]),
            ("#22334455|NCQ1", [("CQ", None, None, 1, None, None)]),
            ("#7303658550|NBA4", [("BA", 4, None, None, None, None)]),
            ("#0001|0|NRP", [("RP", None, None, None, None, None)]),
            ("#1234|Nri1/BA01", [("BA", 1, 1, None, None, None)]),
            ("|Nri1/CL501", [("CL", None, 1, 501, None, None)]),
            ("Nri1/WA000", [("WA", 0, 1, None, None, None)]),
            ("#123456|Nri1CL0^VX FRONTE ^", [("CL", None, 1, 0, "VX FRONTE ", None)]),
            ("Nri04/OP001NM", [("OP", None, 4, 1, None, None), ("NM", None, 4, None, None, None)]),
            (
                "#1234|Nri1/BA01/BA02",
                [("BA", 1, 1, None, None, None), ("BA", 2, 1, None, None, None)],
            ),
        ],
    )
    def test_documented_blocks(self, data: str, expected: list[tuple[object, ...]]) -> None:
        """Every SIA block quoted in PROTOCOLS.md §1.7/§3.1/§5 parses to the expected fields."""
        events = parse_sia_block(data)
        assert [(e.code, e.zone, e.partition, e.user, e.text, e.time) for e in events] == expected

    @pytest.mark.parametrize(
        "data",
        [
            "#1234|",
            "#1234|X",
            "#1234|Nri1/ba01",
            "#1234|N^x^",
            "#1234|NBA^unterminated",
            "#1234|N|N",
            "#1234|NBA1|Nri1/ba01",
        ],
    )
    def test_malformed(self, data: str) -> None:
        """Malformed SIA blocks are DUH errors."""
        with pytest.raises(RemoteProtocolError) as info:
            parse_sia_block(data)
        assert info.value.reply is Reply.DUH

    def test_every_new_event_block_is_read(self) -> None:
        """Each 'N' block of the data is parsed with its own modifiers; none is dropped."""
        events = parse_sia_block("#1234|Nri1/BA01|Nri2/FA03|Afire")
        assert [(e.code, e.zone, e.partition, e.text) for e in events] == [
            ("BA", 1, 1, None),
            ("FA", 3, 2, "fire"),
        ]
        assert events[1].classification.fire
        for data in ("#1234|NBA01|N", "#1234|N|NBA01"):
            assert [e.code for e in parse_sia_block(data)] == ["BA"]  # a bare N carries nothing

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            # dc09_spt writes area and user names right after their modifier.
            ("#1234|Nri2^Ground floor^BA12^Kitchen^", [("BA", 12, 2, None, "Kitchen")]),
            ("#1234|Nri2^Ground floor^BA12", [("BA", 12, 2, None, "Ground floor")]),
            ("#1234|Nid5^John^BA12|Aback door", [("BA", 12, None, 5, "back door")]),
            (
                "#1234|Nri1^Shop^id5^John^CG1/ri2BA3",
                [("CG", None, 1, 5, "Shop, John"), ("BA", 3, 2, 5, "John")],
            ),
        ],
    )
    def test_names_after_modifiers(self, data: str, expected: list[tuple[object, ...]]) -> None:
        """A ^name^ after ri/id names that area or user: the event is read, the name is its text
        when it has none of its own."""
        events = parse_sia_block(data)
        assert [(e.code, e.zone, e.partition, e.user, e.text) for e in events] == expected

    def test_free_text_belongs_to_its_own_block(self) -> None:
        """An '|A' text names the events of the 'N' block before it only."""
        events = parse_sia_block("#1234|Nid3/OP1|Aowner|NBA2")
        assert [(e.code, e.user, e.text) for e in events] == [
            ("OP", 1, "owner"),
            ("BA", None, None),
        ]


class TestDispatch:
    def test_null_with_cid_body(self) -> None:
        """Hikvision's NULL with a CID-style body carries no event."""
        assert parse_payload("NULL", "#0000|0000 00 000") == ()

    def test_unsupported_token(self) -> None:
        """Other tokens are DUH."""
        with pytest.raises(RemoteProtocolError, match="unsupported"):
            parse_payload("ACR-SF", "x")


cid_events = st.builds(
    lambda q, code, part, num: Event(
        family=Family.CID,
        code=code,
        qualifier=q,
        zone=num or None,
        partition=part or None,
        classification=classify(Family.CID, code, q),
    ),
    st.sampled_from("136"),
    st.sampled_from(["130", "110", "602", "301", "137", "570", "999"]),
    st.integers(0, 99),
    st.integers(0, 999),
)
sia_events = st.builds(
    lambda code, part, zone: Event(
        family=Family.SIA,
        code=code,
        zone=zone,
        partition=part,
        classification=classify(Family.SIA, code),
    ),
    st.sampled_from(["BA", "FA", "RP", "AT", "TA", "BB", "YC"]),
    st.one_of(st.none(), st.integers(0, 99)),
    st.one_of(st.none(), st.integers(0, 999)),
)


class TestFormatRoundTrip:
    @given(cid_events)
    @settings(max_examples=100)
    def test_cid(self, event: Event) -> None:
        """format_cid_block then parse gives the same event (with the block's account)."""
        [back] = parse_cid_block(format_cid_block(event, "1234"))
        assert back == Event(
            **{**{f: getattr(event, f) for f in event.__struct_fields__}, "account": "1234"}
        )

    @given(sia_events)
    @settings(max_examples=100)
    def test_sia(self, event: Event) -> None:
        """format_sia_block then parse gives the same code, zone and partition."""
        [back] = parse_sia_block(format_sia_block(event, "1234"))
        assert (back.code, back.zone, back.partition) == (event.code, event.zone, event.partition)

    @given(text=st.text(max_size=40))
    @settings(max_examples=300)
    def test_any_text_makes_a_frame_a_receiver_can_read(self, text: str) -> None:
        """Whatever text a module sent (MQTT text is any Unicode): the block encodes to
        Windows-1252, has no control character, parses back, and a frame can carry it."""
        event = Event(
            family=Family.SIA,
            code="BA",
            zone=1,
            text=text,
            classification=classify(Family.SIA, "BA"),
        )
        block = format_sia_block(event, "1234")
        block.encode("cp1252")  # would raise for a character the frame cannot carry
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in block)
        [back] = parse_sia_block(block)
        assert (back.code, back.zone) == ("BA", 1)
        encode_frame(token="SIA-DCS", seq="0001", account="1234", data=block)

    def test_text_outside_windows_1252_becomes_question_marks(self) -> None:
        """Cyrillic and emoji become ?, delimiters and control characters spaces; ü stays."""
        event = Event(
            family=Family.SIA,
            code="FA",
            zone=3,
            text="Кухня 🔥\r\nKüche^1|[2]\x00",
            classification=classify(Family.SIA, "FA"),
        )
        assert format_sia_block(event, "1234") == "#1234|NFA003^????? ?  Küche 1  2  ^"


class TestSiaFastPath:
    @given(
        account=st.one_of(st.none(), st.text("0123456789ABCDEF", min_size=1, max_size=16)),
        area=st.one_of(st.none(), st.integers(0, 99)),
        slash=st.booleans(),
        code=st.sampled_from(["BA", "CL", "OP", "CG", "RP", "FA", "AT", "QQ", "NL"]),
        address=st.one_of(st.none(), st.integers(0, 99999)),
    )
    @settings(max_examples=300)
    def test_fast_path_equals_general_parser(
        self, account: str | None, area: int | None, slash: bool, code: str, address: int | None
    ) -> None:
        """The common-form fast path gives exactly what the full DC-03 parser gives."""
        from protocols.sia_dc03 import parse_sia_block_general

        block = (f"#{account}|" if account else "") + "N"
        if area is not None:
            block += f"ri{area}" + ("/" if slash else "")
        block += code + (f"{address:03d}" if address is not None else "")
        assert parse_sia_block(block) == parse_sia_block_general(block)
