"""Errors no command foresaw are still one line, never a traceback (real processes and a real
PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from engine.account_model import Account
from engine.cli import describe_failure
from engine.store.accounts import AccountStore

ROOT = Path(__file__).resolve().parents[2]


def run(
    database_url: str | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m engine <args>`` on ``database_url`` (None: the config file's) and ``env``,
    without our variables."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ALARMRELAY_")},
        **(env or {}),
    }
    if database_url is not None:
        env["ALARMRELAY_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _export_read_100_bytes(database_url: str) -> tuple[int, str]:
    """``alarmrelay accounts export`` whose reader stops after 100 bytes: (exit status, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALARMRELAY_")}
    env["ALARMRELAY_DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "accounts", "export"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()  # the reader is gone
    returncode = proc.wait(timeout=60)
    return returncode, proc.stderr.read().decode()


class TestOneLineErrors:
    def test_a_url_the_driver_cannot_parse(self) -> None:
        done = run("postgresql://postgres:secret@127.0.0.1:54x32/db", "migrate")
        assert done.returncode == 2
        assert done.stderr.strip() == (  # refused when the settings load, before the driver
            "alarmrelay: error: environment variable ALARMRELAY_DATABASE_URL: database.url has a "
            "port that is not 0-65535, e.g. postgresql://alarmrelay@db.example:5432/alarmrelay "
            "(or unset: the embedded server)"
        )
        assert "secret" not in done.stderr

    def test_no_password_of_an_unreachable_url(self) -> None:
        """A password in the query string or holding "@" is not printed with the server."""
        for url in (
            "postgresql:///nodb?password=hunter2&port=5999",
            "postgresql://u:hunter2@x@127.0.0.1:5999/db",
        ):
            done = run(url, "state", "1234")
            assert done.returncode == 2, done.stderr
            [line] = done.stderr.strip().splitlines()
            assert line.startswith("alarmrelay: error: cannot reach PostgreSQL at "), line
            assert "hunter2" not in done.stderr

    def test_a_url_that_cannot_be_split(self, tmp_path: Path) -> None:
        """database.url with an unclosed IPv6 bracket in the file: a config error, exit 2."""
        config = tmp_path / "alarmrelay.toml"
        config.write_text('[database]\nurl = "postgresql://u:pw@[::1/db"\n')
        done = run(None, "state", "1234", "--config", str(config))
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"alarmrelay: error: {config}: database.url is not a valid URL")
        assert "pw@" not in line

    async def test_a_value_the_database_refuses(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """A station name with a NUL: one line, exit 2, nothing written. (A receiver timeout
        beyond float32, and an account name with a NUL, the other examples here, are now
        refused before the database, the latter naming its entry: test_accounts_cli.py.)"""
        accounts = tmp_path / "accounts.json"
        accounts.write_text(json.dumps([{"account": "1234", "name": "x\u0000y"}]))
        stations = tmp_path / "stations.json"
        stations.write_text(
            json.dumps(
                [
                    {
                        "name": "s\u0000t",
                        "receivers": [{"name": "r", "host": "127.0.0.1", "port": 9}],
                    }
                ]
            )
        )
        done = run(database_url, "stations", "import", str(stations))
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("alarmrelay: error: the database refused a value: ")
        done = run(database_url, "accounts", "import", str(accounts))
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line == (
            f"alarmrelay: error: {accounts}: entry 0 (account 1234): name: contains a NUL character"
        )
        assert await db_pool.fetchval("SELECT count(*) FROM accounts") == 0
        assert await db_pool.fetchval("SELECT count(*) FROM receivers") == 0

    def test_a_file_error_is_not_a_database_error(self) -> None:
        """An OSError naming a file (IsADirectoryError, PermissionError…) no command foresaw is
        reported as such, never as "lost the connection to PostgreSQL"."""
        error = IsADirectoryError(21, "Is a directory", "/usr/share/zoneinfo/America")
        assert describe_failure(error) == "Is a directory: /usr/share/zoneinfo/America"
        assert describe_failure(ConnectionResetError(104, "Connection reset by peer")).startswith(
            "lost the connection to PostgreSQL"
        )

    async def test_a_reader_that_stops_early_is_not_a_database_error(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """`accounts export | head -c 100`: the reader goes away mid-document. Exit 141, as a
        shell reports SIGPIPE, and no "lost the connection to PostgreSQL" on stderr."""
        await AccountStore(db_pool).upsert_many(
            [Account(account=f"{0x100000 + i:X}", name="x" * 200) for i in range(2000)]
        )
        returncode, stderr = await asyncio.to_thread(_export_read_100_bytes, database_url)
        assert returncode == 141, stderr
        assert "PostgreSQL" not in stderr and "Traceback" not in stderr

    def test_station_sim_port_out_of_range(self) -> None:
        """--port 99999 is a usage error (it used to wrap around to another port)."""
        done = run("postgresql://unused", "station-sim", "--port", "99999")
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1] == (
            "alarmrelay station-sim: error: argument --port: port 99999 is not in 0-65535"
        )
