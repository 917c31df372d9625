"""Libraries' stdlib log records come out like our own events: one JSON line each, tracebacks
inside it (a real process, as ``serve`` configures it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run this Python with ``args`` from the project root (a fresh process: logging unset)."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


SCRIPT = """
import logging
from engine.logging_setup import configure_logging
configure_logging(level="info", fmt="json")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("asyncpg.pool").warning("pool floor not restored", exc_info=True)
logging.getLogger("asyncpg.pool").info("below the floor: not shown")
import structlog
structlog.get_logger("engine").info("own_event", n=1)
"""


def test_stdlib_records_are_json_lines_with_the_traceback_inside() -> None:
    done = _python("-c", SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["event"] for r in records] == ["pool floor not restored", "own_event"]
    library = records[0]
    assert (library["level"], library["logger"]) == ("warning", "asyncpg.pool")
    assert library["exception"].startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError" in library["exception"]


WARNING_SCRIPT = """
import warnings
from engine.logging_setup import configure_logging
configure_logging(level="info", fmt="json")
warnings.warn("this call is going away", DeprecationWarning, stacklevel=1)
"""


def test_python_warnings_are_log_lines_not_bare_stderr() -> None:
    done = _python("-W", "always", "-c", WARNING_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (record["level"], record["logger"]) == ("warning", "py.warnings")
    assert "DeprecationWarning: this call is going away" in record["event"]


APP_SCRIPT = """
import logging
from engine.logging_setup import configure_logging
configure_logging(level="info", fmt="json")
from engine.api.app import create_app
from engine.http_server import build_app

async def readiness():
    return {}

build_app(readiness, api_factory=lambda handlers: create_app(pool=None, extra_route_handlers=handlers))
build_app(readiness)
logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection floor")
"""


def test_the_http_apps_leave_logging_as_configured() -> None:
    """Litestar's default logging config would take over the root logger (plain lines)."""
    done = _python("-c", APP_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (record["logger"], record["event"]) == (
        "asyncpg.pool",
        "Failed to restore the pool connection floor",
    )


ODD_VALUES_SCRIPT = """
from pathlib import Path
import structlog
from engine.logging_setup import configure_logging
configure_logging(level="info", fmt="json")
structlog.get_logger("engine").warning("odd_values", path=Path("/srv/ar"), error=ValueError("boom"))
print("the caller went on")
"""


def test_a_value_json_has_no_type_for_is_logged_as_text() -> None:
    """A value msgspec cannot encode (a Path, an exception object) raised TypeError out of the
    log call, into the code that logged (a failure path that only wanted to say so)."""
    done = _python("-c", ODD_VALUES_SCRIPT)
    assert done.returncode == 0, done.stderr
    record, after = done.stdout.splitlines()
    assert (json.loads(record)["path"], json.loads(record)["error"]) == ("/srv/ar", "boom")
    assert after == "the caller went on"


CONSOLE_SCRIPT = """
import logging
import structlog
from engine.logging_setup import configure_logging
configure_logging(level="info", fmt="console")
structlog.get_logger("engine").warning("own_event", n=1)
logging.getLogger("asyncpg.pool").warning("library_event")
"""


def test_console_lines_to_a_file_or_pipe_have_no_colour_codes() -> None:
    """``logging.format = "console"`` under a service manager, or ``2> file``: the lines carried
    terminal colour codes (ESC[...m) that made them hard to read and to grep."""
    done = _python("-c", CONSOLE_SCRIPT)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2
    assert "own_event" in lines[0] and "library_event" in lines[1]
    assert "\x1b[" not in done.stderr


READER_GONE_SCRIPT = """
import logging, sys, time
import structlog
from engine.logging_setup import configure_logging
configure_logging(level="info", fmt="json")
time.sleep(0.5)  # the reader of stdout is gone by now
structlog.get_logger("engine").info("frame_rejected", reply="duh")
logging.getLogger("asyncpg.pool").warning("library_event")
sys.stderr.write("the caller went on\\n")
"""


def test_a_log_line_nobody_reads_is_dropped_not_raised() -> None:
    """``serve | tee log`` with tee gone, a log shipper that died: each log call raised
    BrokenPipeError into the engine, so a frame whose rejection is logged got no reply at all
    (no DUH, no NAK with our time for a module whose clock is off), its connection closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", READER_GONE_SCRIPT],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert "the caller went on" in err, err
    assert "Traceback" not in err.split("the caller went on")[0], err


QUEUED_SCRIPT = """
import logging, sys
import structlog
from engine.logging_setup import queued_logging
with queued_logging(level="info", fmt=sys.argv[1]):
    log = structlog.get_logger("engine")
    for n in range(2000):
        log.info("own_event", n=n)
        if n % 500 == 0:
            logging.getLogger("asyncpg.pool").warning("library_event %d", n)
    structlog.get_logger("engine").debug("below the level: not shown")
"""


class TestQueuedLogging:
    """``serve``'s lines go through the writer thread; what people and shippers see is the same."""

    def test_json_lines_in_order_all_written_at_exit(self) -> None:
        """Our events and the libraries' records, in the order logged, every one written when
        the block is left (the process ends right after)."""
        done = _python("-c", QUEUED_SCRIPT, "json")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(records) == 2004
        assert [r.get("n") for r in records if r["event"] == "own_event"] == list(range(2000))
        library = [i for i, r in enumerate(records) if r.get("logger") == "asyncpg.pool"]
        assert [records[i]["event"] for i in library] == [
            f"library_event {n}" for n in (0, 500, 1000, 1500)
        ]
        assert [records[i + 1]["n"] for i in library] == [1, 501, 1001, 1501]

    def test_console_lines_on_stderr(self) -> None:
        done = _python("-c", QUEUED_SCRIPT, "console")
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        lines = done.stderr.splitlines()
        assert len(lines) == 2004
        assert "own_event" in lines[0] and "library_event 0" in lines[1]
        assert "n=1999" in lines[-1]
        assert "\x1b[" not in done.stderr

    def test_a_reader_gone_drops_lines_quietly(self) -> None:
        """The existing rule holds with the writer thread: an unwritable line is dropped, no
        traceback, the process goes on and ends normally."""
        script = (
            "import time; time.sleep(0.5)\n" + QUEUED_SCRIPT + "\nprint('end', file=sys.stderr)"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script, "json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        proc.stdout.close()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert err == "end\n"
