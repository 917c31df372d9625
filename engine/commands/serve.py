"""``alarmrelay serve``: run the engine (listeners, pipeline, HTTP) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import uvloop

from engine.logging_setup import queued_logging


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the engine: DC-09 TCP/UDP and MQTT ingest, forwarding, HTTP (metrics, health, API)",
        description="Run the engine. With no database URL configured it starts an embedded PostgreSQL "
        "under the data directory.",
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML settings file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.settings import load_settings  # noqa: PLC0415 - keeps `alarmrelay --help` fast

    settings = load_settings(args.config, os.environ)
    # Lines through a writer thread: a stdout whose reader is slow or stalled never blocks the
    # event loop. Leaving the block, however (a signal's orderly stop, a startup error), writes
    # what is queued first.
    with queued_logging(level=settings.logging.level, fmt=settings.logging.format):
        uvloop.run(_serve(settings))
    return 0


async def _serve(settings: Any) -> None:
    from engine.service import Engine  # noqa: PLC0415 - keeps `alarmrelay --help` fast

    engine = Engine(settings)
    loop = asyncio.get_running_loop()
    # SIGHUP: the terminal or ssh session that ran it closed; without a handler the engine died
    # at once, in-flight commits and ACKs cut off.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, engine.stop.set)
    await engine.run()
