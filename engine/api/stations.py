# ruff: noqa: S608  # SQL is built only from module constants (column lists), never from input
"""``/v1/stations``: monitoring stations and their receivers (register, list, update), and each
station's delivery queue status.

Tables: ``stations``/``receivers`` (0100_forwarding.sql, shared with the delivery engine, which is
told of receiver changes by its trigger) and ``dealer_stations`` (who registered a station). A
station marked ``own`` is the provider's and is offered to every dealer; only admins set it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import asyncpg
import msgspec
from litestar import get, post, put
from litestar.datastructures import State

from engine.api import audit
from engine.api.auth import Caller, require_write
from engine.api.pagination import Page
from engine.api.problems import FieldError, ProblemError, conflict, invalid, not_found
from engine.api.tenancy import dealer_ancestors, visible_dealers
from engine.station_model import PHONE_WARNING, ReceiverConfig, receiver_problem
from engine.store.accounts import voice_accounts_on
from engine.store.stations import RECEIVER_COLUMNS, write_receiver


class StationIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A station to register, with its receivers."""

    name: str
    own: bool = False  # the provider's own station (admin only)
    dealer_id: int | None = None  # who registered it (dealer keys: themselves)
    receivers: list[ReceiverConfig] = msgspec.field(default_factory=list)


class StationUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What can change on a station itself."""

    own: bool


class ReceiverOut(msgspec.Struct, frozen=True, kw_only=True):
    """A receiver as listed: its key is never returned, only whether one is set."""

    name: str
    kind: Literal["ip", "phone"]
    host: str | None
    port: int | None
    protocol: Literal["tcp", "udp"]
    receiver_number: str | None
    line_prefix: str | None
    key_set: bool
    key_format: Literal["hex", "ascii"]
    families: Literal["cid", "sia", "both"]
    two_way_voice: bool
    null_poll_interval_s: float
    poll_account: str
    ack_timeout_s: float
    phone_number: str | None
    connections: int


class StationOut(msgspec.Struct, frozen=True, kw_only=True):
    """A station with its receivers."""

    name: str
    own: bool
    dealer_id: int | None
    receivers: list[ReceiverOut]
    created_at: datetime
    warnings: list[str] = msgspec.field(default_factory=list)


class ReceiverStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A receiver's live link (as the answering engine process sees it) and its delivery queue."""

    receiver: str
    # True: the last exchange (a frame or a NULL poll) was answered; False: it failed; None: this
    # process holds no connection to it (a phone receiver, or the API served without the engine).
    link_up: bool | None = None
    failed_over: bool | None = None  # True: deliveries meant for it go to the backup receiver
    pending: int
    oldest_pending_at: datetime | None
    dead: int
    delivered_last_hour: int


class StationStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Live link and queue status per receiver of a station."""

    station: str
    receivers: list[ReceiverStatus]


def _receiver_out(row: asyncpg.Record) -> ReceiverOut:
    values = {k: row[k] for k in row.keys() if k not in ("key", "station")}  # noqa: SIM118
    values["null_poll_interval_s"] = float(values["null_poll_interval_s"])
    values["ack_timeout_s"] = float(values["ack_timeout_s"])
    return ReceiverOut(key_set=row["key"] is not None, **values)


def _receiver_errors(receivers: list[ReceiverConfig], prefix: str) -> list[FieldError]:
    errors: list[FieldError] = []
    seen: set[str] = set()
    for i, receiver in enumerate(receivers):
        problem = receiver_problem(receiver)
        if problem is not None:
            errors.append(FieldError(field=f"{prefix}[{i}]", rule="receiver", message=problem))
        if not receiver.name.strip() or len(receiver.name) > 100:
            errors.append(
                FieldError(field=f"{prefix}[{i}].name", rule="length", message="1-100 characters")
            )
        if receiver.name in seen:
            errors.append(
                FieldError(
                    field=f"{prefix}[{i}].name", rule="unique", message="receiver name given twice"
                )
            )
        seen.add(receiver.name)
    return errors


async def _insert_receiver(
    conn: asyncpg.Connection, station: str, r: ReceiverConfig, *, replace: bool
) -> None:
    try:
        status = await write_receiver(
            conn, station, r, mode="replace_same_station" if replace else "insert"
        )
    except asyncpg.UniqueViolationError:
        raise conflict("receivers.name", "unique", f"a receiver named {r.name!r} exists") from None
    if status == "INSERT 0 0":  # the name belongs to a receiver of another station
        raise conflict(
            "receivers.name", "unique", f"a receiver named {r.name!r} exists at another station"
        )


async def _station_out(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, warnings: list[str] | None = None
) -> StationOut:
    row = await conn.fetchrow(
        "SELECT s.name, s.own, s.created_at, ds.dealer_id FROM stations s LEFT JOIN dealer_stations ds ON ds.station = s.name WHERE s.name = $1",
        name,
    )
    if row is None:
        raise not_found("station")
    receivers = await conn.fetch(
        f"SELECT station, {RECEIVER_COLUMNS} FROM receivers WHERE station = $1 ORDER BY name", name
    )
    return StationOut(
        name=row["name"],
        own=row["own"],
        dealer_id=row["dealer_id"],
        created_at=row["created_at"],
        receivers=[_receiver_out(r) for r in receivers],
        warnings=warnings or [],
    )


async def _visible_station(
    conn: asyncpg.Connection | asyncpg.Pool, caller: Caller, name: str, *, change: bool
) -> StationOut:
    """The station if the caller may see it (change=True: may change it), else 404/403."""
    station = await _station_out(conn, name)
    if caller.dealer_id is None:
        return station
    visible = await visible_dealers(conn, caller) or []
    ancestors = await dealer_ancestors(conn, caller.dealer_id)
    mine = station.dealer_id is not None and station.dealer_id in visible
    usable = station.own or (station.dealer_id is not None and station.dealer_id in ancestors)
    if not (mine or usable):
        raise not_found("station")
    if change and not mine:
        raise ProblemError(
            403,
            "Forbidden",
            "only the dealer that registered this station (or an admin) can change it",
        )
    return station


@post("/stations", summary="Register a monitoring station with its receivers")
async def create_station(state: State, caller: Caller, data: StationIn) -> StationOut:
    """Admin: any dealer or none, may mark the provider's own station. Dealer: for itself."""
    require_write(caller)
    dealer_id = data.dealer_id
    errors = _receiver_errors(data.receivers, "receivers")
    if not data.name.strip() or len(data.name) > 100:
        errors.append(FieldError(field="name", rule="length", message="1-100 characters"))
    if caller.role != "admin":
        if data.own:
            errors.append(
                FieldError(
                    field="own",
                    rule="admin_only",
                    message="only the provider marks its own station",
                )
            )
        dealer_id = dealer_id if dealer_id is not None else caller.dealer_id
        visible = await visible_dealers(state.pool, caller)
        if visible is not None and dealer_id not in visible:
            errors.append(FieldError(field="dealer_id", rule="exists", message="no such dealer"))
    if errors:
        raise invalid(errors)
    warnings = [PHONE_WARNING.format(name=r.name) for r in data.receivers if r.kind == "phone"]
    async with state.pool.acquire() as conn, conn.transaction():
        if dealer_id is not None and not await conn.fetchval(
            "SELECT true FROM dealers WHERE id = $1", dealer_id
        ):
            raise invalid([FieldError(field="dealer_id", rule="exists", message="no such dealer")])
        try:
            await conn.execute(
                "INSERT INTO stations (name, own) VALUES ($1, $2)", data.name, data.own
            )
        except asyncpg.UniqueViolationError:
            raise conflict("name", "unique", "a station with this name exists") from None
        if dealer_id is not None:
            await conn.execute(
                "INSERT INTO dealer_stations (station, dealer_id) VALUES ($1, $2)",
                data.name,
                dealer_id,
            )
        for receiver in data.receivers:
            await _insert_receiver(conn, data.name, receiver, replace=False)
        station = await _station_out(conn, data.name, warnings)
        await audit.record(
            conn,
            caller,
            action="create",
            resource="station",
            resource_id=data.name,
            dealer_id=dealer_id,
            after=station,
        )
    return station


@get("/stations", summary="List monitoring stations")
async def list_stations(state: State, caller: Caller) -> Page[StationOut]:
    """Admin: all. Dealer: those it (or a sub-dealer, or a dealer above it) registered, and the provider's own."""
    names = [r["name"] for r in await state.pool.fetch("SELECT name FROM stations ORDER BY name")]
    items: list[StationOut] = []
    for name in names:
        try:
            items.append(await _visible_station(state.pool, caller, name, change=False))
        except ProblemError:
            continue
    return Page(items=items)


@get("/stations/{name:str}", summary="Get a monitoring station")
async def get_station(state: State, caller: Caller, name: str) -> StationOut:
    """404 when the caller may not see it."""
    return await _visible_station(state.pool, caller, name, change=False)


