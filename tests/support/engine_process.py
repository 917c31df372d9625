"""Run ``alarmrelay serve`` as a real child process (for kill -9 and multi-process tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def write_config(path: Path, *, database_url: str, data_dir: Path, extra: str = "") -> Path:
    """A config file for a test engine: loopback, ephemeral ports, the test database."""
    path.write_text(
        f"""
data_dir = "{data_dir}"

[database]
url = "{database_url}"

[dc09]
host = "127.0.0.1"
port = 0

[http]
host = "127.0.0.1"
port = 0

[logging]
level = "info"
format = "json"
{extra}
""",
        encoding="utf-8",
    )
    return path


class EngineProcess:
    """One engine child process; ``start`` waits for its ``engine_ready`` log line."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw_lines: list[str] = []
        self.ready: dict[str, Any] | None = None
        self._ready_event = threading.Event()
        self._reading = threading.Event()
        self._reading.set()

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready_event.wait(timeout):
            self.kill9()
            raise RuntimeError("engine did not become ready:\n" + "\n".join(self.raw_lines[-40:]))
        assert self.ready is not None
        return self.ready

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._reading.wait()
            line = raw.decode("utf-8", "replace").rstrip()
            self.raw_lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.lines.append(record)
                if record.get("event") == "engine_ready":
                    self.ready = record
                    self._ready_event.set()
        self._ready_event.set()

    def pause_reading(self) -> None:
        """Stop reading the engine's output (a log shipper that stalled): once the pipe and our
        read buffer are full, the engine's writes to stdout block."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    @property
    def dc09_port(self) -> int:
        assert self.ready is not None
        return int(self.ready["dc09_port"])

    @property
    def http_port(self) -> int:
        assert self.ready is not None
        return int(self.ready["http_port"])

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def wait_for_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} log line within {timeout}s")
