"""Log lines written by a thread of their own, so a slow reader of stdout never stalls the engine.

A write to a pipe blocks while the pipe is full: a log shipper behind, ``serve | slow-consumer``,
a full journald pipe. Written on the event loop, that one blocked ``write`` stopped everything:
no frames read, no ACKs, no alarms forwarded. Here the caller only appends the line to a bounded
queue; a full queue drops the line and counts it, never waits. When there is room again, a
``log_lines_dropped`` line says how many are missing, where they are missing.

The thread writes with ``os.write`` on the file descriptor, not through ``sys.stdout``: a daemon
thread blocked inside a buffered stream's lock made the interpreter abort at exit ("could not
acquire lock ... at interpreter shutdown").
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Final

from engine import metrics

QUEUE_LINES: Final = 10_000  # about 3 MB of JSON lines: a burst of several seconds at full load
_BATCH_LINES: Final = 1_000  # lines joined into one write
_STOP: Final = b""  # the stop marker; a line is never empty (it ends with a newline)


class LogWriter:
    """A bounded queue of lines (bytes, newline included) and the thread that writes them to
    ``fd`` in order. ``put`` never blocks; ``close`` writes what is queued, waiting at most
    ``timeout`` seconds (a stdout nobody reads cannot hold the exit forever)."""

    def __init__(
        self, fd: int, *, notice: Callable[[int], bytes], max_lines: int = QUEUE_LINES
    ) -> None:
        self._fd = fd
        self._notice = notice
        self._max_lines = max_lines
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        # Guards the queue's admission, the dropped count and closing: a line is queued before
        # the stop marker or not at all, and a notice sits exactly where lines are missing.
        self._lock = threading.Lock()
        self._dropped = 0
        self._closed = False
        self._drained = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, line: bytes) -> None:
        """Queue ``line`` to be written; drop and count it when the queue is full."""
        with self._lock:
            if self._closed:
                self._after_close(line)
            elif self._queue.qsize() + (1 if self._dropped else 0) >= self._max_lines:
                self._dropped += 1
                metrics.LOG_LINES_DROPPED.labels("queue_full").inc()
            else:
                if self._dropped:
                    self._queue.put(self._notice(self._dropped))
                    self._dropped = 0
                self._queue.put(line)

    def close(self, timeout: float) -> None:
        """Write every queued line (and a last notice of dropped ones), waiting at most
        ``timeout`` seconds. Lines put afterwards are written at once if the writer finished,
        dropped (and counted) if it is still stuck."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._dropped:
                self._queue.put(self._notice(self._dropped))
                self._dropped = 0
            self._queue.put(_STOP)
        self._thread.join(timeout)
        with self._lock:
            self._drained = not self._thread.is_alive()

    def _after_close(self, line: bytes) -> None:
        if self._drained:
            self._write([line])
        else:
            metrics.LOG_LINES_DROPPED.labels("queue_full").inc()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while batch[-1] != _STOP and len(batch) < _BATCH_LINES:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] == _STOP
            self._write(batch[:-1] if stop else batch)
            if stop:
                return
            with self._lock:
                # Caught up with lines dropped since the last one was queued: say so now, not
                # with the next line, which may come much later.
                if self._dropped and self._queue.empty():
                    self._dropped, dropped = 0, self._dropped
                    self._queue.put(self._notice(dropped))

    def _write(self, lines: list[bytes]) -> None:
        data = memoryview(b"".join(lines))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            # The reader is gone (EPIPE), the descriptor closed, the disk full: the lines are
            # lost. Raising would end the writer and, with it, every later line.
            metrics.LOG_LINES_DROPPED.labels("unwritable").inc(len(lines))