@put("/stations/{name:str}", summary="Update a monitoring station (own flag)")
async def update_station(
    state: State, caller: Caller, name: str, data: StationUpdate
) -> StationOut:
    """Admin only: mark or unmark the provider's own station."""
    require_write(caller)
    if caller.role != "admin":
        raise ProblemError(403, "Forbidden", "only an admin marks the provider's own station")
    async with state.pool.acquire() as conn, conn.transaction():
        before = await _station_out(conn, name)
        await conn.execute("UPDATE stations SET own = $2 WHERE name = $1", name, data.own)
        after = await _station_out(conn, name)
        await audit.record(
            conn,
            caller,
            action="update",
            resource="station",
            resource_id=name,
            dealer_id=before.dealer_id,
            before=before,
            after=after,
        )
    return after


@put("/stations/{name:str}/receivers/{receiver:str}", summary="Add or replace a receiver")
async def put_receiver(
    state: State, caller: Caller, name: str, receiver: str, data: ReceiverConfig
) -> StationOut:
    """The body's ``name`` must match the path."""
    require_write(caller)
    errors = _receiver_errors([data], "body")
    if data.name != receiver:
        errors.append(
            FieldError(
                field="name", rule="matches_path", message="the receiver name must match the path"
            )
        )
    if errors:
        raise invalid(errors)
    async with state.pool.acquire() as conn, conn.transaction():
        # Locked first: a forwarding change choosing this receiver (usable_receivers, FOR SHARE)
        # either commits before the check below sees it, or waits for this change.
        await conn.execute("SELECT 1 FROM receivers WHERE name = $1 FOR UPDATE", receiver)
        before = await _visible_station(conn, caller, name, change=True)
        ours = any(r.name == receiver for r in before.receivers)  # else: new, or 409 below
        if ours and (not data.two_way_voice or data.kind == "phone"):
            # PRODUCT.md: two-way voice needs a receiver that supports it; it stays true.
            using = (await voice_accounts_on(conn, [receiver])).get(receiver, [])
            if using:
                raise invalid(
                    [
                        FieldError(
                            field="two_way_voice",
                            rule="two_way_voice_in_use",
                            message=f"{len(using)} account(s) use this receiver with two-way voice "
                            "on: turn it off in their forwarding first",
                        )
                    ]
                )
        await _insert_receiver(conn, name, data, replace=True)
        after = await _station_out(
            conn, name, [PHONE_WARNING.format(name=data.name)] if data.kind == "phone" else []
        )
        await audit.record(
            conn,
            caller,
            action="put_receiver",
            resource="station",
            resource_id=name,
            dealer_id=before.dealer_id,
            before=[r for r in before.receivers if r.name == receiver],
            after=[r for r in after.receivers if r.name == receiver],
        )
    return after


@get("/stations/{name:str}/status", summary="Live link and delivery queue status per receiver")
async def station_status(state: State, caller: Caller, name: str) -> StationStatus:
    """Link up or down and failed over (live, in the engine process that answers), pending
    deliveries and their oldest age, dead letters, deliveries in the last hour."""
    station = await _visible_station(state.pool, caller, name, change=False)
    rows = await state.pool.fetch(
        """
        SELECT r.name AS receiver,
               count(d.id) FILTER (WHERE d.state = 'pending' AND d.primary_receiver = r.name) AS pending,
               min(d.committed_at) FILTER (WHERE d.state = 'pending' AND d.primary_receiver = r.name) AS oldest_pending_at,
               count(d.id) FILTER (WHERE d.state = 'dead' AND d.primary_receiver = r.name) AS dead,
               -- by the receiver that acknowledged: a backup delivering after a failover counts
               count(d.id) FILTER (WHERE d.state = 'delivered' AND d.receiver_used = r.name
                                     AND d.acked_at > now() - interval '1 hour') AS delivered_last_hour
        FROM receivers r
        LEFT JOIN deliveries d ON d.primary_receiver = r.name OR d.receiver_used = r.name
        WHERE r.station = $1 GROUP BY r.name ORDER BY r.name
        """,
        station.name,
    )
    links = state.receiver_links() if state.receiver_links is not None else {}
    receivers = []
    for row in rows:
        link = links.get(row["receiver"])
        receivers.append(
            ReceiverStatus(
                **dict(row),
                link_up=link.link_up if link else None,
                failed_over=link.failed_over if link else None,
            )
        )
    return StationStatus(station=station.name, receivers=receivers)


STATION_HANDLERS = [
    create_station,
    list_stations,
    get_station,
    update_station,
    put_receiver,
    station_status,
]
