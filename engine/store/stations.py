"""The ``stations`` and ``receivers`` tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import asyncpg

from engine.station_model import ReceiverConfig, Station

RECEIVER_COLUMNS = (
    "name, kind, host, port, protocol, receiver_number, line_prefix, key, key_format, families, "
    "two_way_voice, null_poll_interval_s, ack_timeout_s, phone_number, connections, poll_account"
)
_INSERT_RECEIVER = f"""
INSERT INTO receivers (station, {RECEIVER_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
"""
_ON_CONFLICT = """
ON CONFLICT (name) DO UPDATE SET station = EXCLUDED.station, kind = EXCLUDED.kind,
    host = EXCLUDED.host, port = EXCLUDED.port, protocol = EXCLUDED.protocol,
    receiver_number = EXCLUDED.receiver_number, line_prefix = EXCLUDED.line_prefix,
    key = EXCLUDED.key, key_format = EXCLUDED.key_format, families = EXCLUDED.families,
    two_way_voice = EXCLUDED.two_way_voice, null_poll_interval_s = EXCLUDED.null_poll_interval_s,
    ack_timeout_s = EXCLUDED.ack_timeout_s, phone_number = EXCLUDED.phone_number,
    connections = EXCLUDED.connections, poll_account = EXCLUDED.poll_account,
    updated_at = now()
"""
ReceiverWrite = Literal["insert", "replace", "replace_same_station"]


async def write_receiver(
    conn: asyncpg.Connection, station: str, r: ReceiverConfig, *, mode: ReceiverWrite
) -> str:
    """Write one receiver of ``station``; the command status.

    ``insert`` raises UniqueViolationError for a taken name; ``replace`` takes the name over from
    any station; ``replace_same_station`` replaces only a receiver of this station (status
    ``INSERT 0 0`` when the name belongs to another one).
    """
    sql = _INSERT_RECEIVER
    if mode == "replace":
        sql += _ON_CONFLICT
    elif mode == "replace_same_station":
        sql += _ON_CONFLICT + " WHERE receivers.station = EXCLUDED.station"
    status: str = await conn.execute(
        sql,
        station,
        r.name,
        r.kind,
        r.host,
        r.port,
        r.protocol,
        r.receiver_number,
        r.line_prefix,
        r.key,
        r.key_format,
        r.families,
        r.two_way_voice,
        r.null_poll_interval_s,
        r.ack_timeout_s,
        r.phone_number,
        r.connections,
        r.poll_account,
    )
    return status


def receiver_from_row(row: Any) -> ReceiverConfig:
    return ReceiverConfig(
        name=row["name"],
        kind=row["kind"],
        host=row["host"],
        port=row["port"],
        protocol=row["protocol"],
        receiver_number=row["receiver_number"],
        line_prefix=row["line_prefix"],
        key=row["key"],
        key_format=row["key_format"],
        families=row["families"],
        two_way_voice=row["two_way_voice"],
        null_poll_interval_s=float(row["null_poll_interval_s"]),
        ack_timeout_s=float(row["ack_timeout_s"]),
        phone_number=row["phone_number"],
        connections=row["connections"],
        poll_account=row["poll_account"],
    )


class StationStore:
    """Stations and receivers in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert(self, stations: Sequence[Station]) -> int:
        """Insert or replace stations and their receivers (one transaction)."""
        async with self._pool.acquire() as conn, conn.transaction():
            for station in stations:
                await conn.execute(
                    "INSERT INTO stations (name, own) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET own = EXCLUDED.own",
                    station.name,
                    station.own,
                )
                for r in station.receivers:
                    await write_receiver(conn, station.name, r, mode="replace")
        return len(stations)

    async def all(self) -> list[Station]:
        stations = await self._pool.fetch("SELECT name, own FROM stations ORDER BY name")
        receivers = await self._pool.fetch(
            f"SELECT station, {RECEIVER_COLUMNS} FROM receivers ORDER BY name"
        )
        by_station: dict[str, list[ReceiverConfig]] = {}
        for row in receivers:
            by_station.setdefault(row["station"], []).append(receiver_from_row(row))
        return [
            Station(name=s["name"], own=s["own"], receivers=tuple(by_station.get(s["name"], ())))
            for s in stations
        ]

    async def ip_receivers(self) -> list[ReceiverConfig]:
        rows = await self._pool.fetch(
            f"SELECT {RECEIVER_COLUMNS} FROM receivers WHERE kind = 'ip' ORDER BY name"
        )
        return [receiver_from_row(r) for r in rows]
