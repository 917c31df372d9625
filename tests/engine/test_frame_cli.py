"""``alarmrelay frame decode`` / ``frame encode`` run in-process through ``engine.cli.main``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from engine.cli import main
from engine.commands.frame import escape, unescape
from protocols.crc import crc16_arc
from tests.vectors import VECTORS_PATH, encrypted_vectors, frame_vectors

_MISSING = pytest.mark.skip(reason=f"missing {VECTORS_PATH} (shared/protocols/vectors.json)")


def _params(vectors: list[dict[str, Any]]) -> list[Any]:
    # An empty parameter list would skip with pytest's generic reason; name the missing file.
    if not vectors:
        return [pytest.param({}, marks=_MISSING, id="vectors-missing")]
    return [pytest.param(v, id=v["frame"][:28]) for v in vectors]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """Exit code, stdout (parsed when it is JSON) and stderr of one CLI run."""
    code = main(list(argv))
    captured = capsys.readouterr()
    text = captured.out.strip()
    out = json.loads(text) if text.startswith("{") else text
    return code, out, captured.err


def iso(dc09_time: str | None) -> str | None:
    """``HH:MM:SS,MM-DD-YYYY`` (vectors.json) as the ISO 8601 text the CLI prints."""
    if dc09_time is None:
        return None
    return datetime.strptime(dc09_time, "%H:%M:%S,%m-%d-%Y").replace(tzinfo=UTC).isoformat()


def with_binary_crc(text: str) -> str:
    """The same frame with its CRC written as 2 raw bytes, typed as \\x escapes (§1.15)."""
    crc = int(text[:4], 16)
    return f"\\x{crc >> 8:02X}\\x{crc & 0xFF:02X}" + text[4:]


def eldes(region: str) -> str:
    """A frame whose CRC and length count a trailing CR (Eldes, pysiaalarm#17)."""
    counted = region.encode("ascii") + b"\r"
    return f"{crc16_arc(counted):04X}0{len(counted):03X}{region}"


# Expected events for vectors whose meaning PROTOCOLS.md §2–§4 spells out:
# (family, code, qualifier, zone, partition, user, category).
EXPECTED_EVENTS: dict[str, list[tuple[Any, ...]]] = {
    "CEF0003F": [("sia", "BA", None, 4, None, None, "alarms")],
    "78FC003B": [("sia", "CQ", None, None, None, 1, "arming")],
    "A6CC003B": [("sia", "RP", None, 0, 0, None, "phone_tests")],
    "DABA003F": [("cid", "602", "1", None, None, None, "phone_tests")],
    "2DE1004C": [("cid", "406", "1", None, 1, None, "cancels")],
    "E5690029": [("cid", "130", "1", 1, 1, None, "alarms")],
    "189F0029": [],  # NULL: a link test carries no event
    "59890012": [],  # ACK: a reply carries no event
}


def event_tuples(out: dict[str, Any]) -> list[tuple[Any, ...]]:
    keys = ("family", "code", "qualifier", "zone", "partition", "user", "category")
    return [tuple(e[k] for k in keys) for e in out["events"]]


class TestDecodeVectors:
    """Every frame of vectors.json through ``frame decode``."""

    @pytest.mark.parametrize("vector", _params(frame_vectors()))
    def test_public_vector(
        self, capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
    ) -> None:
        """A public vector prints its CRC/length verdicts, header fields and timestamp; exit 0."""
        code, out, err = run(capsys, "frame", "decode", vector["frame"])
        for field in ("crc_ok", "length_ok", "id", "seq", "receiver", "line", "account"):
            assert out[field] == vector[field], field
        assert out["encrypted"] is False
        assert out["timestamp"] == iso(vector["timestamp"])
        assert out["timestamp_ok"] is None
        assert out["error"] is None
        assert code == 0
        assert err == ""

    @pytest.mark.parametrize("vector", _params(frame_vectors()))
    def test_public_vector_with_lf_cr(
        self, capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
    ) -> None:
        """The same vector given with its LF and CR (real or escaped) decodes the same way."""
        _, plain, _ = run(capsys, "frame", "decode", vector["frame"])
        for framed in (
            f"\n{vector['frame']}\r",
            f"\\n{vector['frame']}\\r",
            f"\n{vector['frame']}\r\n",  # pasted with a line end after the CR
        ):
            code, out, _ = run(capsys, "frame", "decode", framed)
            assert code == 0
            assert out == plain

    @pytest.mark.parametrize("vector", _params(frame_vectors()))
    def test_public_vector_with_binary_crc(
        self, capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
    ) -> None:
        """Each vector rewritten with a 2-byte binary CRC (typed as \\x escapes) is still valid."""
        code, out, _ = run(capsys, "frame", "decode", with_binary_crc(vector["frame"]))
        assert (code, out["crc_ok"], out["length_ok"], out["error"]) == (0, True, True, None)
        assert out["account"] == vector["account"]

    @pytest.mark.parametrize("prefix", sorted(EXPECTED_EVENTS))
    def test_events(self, capsys: pytest.CaptureFixture[str], prefix: str) -> None:
        """Events carry family, code, qualifier, zone, partition, user and category."""
        frames = [v["frame"] for v in frame_vectors() if v["frame"].startswith(prefix)]
        if not frames:
            pytest.skip(f"missing {VECTORS_PATH} or its vector {prefix}")
        code, out, _ = run(capsys, "frame", "decode", frames[0])
        assert code == 0
        assert event_tuples(out) == EXPECTED_EVENTS[prefix]

    @pytest.mark.parametrize("vector", _params(encrypted_vectors()))
    def test_encrypted_vector(
        self, capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
    ) -> None:
        """An encrypted vector decrypts with --key-hex; its timestamp is the one in the plaintext."""
        code, out, _ = run(
            capsys, "frame", "decode", vector["frame"], "--key-hex", vector["key_hex"]
        )
        assert (code, out["error"], out["encrypted"]) == (0, None, True)
        assert out["crc_ok"] and out["length_ok"]
        assert out["timestamp"] == iso(vector["plaintext"][-19:])
        if "|#1234|Nri1/BA01]" in vector["plaintext"]:
            assert event_tuples(out) == [("sia", "BA", None, 1, 1, None, "alarms")]

    @pytest.mark.parametrize("vector", _params(encrypted_vectors()))
    def test_encrypted_vector_needs_the_key(
        self, capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
    ) -> None:
        """Without a key, or with the wrong one, exit 1 and the error says why."""
        code, out, _ = run(capsys, "frame", "decode", vector["frame"])
        assert code == 1
        assert out["crc_ok"] is True
        assert "key" in out["error"]
        wrong = "F" * len(vector["key_hex"])
        code, out, _ = run(capsys, "frame", "decode", vector["frame"], "--key-hex", wrong)
        assert code == 1
        assert "decrypt failed" in out["error"]


class TestDecodeInvalid:
    """Frames that are not valid exit 1 with a clear error."""

    def test_bad_crc(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A wrong CRC (ioBroker.sia#111, correct is F956) exits 1: CRC mismatch, no reply."""
        frame = 'ADFF0040"SIA-DCS"0049L0#AFFE[#AFFE|Nri1CL0001^user^]_14:06:21,05-17-2026'
        code, out, _ = run(capsys, "frame", "decode", frame)
        assert code == 1
        assert out["crc_ok"] is False
        assert out["length_ok"] is True
        assert "CRC" in out["error"]
        assert "no reply" in out["error"]
        code, out, _ = run(capsys, "frame", "decode", "F956" + frame[4:])
        assert (code, out["crc_ok"], out["error"]) == (0, True, None)

    def test_bad_length(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A right CRC with a wrong length exits 1 with length_ok false and no reply."""
        region = '"SIA-DCS"0001L0#1234[#1234|Nri1/BA01]'
        frame = f"{crc16_arc(region.encode()):04X}0{len(region) + 2:03X}{region}"
        code, out, _ = run(capsys, "frame", "decode", frame)
        assert code == 1
        assert (out["crc_ok"], out["length_ok"]) == (True, False)
        assert "length" in out["error"]
        assert "no reply" in out["error"]

    def test_not_a_frame(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Text that is not a DC-09 frame still prints one JSON object, exit 1."""
        code, out, _ = run(capsys, "frame", "decode", "hello")
        assert code == 1
        assert out["crc_ok"] is False
        assert out["events"] == []
        assert out["error"]

    def test_unparsable_data(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Valid framing with data no parser understands exits 1 with the parser's message."""
        region = '"ADM-CID"0001L0#1234[#1234|garbage]'
        frame = f"{crc16_arc(region.encode()):04X}0{len(region):03X}{region}"
        code, out, _ = run(capsys, "frame", "decode", frame)
        assert code == 1
        assert out["crc_ok"] and out["length_ok"]
        assert out["error"]


class TestDecodeQuirksAndWindow:
    """Vendor deviations and the timestamp window."""

    def test_eldes_cr_in_crc(self, capsys: pytest.CaptureFixture[str]) -> None:
        """CRC and length that count the trailing CR (Eldes) are accepted."""
        frame = eldes('"SIA-DCS"0007L0#1234[#1234|Nri1/FA03]_10:00:00,01-02-2024')
        code, out, _ = run(capsys, "frame", "decode", frame)
        assert (code, out["crc_ok"], out["length_ok"], out["error"]) == (0, True, True, None)
        assert out["events"][0]["fire"] is True

    def test_window(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--now checks -40/+20 s: inside exits 0, outside exits 1 with a NAK error."""
        frame = 'A6CC003B"SIA-DCS"1662L0#0000[#0000|Nri0/RP0000]_12:40:52,12-22-2021'
        for now, ok in (
            ("2021-12-22T12:41:32Z", True),  # 40 s after the frame
            ("2021-12-22T12:41:33Z", False),  # 41 s after
            ("2021-12-22T12:40:32+00:00", True),  # frame 20 s ahead
            ("2021-12-22T12:40:31", False),  # 21 s ahead; naive means UTC
        ):
            code, out, _ = run(capsys, "frame", "decode", frame, "--now", now)
            assert out["timestamp_ok"] is ok, now
            assert code == (0 if ok else 1)
            if not ok:
                assert "NAK" in out["error"]

    def test_window_without_timestamp(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A frame without timestamp has timestamp_ok null even with --now."""
        code, out, _ = run(
            capsys,
            "frame",
            "decode",
            'D3440015"NULL"0000L0#008312[]',
            "--now",
            "2024-01-01T00:00:00Z",
        )
        assert (code, out["timestamp_ok"]) == (0, None)

    def test_local_time_zone(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--local-time-zone reads the timestamp as the panel's local time (Trikdis, pysiaalarm#52)."""
        frame = 'A6CC003B"SIA-DCS"1662L0#0000[#0000|Nri0/RP0000]_12:40:52,12-22-2021'
        now = "2021-12-22T11:41:00Z"  # Berlin is UTC+1 in December
        code, out, _ = run(capsys, "frame", "decode", frame, "--now", now)
        assert (code, out["timestamp_ok"]) == (1, False)
        code, out, _ = run(
            capsys, "frame", "decode", frame, "--now", now, "--local-time-zone", "Europe/Berlin"
        )
        assert (code, out["timestamp_ok"]) == (0, True)


class TestOptions:
    """Bad options: one clear line on stderr, exit 2, no traceback."""

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["frame", "decode", "x", "--key-hex", "zz"], "bad key"),
            (["frame", "decode", "x", "--key-hex", "00" * 15], "32, 48 or 64"),
            (["frame", "decode", "x", "--key-ascii", "short"], "16, 24 or 32"),
            (
                ["frame", "decode", "x", "--key-hex", "00" * 16, "--key-ascii", "A" * 16],
                "not both",
            ),
            (["frame", "decode", "x", "--now", "yesterday"], "--now"),
            (["frame", "decode", "x", "--local-time-zone", "Mars/Olympus"], "time zone"),
            # A directory of the zone database (IsADirectoryError), not a database error.
            (
                ["frame", "decode", "x", "--local-time-zone", "America"],
                "--local-time-zone: unknown time zone 'America'",
            ),
            (["frame", "decode", "caf\u0100"], "Windows-1252"),
            # Times datetime cannot hold once in UTC or with the window around them.
            (
                [
                    "frame",
                    "encode",
                    "--account",
                    "1234",
                    "--timestamp",
                    "0001-01-01T00:00:00+05:00",
                ],
                "--timestamp: '0001-01-01T00:00:00+05:00' is out of range in UTC",
            ),
            (["frame", "decode", "x", "--now", "0001-01-01T00:00:10Z"], "--now: the window"),
            (["frame", "decode", "x", "--now", "9999-12-31T23:59:59Z"], "--now: the window"),
            (["frame", "encode", "--account", "1234", "--seq", "1"], "seq"),
            (["frame", "encode", "--account", "1234", "--key-ascii", "A" * 16], "timestamp"),
            (["frame", "encode", "--account", "1234", "--now", "soon"], "--now"),
            (
                [
                    "frame",
                    "encode",
                    "--account",
                    "1234",
                    "--now",
                    "--timestamp",
                    "2024-01-01T00:00Z",
                ],
                "not both",
            ),
        ],
    )
    def test_bad_option(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
    ) -> None:
        """The message names the problem."""
        code, out, err = run(capsys, *argv)
        assert code == 2
        assert out == ""
        assert message in err
        assert err.count("\n") == 1
        assert "Traceback" not in err

    @pytest.mark.parametrize("option", ["--past", "--future"])
    @pytest.mark.parametrize("value", ["99999999999999", "-1", "soon"])
    def test_window_out_of_range(
        self, capsys: pytest.CaptureFixture[str], option: str, value: str
    ) -> None:
        """A window beyond ten years (datetime overflowed), negative or not a number is a usage
        error naming the option."""
        frame = 'A6CC003B"SIA-DCS"1662L0#0000[#0000|Nri0/RP0000]_12:40:52,12-22-2021'
        with pytest.raises(SystemExit) as exit_info:
            main(["frame", "decode", frame, "--now", "2026-01-01T00:00:00Z", option, value])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.splitlines()[-1].startswith(
            f"alarmrelay frame decode: error: argument {option}: "
        )
        assert "Traceback" not in captured.err

    def test_window_of_ten_years_accepted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The widest window still decodes (the capture from years ago is inside it)."""
        frame = 'A6CC003B"SIA-DCS"1662L0#0000[#0000|Nri0/RP0000]_12:40:52,12-22-2021'
        now = "2026-01-01T00:00:00Z"
        code, out, _ = run(capsys, "frame", "decode", frame, "--now", now, "--past", "316224000")
        assert (code, out["timestamp_ok"]) == (0, True)


class TestEncode:
    """``frame encode`` builds frames ``frame decode`` and the vectors agree with."""

    def test_reproduces_a_vector(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Encoding the fields of vector 15 (dc09_spt generated) gives the same frame."""
        code, out, _ = run(
            capsys, "frame", "encode", "--token", "ADM-CID", "--seq", "0003", "--receiver", "1",
            "--line", "1", "--account", "1234", "--data", "#1234|1130 01 001",
        )  # fmt: skip
        assert code == 0
        assert out == 'E5690029"ADM-CID"0003R1L1#1234[#1234|1130 01 001]'

    def test_timestamp_options(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--timestamp and --now ISO write that time (vector 17); a bare --now writes UTC now."""
        for option in ("--timestamp", "--now"):
            _, out, _ = run(
                capsys, "frame", "encode", "--token", "NULL", "--account", "1409", "--seq", "0000",
                option, "2026-08-27T22:38:07+02:00",
            )  # fmt: skip
            assert out == 'EA740027"NULL"0000L0#1409[]_20:38:07,08-27-2026'
        before = datetime.now(UTC).replace(microsecond=0)
        _, out, _ = run(capsys, "frame", "encode", "--token", "NULL", "--account", "1", "--now")
        code, decoded, _ = run(capsys, "frame", "decode", out, "--now", before.isoformat())
        assert (code, decoded["timestamp_ok"]) == (0, True)

    @pytest.mark.parametrize(
        "key_option", [("--key-ascii", "1234567890123456"), ("--key-hex", "00" * 32)]
    )
    def test_encrypted_round_trip(
        self, capsys: pytest.CaptureFixture[str], key_option: tuple[str, str]
    ) -> None:
        """An encrypted frame with R and x-data decodes with the same key, fields intact."""
        code, out, _ = run(
            capsys, "frame", "encode", "--token", "SIA-DCS", "--account", "1234", "--receiver", "2A",
            "--data", "#1234|Nri1/BA01", *key_option, "--timestamp", "2024-01-01T12:00:00Z",
            "--xdata", "M0026B9E4268B", "--xdata", "RKitchen",
        )  # fmt: skip
        assert code == 0
        assert out[8:18] == '"*SIA-DCS"'
        code, dec, _ = run(capsys, "frame", "decode", out, *key_option)
        assert code == 0
        assert (dec["encrypted"], dec["receiver"], dec["line"], dec["account"]) == (
            True, "2A", "0", "1234",
        )  # fmt: skip
        assert dec["xdata"] == [
            {"id": "M", "value": "0026B9E4268B"},
            {"id": "R", "value": "Kitchen"},
        ]
        assert dec["timestamp"] == "2024-01-01T12:00:00+00:00"
        assert event_tuples(dec) == [("sia", "BA", None, 1, 1, None, "alarms")]

    def test_raw_output(self, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
        """--raw writes the frame bytes with LF and CR."""
        code = main(["frame", "encode", "--token", "NULL", "--account", "1234", "--seq", "0002",
                     "--line", "0", "--raw"])  # fmt: skip
        assert code == 0
        raw = capsysbinary.readouterr().out
        assert raw[:1] == b"\n"
        assert raw[-1:] == b"\r"
        assert crc16_arc(raw[9:-1]) == int(raw[1:5], 16)
        assert raw[5:9] == f"{len(raw) - 10:04X}".encode()

    def test_escape_round_trip(self) -> None:
        """escape() and unescape() are inverse for bytes a frame can hold."""
        raw = b'\n\x12\x340016"NULL"0000L0#1[]\\\x00\x80\r'
        assert unescape(escape(raw)) == raw[1:-1]
        assert unescape("caf\u00e9\u20ac") == b"caf\xe9\x80"  # Windows-1252


class TestEncodeText:
    def test_a_character_outside_windows_1252_is_named(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Text DC-09 cannot carry (an emoji, a byte the shell passed that is not UTF-8) was
        "'charmap' codec can't encode character '\\udcff' in position 21: …": now the error
        says what is wrong and how to write it, as frame decode does."""
        for data, xdata in (
            ("\U0001f600", "M1"),
            ("\udcff", "M1"),
            ("#1234|Nri1/BA01", "M\U0001f600"),
        ):
            code, _, err = run(
                capsys, "frame", "encode", "--account", "1234", "--data", data, "--xdata", xdata
            )
            assert code == 2
            assert err.startswith("alarmrelay: error: --data/--xdata: characters outside "), err
            assert "codec" not in err and len(err.splitlines()) == 1
        code, _, _ = run(capsys, "frame", "encode", "--account", "1234", "--data", "€ä")
        assert code == 0
