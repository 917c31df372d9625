"""``alarmrelay demo`` runs the whole path and stops by itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

pytestmark = pytest.mark.slow


class TestDemo:
    async def test_demo_delivers_and_stops(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """The demo provisions, sends, forwards and delivers, then exits 0 after --duration."""
        config = tmp_path / "demo.toml"
        config.write_text(
            f'data_dir = "{tmp_path}"\n[database]\nurl = "{database_url}"\n', encoding="utf-8"
        )
        proc = subprocess.run(  # noqa: ASYNC221 - the demo is a whole process under test
            [
                sys.executable,
                "-m",
                "engine",
                "demo",
                "--config",
                str(config),
                "--duration",
                "5",
                "--modules",
                "3",
            ],
            capture_output=True,
            timeout=90,
            check=False,
        )
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode()
        assert "delivered to the station" in out
        assert (
            await db_pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'delivered'") > 0
        )
        assert await db_pool.fetchval("SELECT count(*) FROM accounts WHERE virtual") == 3

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (["--modules", "0"], "argument --modules: must be 1 to 1000 simulated modules, got '0'"),
            (["--modules", "-2"], "argument --modules: must be 1 to 1000 simulated modules, got '-2'"),
            (["--duration", "-5"], "argument --duration: must be a number of seconds above 0, got '-5'"),
            (["--duration", "nan"], "argument --duration: must be a number of seconds above 0, got 'nan'"),
        ],
    )  # fmt: skip
    def test_a_count_or_duration_that_makes_no_demo_is_a_usage_error(
        self, args: list[str], problem: str
    ) -> None:
        """``--modules 0`` (or -2) ran a demo of nothing until Ctrl-C; ``--duration -5`` or nan
        started everything to stop it at once. Usage errors, before anything starts."""
        proc = subprocess.run(
            [sys.executable, "-m", "engine", "demo", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1] == f"alarmrelay demo: error: {problem}"


class TestSummaryEventText:
    def test_an_event_without_a_zone_names_none(self) -> None:
        """The summary's last-frames table printed "cid 1401 zone None" for an opening by a
        user (no zone); it names a zone only when the event has one."""
        from engine.commands.demo import _event_text
        from protocols.categories import classify
        from protocols.signal import Event

        opening = Event(
            family="cid",
            code="401",
            qualifier="1",
            user=3,
            classification=classify("cid", "401", "1"),
        )
        assert _event_text(opening) == "cid 1401"
        alarm = Event(
            family="cid",
            code="130",
            qualifier="1",
            zone=4,
            classification=classify("cid", "130", "1"),
        )
        assert _event_text(alarm) == "cid 1130 zone 4"
