"""DC-09 frame decoding and encoding against the public vectors and the vendor quirks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import (
    CrcStyle,
    decode_frame,
    decode_header,
    encode_frame,
    inspect_frame,
)
from protocols.dc09_timestamp import parse_timestamp
from protocols.errors import RemoteProtocolError, Reply
from protocols.signal import XData
from tests.vectors import encrypted_vectors, frame_vectors, load_vectors


@pytest.mark.parametrize("vector", frame_vectors(), ids=lambda v: v["frame"][:24])
class TestPublicVectors:
    def test_fields(self, vector: dict[str, Any]) -> None:
        """Each public frame decodes with the expected CRC/length verdicts and header fields."""
        result = inspect_frame(vector["frame"].encode("latin-1"))
        assert result.crc_ok is vector["crc_ok"]
        assert result.length_ok is vector["length_ok"]
        assert result.id == vector["id"]
        assert result.seq == vector["seq"]
        assert result.receiver == vector["receiver"]
        assert result.line == vector["line"]
        assert result.account == vector["account"]
        assert result.error is None
        expected_ts = parse_timestamp(vector["timestamp"]) if vector["timestamp"] else None
        assert result.timestamp == expected_ts

    def test_reencode_is_byte_identical(self, vector: dict[str, Any]) -> None:
        """Our encoder rebuilds each frame byte for byte (bare L and the NAK's A0 made explicit)."""
        frame = decode_frame(vector["frame"].encode("latin-1"))
        expected = vector["frame"].encode("latin-1")
        if frame.line == "":  # accepted, but we never emit a bare L: it is rebuilt as L0
            expected = expected.replace(b"L#", b"L0#", 1)
            region = expected[8:]
            expected = f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region
        rebuilt = encode_frame(
            token=frame.token,
            seq=frame.seq,
            account=frame.account,
            data=frame.data,
            receiver=frame.receiver,
            line="0" if frame.line == "" else frame.line,
            xdata=frame.xdata,
            timestamp=frame.timestamp,
            extra_fields="A0" if frame.token == "NAK" else "",
        )
        assert rebuilt == b"\n" + expected + b"\r"


# G2 of PROTOCOLS.md §5.3 (AES-256) is in the document but not in vectors.json.
G2 = {
    "frame": 'C4710078"*ADM-CID"0002R1L1#1234[9C6569F5A4D117CD38906A5761C64B9323910771204E78936E475142530D669036F71AAC1531273B422236EC012D7F8F',
    "key_hex": bytes(range(32)).hex().upper(),
    "plaintext": "PPPPPPPPP|#1234|1130 01 001]_12:00:00,01-01-2024",
}


@pytest.mark.parametrize("vector", [*encrypted_vectors(), G2], ids=lambda v: v["frame"][:24])
class TestEncryptedVectors:
    def test_decrypts_to_plaintext(self, vector: dict[str, Any]) -> None:
        """Encrypted vectors decrypt with their key to the published plaintext."""
        key = AesKey.from_hex(vector["key_hex"])
        frame = decode_frame(vector["frame"].encode(), key=key)
        pad, _, rest = vector["plaintext"].partition("|")
        data, _, stamp = rest.partition("]")
        assert frame.encrypted
        assert frame.data == data
        assert frame.timestamp == parse_timestamp(stamp)

    def test_round_trip_with_the_same_pad(self, vector: dict[str, Any]) -> None:
        """Re-encrypting with the published pad gives the published frame."""
        key = AesKey.from_hex(vector["key_hex"])
        frame = decode_frame(vector["frame"].encode(), key=key)
        pad = vector["plaintext"].partition("|")[0].encode()
        rebuilt = encode_frame(
            token=frame.token,
            seq=frame.seq,
            account=frame.account,
            data=frame.data,
            receiver=frame.receiver,
            line=frame.line,
            timestamp=frame.timestamp,
            key=key,
            pad=pad,
        )
        assert rebuilt[1:-1].decode() == vector["frame"]

    def test_wrong_key_is_a_clear_duh(self, vector: dict[str, Any]) -> None:
        """A wrong key gives DUH with 'decrypt failed', not a parse error."""
        wrong = AesKey.from_ascii("1234567890123456")
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(vector["frame"].encode(), key=wrong)
        assert info.value.reply is Reply.DUH
        assert "decrypt failed" in info.value.message


class TestNegativeVectors:
    def test_wrong_crc_is_silent(self) -> None:
        """ioBroker.sia#111's frame has CRC ADFF where F956 is right: no reply."""
        raw = b'ADFF0040"SIA-DCS"0049L0#AFFE[#AFFE|Nri1CL0001^user^]_14:06:21,05-17-2026'
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(raw)
        assert info.value.reply is Reply.NONE
        assert "F956" in info.value.message
        assert decode_frame(b"F956" + raw[4:]).account == "AFFE"

    def test_wrong_length_is_silent(self) -> None:
        """A valid CRC with a wrong length field gets no reply."""
        good = encode_frame(token="SIA-DCS", seq="0001", account="1234", data="#1234|NBA01")
        bad = good[:5] + b"0FF" + good[8:]
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(bad)
        assert info.value.reply is Reply.NONE

    def test_valid_crc_wrong_length_is_silent(self) -> None:
        """pysiaalarm's case_code_jc has a valid CRC but length 0078 for 0x33 bytes: no reply."""
        raw = b'97F90078"SIA-DCS"6002L0#AAA[|Nri2/JC12]_12:58:23,09-15-2021'
        result = inspect_frame(raw)
        assert (result.crc_ok, result.length_ok) == (True, False)
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(raw)
        assert info.value.reply is Reply.NONE
        assert "length" in info.value.message

    def test_pysiaalarm_none_ack_is_recognisable(self) -> None:
        """pysiaalarm's ACK with the literal None (core#180511) is not a valid header for us."""
        with pytest.raises(RemoteProtocolError):
            decode_frame(b'24CC0016"ACK"0000NoneL0#1409[]')


def _eldes(frame: bytes) -> bytes:
    """Rewrite a standard frame the Eldes way: CRC and length include the trailing CR."""
    region = frame[9:-1]
    crc = crc16_arc(region + b"\r")
    return b"\n" + f"{crc:04X}0{len(region) + 1:03X}".encode() + region + b"\r"


class TestVendorQuirks:
    def test_binary_crc(self) -> None:
        """A 2-byte binary CRC (Lupusec, Jablotron, Trikdis) is accepted and remembered."""
        raw = encode_frame(
            token="SIA-DCS",
            seq="0001",
            account="1234",
            data="#1234|NBA01",
            crc_style=CrcStyle.BINARY,
        )
        frame = decode_frame(raw)
        assert frame.crc_style is CrcStyle.BINARY
        assert frame.data == "#1234|NBA01"

    def test_eldes_inspection(self) -> None:
        """inspect_frame calls an Eldes frame's CRC and length ok, and a +1 length alone not ok."""
        eldes = _eldes(encode_frame(token="NULL", seq="0000", account="1234", data=""))
        result = inspect_frame(eldes)
        assert (result.crc_ok, result.length_ok) == (True, True)
        standard = encode_frame(token="NULL", seq="0000", account="1234", data="")
        plus_one = standard[:5] + f"{int(standard[5:8], 16) + 1:03X}".encode() + standard[8:]
        assert (inspect_frame(plus_one).crc_ok, inspect_frame(plus_one).length_ok) == (True, False)

    def test_eldes_crc_includes_cr(self) -> None:
        """Eldes frames that count the CR in CRC and length are accepted."""
        frame = decode_frame(
            _eldes(
                encode_frame(token="ADM-CID", seq="0002", account="1234", data="#1234|1130 01 001")
            )
        )
        assert frame.crc_includes_cr
        assert frame.seq == "0002"

    def test_trailing_nuls(self) -> None:
        """NUL bytes after the CR are ignored."""
        raw = encode_frame(token="NULL", seq="0000", account="1409", data="") + b"\x00\x00"
        assert decode_frame(raw).token == "NULL"

    def test_six_digit_line(self) -> None:
        """L000000 (pysiaalarm#64) is a valid line prefix."""
        raw = encode_frame(token="NULL", seq="0000", account="1409", data="", line="000000")
        assert decode_frame(raw).line == "000000"

    def test_windows_1252_xdata(self) -> None:
        """Windows-1252 text in x-data: CRC over raw bytes, text decoded (ioBroker.sia#63)."""
        raw = encode_frame(
            token="ADM-CID",
            seq="0003",
            account="1234",
            data="#1234|1130 01 001",
            xdata=[XData(id="I", value="Küche €")],
        )
        assert "\x80".encode("latin-1") in raw  # the euro sign is one cp1252 byte
        assert decode_frame(raw).xdata == (XData(id="I", value="Küche €"),)

    def test_hikvision_null_without_bar(self) -> None:
        """An encrypted NULL whose pad has no '|' (Hikvision) decrypts to empty data."""
        key = AesKey.from_hex("000102030405060708090A0B0C0D0E0F")
        region_plain = b"ppppppppppp]_18:24:52,07-05-2020"
        header = b'"*NULL"0000L0#1234['
        region = header + key.encrypt(region_plain).hex().upper().encode()
        raw = b"\n" + f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region + b"\r"
        frame = decode_frame(raw, key=key)
        assert frame.data == ""
        assert frame.timestamp == datetime(2020, 7, 5, 18, 24, 52, tzinfo=UTC)

    def test_several_xdata_blocks(self) -> None:
        """Several x-data blocks are all kept, in order (pysiaalarm#54)."""
        raw = encode_frame(
            token="ADM-CID",
            seq="0056",
            account="123456",
            data="#123456|1406 01 000",
            xdata=[XData(id="R", value="LivingRoom"), XData(id="I", value="userName")],
        )
        assert [x.id for x in decode_frame(raw).xdata] == ["R", "I"]

    def test_header_only_decode_keeps_body_encrypted(self) -> None:
        """decode_header validates CRC/length without needing the key."""
        vectors = load_vectors()["encrypted"]
        header = decode_header(vectors[0]["frame"].encode())
        assert header.encrypted
        assert header.account == "1234"


class TestEncodeArguments:
    def test_encrypted_needs_timestamp(self) -> None:
        """Encrypting without a timestamp is refused (§1.9)."""
        with pytest.raises(ValueError, match="timestamp"):
            encode_frame(
                token="SIA-DCS",
                seq="0001",
                account="1234",
                data="",
                key=AesKey.from_ascii("1234567890123456"),
            )

    def test_bad_seq(self) -> None:
        """The sequence number must be 4 digits."""
        with pytest.raises(ValueError, match="seq"):
            encode_frame(token="SIA-DCS", seq="12", account="1234", data="")

    def test_never_writes_none(self) -> None:
        """An absent receiver is omitted, never written as 'None'."""
        raw = encode_frame(token="ACK", seq="0000", account="1409", data="", receiver=None)
        assert b"None" not in raw
        assert raw == b'\n59890012"ACK"0000L0#1409[]\r'


class TestInspect:
    def test_bad_crc_still_reports_the_header(self) -> None:
        """inspect_frame on a wrong CRC says crc_ok False, length_ok True and shows the fields."""
        raw = b'ADFF0040"SIA-DCS"0049L0#AFFE[#AFFE|Nri1CL0001^user^]_14:06:21,05-17-2026'
        result = inspect_frame(raw)
        assert (result.crc_ok, result.length_ok) == (False, True)
        assert (result.id, result.seq, result.line, result.account) == (
            "SIA-DCS",
            "0049",
            "0",
            "AFFE",
        )
        assert result.error is not None and "CRC" in result.error
        assert result.frame is None

    def test_valid_frame_carries_the_decoded_frame(self) -> None:
        """A valid frame's inspection holds the decoded Frame, x-data and timestamp."""
        raw = (
            b'2DE1004C"ADM-CID"0056L0#123456[#123456|1406 01 000][RLivingRoom]_17:22:02,09-18-2023'
        )
        result = inspect_frame(raw)
        assert result.error is None and result.frame is not None
        assert result.xdata == (XData(id="R", value="LivingRoom"),)
        assert result.frame.data == "#123456|1406 01 000"

    def test_encrypted_without_key_explains(self) -> None:
        """An encrypted frame inspected without a key reports the header and why the body is unread."""
        raw = load_vectors()["encrypted"][0]["frame"].encode()
        result = inspect_frame(raw)
        assert result.crc_ok and result.length_ok and result.encrypted
        assert result.error is not None and "key" in result.error

    def test_garbage(self) -> None:
        """Garbage yields an inspection with an error, never an exception."""
        result = inspect_frame(b"hello")
        assert not result.crc_ok and result.error is not None


class TestMoreQuirks:
    def test_lower_case_hex_crc(self) -> None:
        """A lower-case hex CRC field is accepted (pysiaalarm's regex allows it)."""
        frame = decode_frame(b'\nd3440015"NULL"0000L0#008312[]\r')
        assert frame.account == "008312"

    def test_binary_crc_with_six_digit_line(self) -> None:
        """pysiaalarm#64: binary CRC and L000000 together."""
        raw = encode_frame(
            token="NULL",
            seq="0000",
            account="1234",
            data="",
            line="000000",
            crc_style=CrcStyle.BINARY,
        )
        frame = decode_frame(raw)
        assert (frame.crc_style, frame.line) == (CrcStyle.BINARY, "000000")

    def test_binary_crc_containing_cr_and_lf_bytes(self) -> None:
        """A binary CRC whose bytes are CR or LF still decodes (only the last CR ends the frame)."""
        region = b'"NULL"0000L0#1409[]'
        raw = b"\n\x0d\x0a" + f"0{len(region):03X}".encode() + region + b"\r"
        crc = crc16_arc(region)
        raw = b"\n" + crc.to_bytes(2, "big") + raw[3:]
        assert decode_frame(raw).account == "1409"

    def test_cid_style_null_body_is_kept(self) -> None:
        """Hikvision's NULL with a CID-like body decodes with that body as data (sia#17)."""
        raw = encode_frame(token="NULL", seq="0000", account="0000", data="#0000|0000 00 000")
        assert decode_frame(raw).data == "#0000|0000 00 000"

    def test_no_line_and_bare_line(self) -> None:
        """No L field gives line None; a bare L gives line ""."""
        assert decode_frame(b'AEF00011"NULL"0002#1234[]').line is None
        assert decode_frame(b'BB86002C"NULL"0001L#7303658550[]_15:39:38,06-07-2019').line == ""

    def test_standard_frame_is_not_flagged_eldes(self) -> None:
        """crc_includes_cr is False for a standard frame."""
        assert not decode_frame(b'59890012"ACK"0000L0#1409[]').crc_includes_cr

    def test_oversized_frame_is_refused_before_parsing(self) -> None:
        """A frame above the size limit is refused silently."""
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(b"\n" + b"A" * 5000 + b"\r")
        assert info.value.reply is Reply.NONE

    def test_token_kept_as_sent(self) -> None:
        """Any token is reported as sent, without the '*'."""
        raw = encode_frame(token="ACR-SF", seq="0001", account="1234", data="x")
        assert decode_frame(raw).token == "ACR-SF"

    def test_unparsable_header_with_valid_crc_is_duh(self) -> None:
        """A CRC-valid frame whose header cannot be read gets DUH."""
        region = b'"SIA-DCS"12L0#1234[]'
        raw = f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(raw)
        assert info.value.reply is Reply.DUH

    def test_bad_timestamp_is_duh(self) -> None:
        """A CRC-valid frame with an impossible timestamp gets DUH."""
        region = b'"NULL"0000L0#1234[]_25:00:00,01-01-2024'
        raw = f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(raw)
        assert info.value.reply is Reply.DUH

    def test_decrypted_but_malformed_is_not_called_a_wrong_key(self) -> None:
        """The right key with a content fault (dc09_spt's [$P…] GPS block) says what is wrong;
        "wrong key" is kept for a key that does not decrypt the frame."""
        key = AesKey.from_hex("000102030405060708090A0B0C0D0E0F")
        content = b"#1234|NBA1][$P52.1,5.9]_12:00:00,01-01-2024"
        region = b'"*SIA-DCS"0001L0#1234[' + key.encrypt_region(content).encode()
        raw = f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(raw, key=key)
        assert info.value.reply is Reply.DUH
        assert "wrong key" not in info.value.message
        assert "$P52.1,5.9" in info.value.message
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(raw, key=AesKey.from_ascii("1234567890123456"))
        assert info.value.reply is Reply.DUH
        assert "decrypt failed: wrong key" in info.value.message

    def test_a_bad_x_data_block_is_quoted_by_its_beginning_only(self) -> None:
        """The DUH reason (which is logged) names at most 16 characters of the block: an
        encrypted frame's content, such as a GPS position, is not written out whole."""
        key = AesKey.from_hex("000102030405060708090A0B0C0D0E0F")
        position = "$P52.123456,5.987654,alt=12.5,acc=3.1"
        content = f"#1234|NBA1][{position}]_12:00:00,01-01-2024".encode()
        region = b'"*SIA-DCS"0001L0#1234[' + key.encrypt_region(content).encode()
        raw = f"{crc16_arc(region):04X}0{len(region):03X}".encode() + region
        with pytest.raises(RemoteProtocolError) as info:
            decode_frame(raw, key=key)
        assert position[:16] in info.value.message
        assert position[16:] not in info.value.message


class TestEncodeValidation:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"data": "a]b"},
            {"xdata": [XData(id="I", value="x]")]},
            {"xdata": [XData(id="II", value="x")]},
            {"receiver": "G1"},
            {"line": "1234567"},
            {"account": "12#4"},
            {"token": 'SIA"DCS'},
        ],
        ids=str,
    )
    def test_refuses_what_would_break_the_frame(self, kwargs: dict[str, Any]) -> None:
        """Arguments that would produce a malformed frame raise ValueError."""
        args: dict[str, Any] = {"token": "SIA-DCS", "seq": "0001", "account": "1234", "data": ""}
        args.update(kwargs)
        with pytest.raises(ValueError):
            encode_frame(**args)
