"""``alarmrelay serve`` stops in order on the signals a terminal or service manager sends."""

from __future__ import annotations

import signal
from pathlib import Path

import asyncpg
import pytest

from tests.support.engine_process import EngineProcess, write_config


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_serve_stops_in_order(
    db_pool: asyncpg.Pool, database_url: str, tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGHUP (the ssh session or terminal that ran it closed) killed the engine at once, with
    in-flight commits and ACKs cut off and no engine_stopped; it now stops as SIGTERM does."""
    config = write_config(tmp_path / "engine.toml", database_url=database_url, data_dir=tmp_path)
    engine = EngineProcess(config)
    engine.start()
    assert engine.proc is not None
    engine.proc.send_signal(stop)
    assert engine.proc.wait(30) == 0
    assert engine.wait_for_event("engine_stopped", timeout=5)
