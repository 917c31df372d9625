"""``alarmrelay frame decode`` / ``frame encode`` run in-process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.cli import main
from engine.commands.frame import escape, unescape
from tests.vectors import encrypted_vectors, frame_vectors


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    out = json.loads(captured.out) if captured.out.strip().startswith("{") else captured.out
    return code, out, captured.err


class TestDecode:
    @pytest.mark.parametrize("vector", frame_vectors(), ids=lambda v: v["frame"][:24])
    def test_public_vectors(
        self, capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
    ) -> None:
        """Every public vector prints the expected fields; event frames exit 0."""
        code, out, _ = run(capsys, "frame", "decode", vector["frame"])
        for field in ("crc_ok", "length_ok", "id", "seq", "receiver", "line", "account"):
            assert out[field] == vector[field], field
        assert out["timestamp_ok"] is None
        assert code == 0
        assert out["error"] is None

    @pytest.mark.parametrize("vector", encrypted_vectors(), ids=lambda v: v["frame"][:24])
    def test_encrypted_vectors(
        self, capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
    ) -> None:
        """Encrypted vectors decode with --key-hex."""
        code, out, _ = run(
            capsys, "frame", "decode", vector["frame"], "--key-hex", vector["key_hex"]
        )
        assert code == 0
        assert out["encrypted"] is True
        assert out["error"] is None

    def test_bad_crc(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A wrong CRC exits 1 and says there is no reply."""
        code, out, _ = run(
            capsys,
            "frame",
            "decode",
            'ADFF0040"SIA-DCS"0049L0#AFFE[#AFFE|Nri1CL0001^user^]_14:06:21,05-17-2026',
        )
        assert code == 1
        assert out["crc_ok"] is False
        assert "no reply" in out["error"]

    def test_events_and_window(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Events carry their category and flags; --now checks the window."""
        frame = 'A6CC003B"SIA-DCS"1662L0#0000[#0000|Nri0/RP0000]_12:40:52,12-22-2021'
        code, out, _ = run(capsys, "frame", "decode", frame, "--now", "2021-12-22T12:41:00Z")
        assert code == 0
        assert out["timestamp_ok"] is True
        assert out["events"][0]["code"] == "RP"
        assert out["events"][0]["category"] == "phone_tests"
        code, out, _ = run(capsys, "frame", "decode", frame, "--now", "2021-12-22T13:41:00Z")
        assert code == 1
        assert out["timestamp_ok"] is False

    def test_escapes_for_quirks(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A binary CRC typed as \\x escapes decodes."""
        code, out, _ = run(
            capsys,
            "frame",
            "encode",
            "--token",
            "ADM-CID",
            "--account",
            "1234",
            "--data",
            "#1234|1130 01 001",
        )
        text = out.strip()
        crc = int(text[:4], 16)
        binary = f"\\x{crc >> 8:02X}\\x{crc & 0xFF:02X}" + text[4:]
        code, out, _ = run(capsys, "frame", "decode", binary)
        assert code == 0
        assert out["events"][0]["code"] == "130"

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["frame", "decode", "x", "--key-hex", "zz"], "bad key"),
            (["frame", "decode", "x", "--now", "yesterday"], "--now"),
            (["frame", "encode", "--account", "1234", "--seq", "1"], "seq"),
            (
                ["frame", "encode", "--account", "1234", "--key-ascii", "1234567890123456"],
                "timestamp",
            ),
        ],
    )
    def test_bad_options(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
    ) -> None:
        """Bad options are one clear line on stderr, exit 2, no traceback."""
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert message in err
        assert "Traceback" not in err


class TestEncode:
    def test_encrypted_round_trip(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An encoded encrypted frame decodes with the same key."""
        code, out, _ = run(
            capsys, "frame", "encode", "--token", "SIA-DCS", "--account", "1234", "--data", "#1234|Nri1/BA01",
            "--key-ascii", "1234567890123456", "--timestamp", "2024-01-01T12:00:00Z", "--xdata", "M0026B9E4268B",
        )  # fmt: skip
        assert code == 0
        code, out, _ = run(
            capsys, "frame", "decode", out.strip(), "--key-ascii", "1234567890123456"
        )
        assert code == 0
        assert out["xdata"] == [{"id": "M", "value": "0026B9E4268B"}]
        assert out["events"][0]["code"] == "BA"

    def test_escape_round_trip(self) -> None:
        """escape() and unescape() are inverse for bytes a frame can hold."""
        raw = b'\n\x12\x340016"NULL"0000L0#1[]\r'
        assert unescape(escape(raw)) == raw[1:-1]
