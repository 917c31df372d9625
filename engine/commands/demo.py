"""``alarmrelay demo``: the whole product in one command.

Starts the engine (embedded PostgreSQL unless a config says otherwise), a station receiver
simulator, and a handful of simulated modules that send a realistic mix over DC-09 (check-ins,
openings and closings, a burglary alarm, a fire alarm, troubles). A live table shows signals in,
decisions and deliveries. Ctrl-C (or ``--duration``) stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
from pathlib import Path
from typing import Any

import msgspec


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the engine, a station simulator and simulated modules, with a live summary",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML settings (default: embedded PostgreSQL under ./var)",
    )
    parser.add_argument(
        "--duration", type=_duration, default=None, help="stop after this many seconds"
    )
    parser.add_argument(
        "--modules", type=_modules, default=5, help="simulated modules (default 5, at most 1000)"
    )
    parser.set_defaults(func=run)


def _modules(text: str) -> int:
    """1-1000 modules: 0 or fewer ran a demo of nothing until Ctrl-C (a usage error instead)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 1000:
        raise argparse.ArgumentTypeError(f"must be 1 to 1000 simulated modules, got {text!r}")
    return count


def _duration(text: str) -> float:
    """Seconds above 0 (inf: until Ctrl-C, as without it); nan or 0 or less stopped at once."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return seconds


# (token, data template, label); {a} is the module's account.
SCRIPT: list[tuple[str, str, str]] = [
    ("NULL", "", "check-in"),
    ("ADM-CID", "#{a}|3401 01 001", "closing (armed)"),
    ("SIA-DCS", "#{a}|Nri1/RP000", "periodic test"),
    ("ADM-CID", "#{a}|1130 01 004", "burglary alarm"),
    ("ADM-CID", "#{a}|1401 01 001", "opening (disarmed)"),
    ("ADM-CID", "#{a}|1301 00 000", "AC power trouble"),
    ("SIA-DCS", "#{a}|Nri1/FA012", "fire alarm"),
    ("ADM-CID", "#{a}|1570 01 007", "zone bypass (not selected)"),
    ("ADM-CID", "#{a}|3301 00 000", "AC power restored"),
]


def run(args: argparse.Namespace) -> int:
    import uvloop  # noqa: PLC0415

    from engine.logging_setup import configure_logging  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config, os.environ)
    configure_logging(level="warning", fmt="console")
    settings = msgspec.structs.replace(
        settings,
        dc09=msgspec.structs.replace(settings.dc09, port=0),
        http=msgspec.structs.replace(settings.http, port=0),
        mqtt=msgspec.structs.replace(settings.mqtt, enabled=False),
    )
    uvloop.run(_demo(settings, args.duration, args.modules))
    return 0


async def _demo(settings: Any, duration: float | None, modules: int) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    from engine.account_model import Account, ForwardingMode, ForwardingSettings  # noqa: PLC0415
    from engine.service import Engine  # noqa: PLC0415
    from engine.station_model import ReceiverConfig, Station  # noqa: PLC0415
    from engine.station_sim import StationSimulator  # noqa: PLC0415
    from engine.store.accounts import AccountStore  # noqa: PLC0415
    from engine.store.stations import StationStore  # noqa: PLC0415

    console = Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    station = StationSimulator()
    station_port = await station.start()
    engine = Engine(settings)
    engine_task = asyncio.create_task(engine.run(), name="demo-engine")
    ready = asyncio.create_task(engine.ready.wait())
    done, _ = await asyncio.wait({engine_task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if engine_task in done:
        engine_task.result()
    assert engine.pool is not None
    assert engine.dc09 is not None
    assert engine.http is not None
    accounts = [f"D{n:03d}" for n in range(1, modules + 1)]
    await StationStore(engine.pool).upsert(
        [
            Station(
                name="demo-station",
                receivers=(
                    ReceiverConfig(
                        name="demo-rx",
                        host="127.0.0.1",
                        port=station_port,
                        receiver_number="1",
                        line_prefix="1",
                    ),
                ),
            )
        ]
    )
    await AccountStore(engine.pool).upsert_many(
        [
            Account(
                account=a,
                name=f"Demo customer {i + 1}",
                virtual=True,
                forwarding=ForwardingSettings(
                    mode=ForwardingMode.ALWAYS,
                    station_account=f"5{i:03d}",
                    primary_receiver="demo-rx",
                ),
            )
            for i, a in enumerate(accounts)
        ]
    )
    for _ in range(100):  # the directory picks the accounts up through NOTIFY
        if all(engine.directory.get(a) for a in accounts):
            break
        await asyncio.sleep(0.05)

    sent: dict[str, int] = {}
    senders = [
        asyncio.create_task(_module(engine.dc09.port, a, i, sent, stop))
        for i, a in enumerate(accounts)
    ]
    console.print(
        f"[bold]alarmrelay demo[/]: DC-09 on 127.0.0.1:{engine.dc09.port}, metrics on http://127.0.0.1:{engine.http.port}/metrics, "
        f"station simulator on 127.0.0.1:{station_port}. Ctrl-C stops."
    )
    if duration is not None:
        loop.call_later(duration, stop.set)
    with Live(console=console, refresh_per_second=4) as live:
        while not stop.is_set():
            live.update(await _summary(engine, station, sent))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        live.update(await _summary(engine, station, sent))
    for task in senders:
        task.cancel()
    await asyncio.gather(*senders, return_exceptions=True)
    engine.stop.set()
    await engine_task
    await station.stop()
    console.print(
        f"stopped: {sum(sent.values())} signals sent, {len(station.received)} delivered to the station"
    )


async def _module(
    port: int, account: str, index: int, sent: dict[str, int], stop: asyncio.Event
) -> None:
    from protocols.dc09_frame import encode_frame  # noqa: PLC0415

    rng = random.Random(index)  # noqa: S311 - a demo schedule, not security
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seq = 0
    try:
        step = index
        while not stop.is_set():
            token, template, label = SCRIPT[step % len(SCRIPT)]
            step += 1
            seq = seq % 9999 + 1
            writer.write(
                encode_frame(
                    token=token, seq=f"{seq:04d}", account=account, data=template.format(a=account)
                )
            )
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.readuntil(b"\r"), 5)
            sent[label] = sent.get(label, 0) + 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 2.0))
    finally:
        writer.close()


async def _summary(engine: Any, station: Any, sent: dict[str, int]) -> Any:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    pool = engine.pool
    decisions = await pool.fetch(
        "SELECT reason, count(*) AS n FROM decisions GROUP BY reason ORDER BY reason"
    )
    deliveries = await pool.fetch(
        "SELECT state, count(*) AS n FROM deliveries GROUP BY state ORDER BY state"
    )
    inbound = Table(title="signals in (by kind)")
    inbound.add_column("kind")
    inbound.add_column("sent", justify="right")
    for label, n in sorted(sent.items()):
        inbound.add_row(label, str(n))
    decided = Table(title="decisions and deliveries")
    decided.add_column("what")
    decided.add_column("count", justify="right")
    for row in decisions:
        decided.add_row(f"decision: {row['reason']}", str(row["n"]))
    for row in deliveries:
        decided.add_row(f"delivery: {row['state']}", str(row["n"]))
    latest = Table(title="last frames at the station")
    for col in ("account", "R", "L", "seq", "event"):
        latest.add_column(col)
    for r in station.received[-6:]:
        text = _event_text(r.events[0]) if r.events else "-"
        latest.add_row(r.account or "", r.receiver or "", r.line or "", r.seq, text)
    return Group(inbound, decided, latest)


def _event_text(event: Any) -> str:
    """An event of a station frame, as the summary shows it: "cid 1130 zone 4", "sia BA"."""
    text = f"{event.family} {event.qualifier or ''}{event.code}"
    return text if event.zone is None else f"{text} zone {event.zone}"
