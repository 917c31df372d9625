"""``alarmrelay serve`` whose stdout nobody reads (a log shipper behind or stalled) goes on
answering modules; its lines are written in order and flushed at exit (a real process)."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from protocols.dc09_frame import decode_frame, encode_frame
from tests.support.engine_process import EngineProcess, write_config

pytestmark = pytest.mark.slow

# Each frame from an unknown account is answered DUH and logged (frame_rejected, about 230
# bytes): a few hundred fill the pipe (64 KiB) and the reader's buffer.
_ENV = {"ALARMRELAY_DC09__RATE_LIMIT_PER_S": "1000000", "ALARMRELAY_LOGGING__LEVEL": "debug"}


def _engine(tmp_path: Path, database_url: str) -> EngineProcess:
    config = write_config(
        tmp_path / "engine.toml",
        database_url=database_url,
        data_dir=tmp_path / "var",
        extra="[mqtt]\nenabled = false\n",
    )
    return EngineProcess(config, env=_ENV)


def _send_unknown(port: int, count: int) -> list[str]:
    """``count`` frames from an account the engine does not know, 100 at a time; the reply
    tokens. Fails when a reply takes more than 5 s (before: the engine never answered again)."""
    tokens: list[str] = []
    rest = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for start in range(0, count, 100):
            frames = [
                encode_frame(
                    token="ADM-CID",
                    seq=f"{n % 9999 + 1:04d}",
                    account="FFF1",
                    data="#FFF1|1130 01 001",
                )
                for n in range(start, min(start + 100, count))
            ]
            sock.sendall(b"".join(frames))
            wanted = len(tokens) + len(frames)
            while len(tokens) < wanted:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    pytest.fail(f"no reply within 5 s after {len(tokens)} replies")
                assert chunk, f"connection closed after {len(tokens)} replies"
                *replies, rest = (rest + chunk).split(b"\r")
                tokens += [decode_frame(reply + b"\r").token for reply in replies]
    return tokens


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


def _dropped(http_port: int) -> float:
    found = re.search(
        r'^alarmrelay_log_lines_dropped_total\{reason="queue_full"\} (\S+)$',
        _get(http_port, "/metrics"),
        re.MULTILINE,
    )
    assert found is not None
    return float(found.group(1))


class TestStdoutNobodyReads:
    def test_the_engine_answers_and_drops_lines(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """A stalled reader of stdout stopped the whole engine: the first write to the full pipe
        blocked the event loop, so no frame was answered, /healthz hung and SIGTERM was never
        handled. Now the frames are answered, the lines beyond the queue dropped and counted,
        a log_lines_dropped line says so once the reader is back, and SIGTERM ends it."""
        engine = _engine(tmp_path, database_url)
        engine.start()
        try:
            engine.pause_reading()
            # 12,000 lines: the pipe, the reader's buffer and the 10,000-line queue, and more.
            assert set(_send_unknown(engine.dc09_port, 12_000)) == {"DUH"}
            assert _get(engine.http_port, "/healthz")
            dropped = _dropped(engine.http_port)
            assert dropped > 0
            engine.resume_reading()
            notice = engine.wait_for_event("log_lines_dropped", timeout=30)
            assert notice["level"] == "warning"
            notices = engine.events("log_lines_dropped")
            assert sum(n["dropped"] for n in notices) == _dropped(engine.http_port)
            # The engine's other lines (none is expected here) would be dropped as well.
            rejected = len(engine.events("frame_rejected"))
            assert rejected < 12_000 <= rejected + dropped
            # A stdout that stays stalled does not hold the exit: the queued lines get 5 s.
            engine.pause_reading()
            _send_unknown(engine.dc09_port, 3_000)
            assert engine.terminate(timeout=60) == 0
        finally:
            engine.resume_reading()
            engine.kill9()

    def test_queued_lines_are_written_at_sigterm(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """Lines still queued when SIGTERM comes are written, in order, before the engine exits
        (the reader catching up within the 5 s the exit waits)."""
        engine = _engine(tmp_path, database_url)
        engine.start()
        try:
            engine.pause_reading()
            _send_unknown(engine.dc09_port, 3_000)
            assert engine.proc is not None
            engine.proc.terminate()
            # The reader comes back while the exit waits for the queue (5 s): by then the
            # engine has stopped, and without that wait its queued lines would be lost.
            time.sleep(1)
            engine.resume_reading()
            assert engine.proc.wait(60) == 0
        finally:
            engine.kill9()
        engine.wait_for_event("engine_stopped", timeout=10)
        events = [line["event"] for line in engine.lines]
        assert events.count("frame_rejected") == 3_000
        assert "log_lines_dropped" not in events
        assert events[-1] == "engine_stopped"
        seqs = [line["seq"] for line in engine.lines if line["event"] == "frame_rejected"]
        assert seqs == [f"{n % 9999 + 1:04d}" for n in range(3_000)]
