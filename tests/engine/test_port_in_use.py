"""A port the engine cannot bind is one clear error, at once, with everything it had started
stopped again (real PostgreSQL; the ports held by the test)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from engine.errors import UserFacingError
from engine.service import Engine
from engine.settings import Dc09Settings, HttpSettings
from tests.engine.test_cli_errors import run
from tests.engine.test_ingest_e2e import settings_for


@pytest.fixture
def held_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that something else is listening on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


class TestPortInUse:
    async def test_dc09_port_in_use(
        self, db_pool: asyncpg.Pool, database_url: str, held_port: int
    ) -> None:
        settings = msgspec.structs.replace(
            settings_for(database_url), dc09=Dc09Settings(port=held_port)
        )
        engine = Engine(settings)
        with pytest.raises(UserFacingError) as info:
            await asyncio.wait_for(engine.run(), 30)
        assert str(info.value).startswith(f"cannot listen for DC-09 TCP on 127.0.0.1:{held_port}:")
        # Everything it had started is stopped (before, the timers, the dispatcher and the
        # listeners kept running and held the pool, whose close then waited 10 s).
        left = [t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == []

    async def test_http_port_in_use(
        self, db_pool: asyncpg.Pool, database_url: str, held_port: int
    ) -> None:
        settings = msgspec.structs.replace(
            settings_for(database_url), http=HttpSettings(port=held_port)
        )
        engine = Engine(settings)
        with pytest.raises(UserFacingError) as info:
            await asyncio.wait_for(engine.run(), 30)
        assert str(info.value).startswith(f"cannot listen for HTTP on 127.0.0.1:{held_port}:")
        assert engine.dc09 is not None and not engine.dc09.listening  # stopped again

    def test_serve_says_so_in_one_line(
        self, database_url: str, held_port: int, tmp_path: Path
    ) -> None:
        """``alarmrelay serve`` with its HTTP port taken: one error line, exit status 2."""
        env = {
            "ALARMRELAY_HTTP__PORT": str(held_port),
            "ALARMRELAY_DC09__PORT": "0",
            "ALARMRELAY_MQTT__ENABLED": "false",
            "ALARMRELAY_DATA_DIR": str(tmp_path),
        }
        done = run(database_url, "serve", env=env)
        assert done.returncode == 2, done.stderr
        assert (
            done.stderr.strip()
            .splitlines()[-1]
            .startswith(f"alarmrelay: error: cannot listen for HTTP on 127.0.0.1:{held_port}:")
        )
        assert "Traceback" not in done.stderr
        # What it logged on the way down is written before it exits (serve's lines go through
        # a writer thread, flushed however serve ends).
        assert '"event":"engine_stopping"' in done.stdout
