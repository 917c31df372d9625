"""Which monitoring stations and receivers a dealer may use.

A dealer may use the stations it (or a dealer above it) registered, and every station marked as
the provider's own. Stations registered by the provider without ``own`` are for admins only.
"""

from __future__ import annotations

import asyncpg

from engine.api.tenancy import dealer_ancestors
from engine.station_model import ReceiverConfig
from engine.store.stations import RECEIVER_COLUMNS, receiver_from_row

_RECEIVER_COLUMNS = ", ".join("r." + c.strip() for c in RECEIVER_COLUMNS.split(","))


async def usable_receivers(
    conn: asyncpg.Connection | asyncpg.Pool, dealer_id: int
) -> dict[str, ReceiverConfig]:
    """Receivers (by name) of the stations the dealer may use, locked until the transaction
    ends: a concurrent PUT of a receiver waits, then sees the accounts this one set up (two-way
    voice rests on the receiver supporting it)."""
    dealers = await dealer_ancestors(conn, dealer_id)
    rows = await conn.fetch(
        f"""
        SELECT {_RECEIVER_COLUMNS} FROM receivers r JOIN stations s ON s.name = r.station
        LEFT JOIN dealer_stations ds ON ds.station = s.name
        WHERE s.own OR ds.dealer_id = ANY($1)
        ORDER BY r.name
        FOR SHARE OF r
        """,  # noqa: S608 - a module constant
        dealers,
    )
    return {r["name"]: receiver_from_row(r) for r in rows}


async def stations_of(conn: asyncpg.Connection | asyncpg.Pool, names: list[str]) -> dict[str, str]:
    """The station of each named receiver (those that exist)."""
    rows = await conn.fetch("SELECT name, station FROM receivers WHERE name = ANY($1)", names)
    return {r["name"]: r["station"] for r in rows}
