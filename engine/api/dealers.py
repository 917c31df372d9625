"""``/v1/dealers``: dealers and sub-dealers (a sub-dealer has a ``parent_id``)."""

# ruff: noqa: S608  # SQL is built only from module constants (column lists), never from input

from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import get, patch, post
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api import audit
from engine.api.auth import Caller, require_admin, require_write
from engine.api.pagination import Page, clamp_limit
from engine.api.problems import FieldError, invalid, not_found
from engine.api.tenancy import visible_dealers


class DealerCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A dealer; with ``parent_id`` a sub-dealer of that dealer."""

    name: str = msgspec.field()
    parent_id: int | None = None


class DealerUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields that can change."""

    name: str


class Dealer(msgspec.Struct, frozen=True, kw_only=True):
    """A dealer as stored."""

    id: int
    name: str
    parent_id: int | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = "id, name, parent_id, created_at, updated_at"


def _check_name(name: str) -> None:
    if not name.strip() or len(name) > 200:
        raise invalid(
            [FieldError(field="name", rule="length", message="name must be 1-200 characters")]
        )


@post("/dealers", summary="Create a dealer or sub-dealer")
async def create_dealer(state: State, caller: Caller, data: DealerCreate) -> Dealer:
    """Admin: any dealer. Dealer key: only sub-dealers below itself (parent defaults to itself)."""
    require_write(caller)
    _check_name(data.name)
    parent = data.parent_id
    async with state.pool.acquire() as conn, conn.transaction():
        if caller.role != "admin":
            parent = parent if parent is not None else caller.dealer_id
            visible = await visible_dealers(conn, caller)
            if visible is not None and parent not in visible:
                raise invalid(
                    [FieldError(field="parent_id", rule="exists", message="no such dealer")]
                )
        elif parent is not None and not await conn.fetchval(
            "SELECT true FROM dealers WHERE id = $1", parent
        ):
            raise invalid([FieldError(field="parent_id", rule="exists", message="no such dealer")])
        row = await conn.fetchrow(
            f"INSERT INTO dealers (name, parent_id) VALUES ($1, $2) RETURNING {_COLUMNS}",
            data.name.strip(),
            parent,
        )
        dealer = Dealer(**dict(row))
        await audit.record(
            conn,
            caller,
            action="create",
            resource="dealer",
            resource_id=dealer.id,
            dealer_id=dealer.id,
            after=dealer,
        )
    return dealer


@get("/dealers", summary="List dealers")
async def list_dealers(
    state: State,
    caller: Caller,
    limit: int = Parameter(default=50, ge=1, le=500),
    cursor: int | None = Parameter(default=None, ge=0),
) -> Page[Dealer]:
    """The dealers the caller may see (a dealer: itself and its sub-dealers), in id order."""
    visible = await visible_dealers(state.pool, caller)
    limit = clamp_limit(limit)
    rows = await state.pool.fetch(
        f"SELECT {_COLUMNS} FROM dealers WHERE ($1::bigint[] IS NULL OR id = ANY($1)) AND id > $2 ORDER BY id LIMIT $3",
        visible,
        cursor or 0,
        limit + 1,
    )
    items = [Dealer(**dict(r)) for r in rows[:limit]]
    return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


async def _get_visible(state: State, caller: Caller, dealer_id: int) -> Dealer:
    visible = await visible_dealers(state.pool, caller)
    if visible is not None and dealer_id not in visible:
        raise not_found("dealer")
    row = await state.pool.fetchrow(f"SELECT {_COLUMNS} FROM dealers WHERE id = $1", dealer_id)
    if row is None:
        raise not_found("dealer")
    return Dealer(**dict(row))


@get("/dealers/{dealer_id:int}", summary="Get a dealer")
async def get_dealer(state: State, caller: Caller, dealer_id: int) -> Dealer:
    """404 when it does not exist or is not the caller's."""
    return await _get_visible(state, caller, dealer_id)


@patch("/dealers/{dealer_id:int}", summary="Rename a dealer")
async def update_dealer(state: State, caller: Caller, dealer_id: int, data: DealerUpdate) -> Dealer:
    """Admin or the dealer itself (or a parent dealer)."""
    require_write(caller)
    _check_name(data.name)
    before = await _get_visible(state, caller, dealer_id)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE dealers SET name = $2, updated_at = now() WHERE id = $1 RETURNING {_COLUMNS}",
            dealer_id,
            data.name.strip(),
        )
        after = Dealer(**dict(row))
        await audit.record(
            conn,
            caller,
            action="update",
            resource="dealer",
            resource_id=dealer_id,
            dealer_id=dealer_id,
            before=before,
            after=after,
        )
    return after


DEALER_HANDLERS = [create_dealer, list_dealers, get_dealer, update_dealer]
__all__ = ["DEALER_HANDLERS", "Dealer", "require_admin"]
