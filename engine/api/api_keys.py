"""``/v1/api-keys``: create (shown once), list and revoke API keys (admin only)."""

from __future__ import annotations

from datetime import datetime

import asyncpg
import msgspec
from litestar import delete, get, post
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api import audit
from engine.api.auth import Caller, Role, create_key, require_admin
from engine.api.pagination import Page, clamp_limit
from engine.api.problems import FieldError, invalid, not_found

MAX_LABEL_LENGTH = 200  # a note to recognise a key by; listed with every key


class KeyCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new key: its role, and the dealer it acts for (required for dealer keys)."""

    role: Role
    dealer_id: int | None = None
    label: str | None = msgspec.field(default=None)


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored key, without the key."""

    id: int
    prefix: str
    role: str
    dealer_id: int | None
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a key creation: the only time the key itself is shown."""

    id: int
    key: str
    role: str
    dealer_id: int | None


@post("/api-keys", summary="Create an API key (shown once)")
async def create_api_key(state: State, caller: Caller, data: KeyCreate) -> KeyCreated:
    """Admin only. Dealer keys need ``dealer_id``; read-only keys may be scoped to a dealer."""
    require_admin(caller)
    if data.role == "dealer" and data.dealer_id is None:
        raise invalid(
            [FieldError(field="dealer_id", rule="required", message="a dealer key needs dealer_id")]
        )
    if data.label is not None and len(data.label) > MAX_LABEL_LENGTH:
        raise invalid(
            [
                FieldError(
                    field="label", rule="length", message=f"at most {MAX_LABEL_LENGTH} characters"
                )
            ]
        )
    if data.role == "admin" and data.dealer_id is not None:
        raise invalid(
            [FieldError(field="dealer_id", rule="forbidden", message="an admin key has no dealer")]
        )
    async with state.pool.acquire() as conn, conn.transaction():
        if data.dealer_id is not None and not await conn.fetchval(
            "SELECT true FROM dealers WHERE id = $1", data.dealer_id
        ):
            raise invalid([FieldError(field="dealer_id", rule="exists", message="no such dealer")])
        key_id, key = await create_audited_key(
            conn, caller, role=data.role, dealer_id=data.dealer_id, label=data.label
        )
    return KeyCreated(id=key_id, key=key, role=data.role, dealer_id=data.dealer_id)


async def create_audited_key(
    conn: asyncpg.Connection,
    caller: Caller,
    *,
    role: Role,
    dealer_id: int | None,
    label: str | None,
) -> tuple[int, str]:
    """A new key and its audit entry (the key's first characters only), in ``conn``'s
    transaction: the API's and ``alarmrelay keys create``'s (``audit.COMMAND_LINE``)."""
    key_id, key = await create_key(conn, role=role, dealer_id=dealer_id, label=label)
    await audit.record(
        conn,
        caller,
        action="create",
        resource="api_key",
        resource_id=key_id,
        dealer_id=dealer_id,
        after={"role": role, "dealer_id": dealer_id, "label": label, "prefix": key[:8]},
    )
    return key_id, key


@get("/api-keys", summary="List API keys")
async def list_api_keys(
    state: State,
    caller: Caller,
    limit: int = Parameter(default=50, ge=1, le=500),
    cursor: int | None = Parameter(default=None, ge=0),
) -> Page[KeyInfo]:
    """Admin only; keys in id order, never the keys themselves."""
    require_admin(caller)
    limit = clamp_limit(limit)
    rows = await state.pool.fetch(
        "SELECT id, prefix, role, dealer_id, label, created_at, revoked_at FROM api_keys "
        "WHERE id > $1 ORDER BY id LIMIT $2",
        cursor or 0,
        limit + 1,
    )
    items = [KeyInfo(**dict(r)) for r in rows[:limit]]
    return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


@delete("/api-keys/{key_id:int}", summary="Revoke an API key", status_code=204)
async def revoke_api_key(state: State, caller: Caller, key_id: int) -> None:
    """Admin only; the key stops working at once."""
    require_admin(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING dealer_id",
            key_id,
        )
        if row is None:
            raise not_found("API key")
        await audit.record(
            conn,
            caller,
            action="revoke",
            resource="api_key",
            resource_id=key_id,
            dealer_id=row["dealer_id"],
        )


API_KEY_HANDLERS = [create_api_key, list_api_keys, revoke_api_key]
