"""The log writer thread: lines in order, a full queue drops (counted, then said) and never
blocks, a stuck reader cannot hold ``close`` for ever (a real pipe)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from engine.log_writer import LogWriter


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("alarmrelay_log_lines_dropped_total", {"reason": reason}) or 0


def _notice(dropped: int) -> bytes:
    return f"dropped {dropped}\n".encode()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    for fd in (read, write):
        with contextlib.suppress(OSError):
            os.close(fd)


def _fill(fd: int) -> int:
    """Fill the pipe so that the next write blocks; the bytes written."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += os.write(fd, b"x" * 4096)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return filled


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


class TestLogWriter:
    def test_lines_are_written_in_order(self, pipe: tuple[int, int]) -> None:
        """Every line put is written once, in the order put, by the time ``close`` returns."""
        read, write = pipe
        writer = LogWriter(write, notice=_notice)
        lines = [f"line {n}\n".encode() for n in range(5_000)]
        reader = threading.Thread(target=lambda: out.append(_read_all(read)))
        out: list[bytes] = []
        reader.start()
        for line in lines:
            writer.put(line)
        writer.close(5)
        os.close(write)
        reader.join(5)
        assert out == [b"".join(lines)]

    def test_a_full_queue_drops_counts_and_says_so(self, pipe: tuple[int, int]) -> None:
        """With the reader stalled, ``put`` returns at once and drops what the queue cannot hold;
        the drops are counted, and a notice stands where they are missing once there is room."""
        read, write = pipe
        filled = _fill(write)
        before = _dropped("queue_full")
        writer = LogWriter(write, notice=_notice, max_lines=5)
        started = time.monotonic()
        for n in range(50):
            writer.put(f"line {n}\n".encode())
        assert time.monotonic() - started < 5  # before: the first write blocked until read
        dropped = _dropped("queue_full") - before
        assert dropped >= 30  # at most 5 queued and a batch the thread took before it blocked
        assert len(os.read(read, filled)) > 0  # the reader is back
        reader = threading.Thread(target=lambda: out.append(_read_all(read)))
        out: list[bytes] = []
        reader.start()
        writer.close(5)
        os.close(write)
        reader.join(5)
        assert _dropped("queue_full") - before == dropped
        text = out[0].decode().lstrip("x").splitlines()
        notices = [line for line in text if line.startswith("dropped ")]
        assert sum(int(line.split()[1]) for line in notices) == dropped
        written = [int(line.split()[1]) for line in text if line.startswith("line ")]
        assert written == list(range(len(written)))  # in order; the drops are the last ones
        assert len(written) + dropped == 50
        assert text[-1] == notices[-1]  # the gap is said where it is

    def test_a_stuck_reader_does_not_hold_close(self, pipe: tuple[int, int]) -> None:
        """``close`` waits the time it is given, not for ever, and a line put after it (the
        writer still stuck) is dropped and counted, not blocking either."""
        read, write = pipe
        _fill(write)
        writer = LogWriter(write, notice=_notice)
        writer.put(b"stuck\n")
        started = time.monotonic()
        writer.close(0.5)
        assert time.monotonic() - started < 5
        before = _dropped("queue_full")
        writer.put(b"late\n")
        assert _dropped("queue_full") - before == 1
        data = b""
        while not data.endswith(b"stuck\n"):  # the stuck line goes out once read: nothing left
            data += os.read(read, 65536)

    def test_an_unwritable_stream_drops_lines_quietly(self, pipe: tuple[int, int]) -> None:
        """The reader gone (EPIPE): the lines are counted as unwritable, nothing raises, and the
        writer goes on to close normally."""
        read, write = pipe
        os.close(read)
        before = _dropped("unwritable")
        writer = LogWriter(write, notice=_notice)
        for n in range(3):
            writer.put(f"line {n}\n".encode())
        writer.close(5)
        assert _dropped("unwritable") - before == 3
