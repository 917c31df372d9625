"""``alarmrelay station-sim``: a DC-09 monitoring-station receiver simulator."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from engine.errors import UserFacingError


def _port(text: str) -> int:
    """A TCP/UDP port number, 0-65535 (argparse reports anything else as a usage error)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not in 0-65535")
    return port


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "station-sim",
        help="run a DC-09 station receiver simulator (TCP+UDP) that ACKs, or NAKs/DUHs/delays/drops on command",
        description="Prints every frame received as one JSON line on stdout.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=10010, help="TCP+UDP port (0: any free one)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--key-hex", help="AES key (hex) the station expects")
    keys.add_argument("--key-ascii", help="AES key (ASCII) the station expects")
    parser.add_argument(
        "--mode",
        choices=["ack", "nak", "duh", "drop", "delay"],
        default="ack",
        help="what to answer (delay: ACK after --delay-ms, 1000 if not set)",
    )
    parser.add_argument("--delay-ms", type=int, default=0, help="wait this long before answering")
    parser.add_argument(
        "--clock-skew-s", type=float, default=0.0, help="the station's clock is off by this much"
    )
    parser.add_argument(
        "--control-port",
        type=_port,
        default=None,
        help="line-based control: mode X | delay MS | skew S | stats (0: any free port)",
    )
    parser.add_argument(
        "--log", metavar="FILE", help="append the JSON lines to FILE instead of stdout"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvloop  # noqa: PLC0415

    from engine.station_sim import StationSimulator, clock_skew, run_cli  # noqa: PLC0415
    from protocols.dc09_crypto import AesKey  # noqa: PLC0415

    try:
        key = (
            AesKey.from_hex(args.key_hex)
            if args.key_hex
            else AesKey.from_ascii(args.key_ascii)
            if args.key_ascii
            else None
        )
    except ValueError as exc:
        raise UserFacingError(f"bad key: {exc}") from None
    if args.delay_ms < 0:
        raise UserFacingError("--delay-ms must not be negative")
    try:
        log = open(args.log, "a", encoding="utf-8") if args.log else sys.stdout  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UserFacingError(f"cannot open {args.log}: {exc.strerror}") from None
    try:
        clock_skew(args.clock_skew_s)
    except ValueError as exc:
        raise UserFacingError(f"--clock-skew-s: {exc}") from None
    sim = StationSimulator(
        host=args.host,
        port=args.port,
        key=key,
        delay_ms=args.delay_ms,
        clock_skew_s=args.clock_skew_s,
        log=log,
        keep_records=False,  # the JSON lines are the record: memory stays flat
    )
    sim.set_mode(args.mode)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(
                run_cli(sim, args.control_port)
            )  # as the engine runs: half the CPU per frame
    except OSError as exc:
        raise UserFacingError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    finally:
        if log is not sys.stdout:
            log.close()
    return 0
