"""``alarmrelay stations import FILE`` / ``stations export``: monitoring stations and receivers."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import UTF8_BOM, UserFacingError
from engine.logging_setup import configure_logging
from engine.settings import validation_problem
from engine.station_model import PHONE_WARNING, Station, name_problem, receiver_problem


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stations", help="import or export monitoring stations and receivers (JSON)"
    )
    sub = parser.add_subparsers(dest="stations_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="insert or update stations and their receivers")
    imp.add_argument("file", type=Path, help="JSON list of stations")
    imp.add_argument(
        "--move-receivers",
        action="store_true",
        help="let a receiver of another station move to the station the file gives it",
    )
    imp.add_argument("--config", type=Path, default=None, help="TOML settings file")
    imp.set_defaults(func=run_import)
    exp = sub.add_parser("export", help="write all stations and receivers as JSON")
    exp.add_argument("--config", type=Path, default=None, help="TOML settings file")
    exp.set_defaults(func=run_export)


def parse_stations(data: bytes, source: str) -> tuple[list[Station], list[str]]:
    """Validated stations and the warnings to show (phone receivers)."""
    try:
        stations = msgspec.json.decode(data.removeprefix(UTF8_BOM), type=list[Station])
    except msgspec.ValidationError as exc:
        path, text = validation_problem(exc)
        if text == "unknown key":
            text = "unknown field"
        index = re.match(r"\[(\d+)\]\.?", path)  # "[0].receivers[0].port"
        if index is not None:
            rest = path[index.end() :]
            where = f"station {index.group(1)}" + (f": {rest}" if rest else "")
        else:
            where = path
        raise UserFacingError(
            f"{source}: {where}: {text}" if where else f"{source}: {text}"
        ) from None
    except msgspec.DecodeError as exc:
        raise UserFacingError(f"{source}: invalid JSON: {exc}") from None
    warnings: list[str] = []
    names: set[str] = set()
    station_names: set[str] = set()
    for station in stations:
        problem = name_problem(station.name)
        if problem:
            raise UserFacingError(f"{source}: station name {station.name!r}: {problem}")
        if station.name in station_names:
            raise UserFacingError(f"{source}: station name {station.name!r} appears twice")
        station_names.add(station.name)
        for receiver in station.receivers:
            problem = name_problem(receiver.name)
            if problem:
                raise UserFacingError(
                    f"{source}: station {station.name!r}, receiver name {receiver.name!r}: {problem}"
                )
            problem = receiver_problem(receiver)
            if problem:
                raise UserFacingError(
                    f"{source}: station {station.name!r}, receiver {receiver.name!r}: {problem}"
                )
            if receiver.name in names:
                raise UserFacingError(f"{source}: receiver name {receiver.name!r} appears twice")
            names.add(receiver.name)
            if receiver.kind == "phone":
                warnings.append(PHONE_WARNING.format(name=receiver.name))
    return stations, warnings


def run_import(args: argparse.Namespace) -> int:
    from engine.database import open_database  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415
    from engine.store.accounts import voice_accounts_on  # noqa: PLC0415
    from engine.store.stations import StationStore  # noqa: PLC0415

    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise UserFacingError(f"cannot read {args.file}: {exc.strerror}") from None
    stations, warnings = parse_stations(data, str(args.file))
    settings = load_settings(args.config, os.environ)
    configure_logging(level="warning", fmt="console")  # stderr: stdout is the command's output

    async def main() -> int:
        async with open_database(settings) as db:
            without_voice = [
                r.name
                for s in stations
                for r in s.receivers
                if not r.two_way_voice or r.kind == "phone"
            ]
            if not args.move_receivers:
                await _refuse_moves(db.pool, stations, str(args.file))
            using = await voice_accounts_on(db.pool, without_voice)
            if using:
                # PRODUCT.md: two-way voice needs a receiver that supports it; it stays true.
                named = "; ".join(f"{r}: {', '.join(a)}" for r, a in sorted(using.items()))
                raise UserFacingError(
                    f"{args.file}: receivers without two_way_voice are used by accounts with "
                    f"two-way voice on (turn it off in their forwarding first): {named}"
                )
            return await StationStore(db.pool).upsert(stations)

    count = asyncio.run(main())
    for warning in warnings:
        print(f"alarmrelay: warning: {warning}", file=sys.stderr)
    print(f"imported {count} stations")
    return 0


async def _refuse_moves(pool: Any, stations: list[Station], source: str) -> None:
    """A receiver name the file gives another station than the one it belongs to: a copied
    entry, or a name clash, that would silently move a receiver (and the alarms of every account
    using it) to another station. The admin API refuses that; so does the import, unless asked."""
    wanted = {r.name: s.name for s in stations for r in s.receivers}
    rows = await pool.fetch(
        "SELECT name, station FROM receivers WHERE name = ANY($1::text[]) ORDER BY name",
        list(wanted),
    )
    moves = [f"{r['name']!r} ({r['station']!r} → {wanted[r['name']]!r})" for r in rows]
    moves = [m for m, r in zip(moves, rows, strict=True) if r["station"] != wanted[r["name"]]]
    if moves:
        raise UserFacingError(
            f"{source}: receivers of another station would move: {', '.join(moves[:20])}; "
            "nothing was imported (give --move-receivers to move them)"
        )


def run_export(args: argparse.Namespace) -> int:
    from engine.database import open_database  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415
    from engine.store.stations import StationStore  # noqa: PLC0415

    settings = load_settings(args.config, os.environ)
    configure_logging(level="warning", fmt="console")  # stderr: stdout is the JSON document

    async def main() -> list[Station]:
        async with open_database(settings) as db:
            return await StationStore(db.pool).all()

    sys.stdout.buffer.write(
        msgspec.json.format(msgspec.json.encode(asyncio.run(main())), indent=2) + b"\n"
    )
    return 0
