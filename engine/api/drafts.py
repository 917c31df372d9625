"""``/v1/drafts``: an unfinished creation that can be resumed ("continue on this customer").

A draft holds the creation document step by step; each PATCH replaces the steps it carries.
Reading a draft tells which steps are complete, each remaining field error, and the next step.
Submitting it runs the same validation and creation as POST /v1/customers, and removes the draft
in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from litestar import delete, get, patch, post
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api import audit
from engine.api.auth import Caller, require_write
from engine.api.creation import Invalid, plan_creation
from engine.api.customer_model import STEP_ORDER, CustomerCreated
from engine.api.customer_store import fetch_customer, insert_customer
from engine.api.pagination import Page, clamp_limit
from engine.api.problems import FieldError, invalid, not_found
from engine.api.tenancy import visible_dealers


class DraftIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Steps to store: any subset of the creation request's sections (see POST /v1/customers)."""

    document: dict[str, Any] = msgspec.field(default_factory=dict)


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    """A stored draft with its progress."""

    id: int
    dealer_id: int | None
    document: dict[str, Any]
    complete_steps: list[str]
    next_step: str | None  # None: ready to submit
    errors: list[FieldError]
    warnings: list[str]
    created_at: datetime
    updated_at: datetime


async def _progress(conn: asyncpg.Connection, caller: Caller, row: asyncpg.Record) -> Draft:
    document = msgspec.json.decode(row["document"])
    errors: list[FieldError] = []
    warnings: list[str] = []
    try:
        plan = await plan_creation(conn, caller, document)
        warnings = plan.warnings
    except Invalid as exc:
        errors, warnings = exc.errors, exc.warnings
    failing = {e.field.split(".", 1)[0].split("[", 1)[0] for e in errors}
    complete = [s for s in STEP_ORDER if s in document and s not in failing]
    # Nothing failing: ready to submit (a virtual customer's draft has no system step).
    remaining = [
        s
        for s in STEP_ORDER
        if s in failing
        or (errors and s not in document and s in {"account_type", "customer", "system", "package"})
    ]
    return Draft(
        id=row["id"],
        dealer_id=row["dealer_id"],
        document=_shown(document),
        complete_steps=complete,
        next_step=remaining[0] if remaining else None,
        errors=errors,
        warnings=warnings,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _shown(document: dict[str, Any]) -> dict[str, Any]:
    """The document as answered: the stored AES key is replaced by ``key_set``."""
    system = document.get("system")
    if not isinstance(system, dict) or "key" not in system:
        return document
    shown = {k: v for k, v in system.items() if k != "key"}
    return {**document, "system": {**shown, "key_set": system["key"] is not None}}


def _stored(document: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The steps to store: ``key_set`` (as answered) is dropped, and a ``system`` step without
    ``key`` keeps the stored key (answers never carry it; ``"key": null`` removes it)."""
    system = document.get("system")
    if not isinstance(system, dict):
        return document
    system = {k: v for k, v in system.items() if k != "key_set"}
    old = before.get("system")
    if "key" not in system and isinstance(old, dict) and "key" in old:
        system["key"] = old["key"]
    return {**document, "system": system}


def _check_sections(document: dict[str, Any]) -> None:
    unknown = [k for k in document if k not in STEP_ORDER]
    if unknown:
        raise invalid(
            [
                FieldError(
                    field=f"document.{k}", rule="unknown", message="not a step of the creation flow"
                )
                for k in unknown
            ]
        )


async def _dealer_of(
    conn: asyncpg.Connection, caller: Caller, document: dict[str, Any]
) -> int | None:
    dealer = document.get("dealer")
    wanted = dealer.get("dealer_id") if isinstance(dealer, dict) else None
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        visible = await visible_dealers(conn, caller)
        if (
            visible is None
            and await conn.fetchval("SELECT true FROM dealers WHERE id = $1", wanted)
        ) or (visible is not None and wanted in visible):
            return wanted
    return caller.dealer_id


_SELECT = "SELECT id, dealer_id, document::text AS document, created_at, updated_at FROM drafts WHERE id = $1"
_SELECT_FOR_UPDATE = _SELECT + " FOR UPDATE"


async def _load(
    conn: asyncpg.Connection, caller: Caller, draft_id: int, *, for_update: bool = False
) -> asyncpg.Record:
    row = await conn.fetchrow(_SELECT_FOR_UPDATE if for_update else _SELECT, draft_id)
    visible = await visible_dealers(conn, caller)
    if row is None or (visible is not None and row["dealer_id"] not in visible):
        raise not_found("draft")
    return row


@post("/drafts", summary="Start a draft customer")
async def create_draft(state: State, caller: Caller, data: DraftIn) -> Draft:
    """Store the steps given so far; the answer tells the next step."""
    require_write(caller)
    _check_sections(data.document)
    document = _stored(data.document, {})
    async with state.pool.acquire() as conn, conn.transaction():
        dealer_id = await _dealer_of(conn, caller, document)
        row = await conn.fetchrow(
            "INSERT INTO drafts (dealer_id, document, created_by) VALUES ($1, $2::jsonb, $3) "
            "RETURNING id, dealer_id, document::text AS document, created_at, updated_at",
            dealer_id,
            msgspec.json.encode(document).decode(),
            caller.key_id,
        )
        await audit.record(
            conn,
            caller,
            action="create",
            resource="draft",
            resource_id=row["id"],
            dealer_id=dealer_id,
            after=document,
        )
        return await _progress(conn, caller, row)


@patch("/drafts/{draft_id:int}", summary="Save steps of a draft")
async def update_draft(state: State, caller: Caller, draft_id: int, data: DraftIn) -> Draft:
    """Each section given replaces the stored one; a section set to null is removed."""
    require_write(caller)
    _check_sections(data.document)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await _load(conn, caller, draft_id, for_update=True)
        before = msgspec.json.decode(row["document"])
        document = {**before, **_stored(data.document, before)}
        document = {k: v for k, v in document.items() if v is not None}
        dealer_id = await _dealer_of(conn, caller, document)
        row = await conn.fetchrow(
            "UPDATE drafts SET document = $2::jsonb, dealer_id = $3, updated_at = now() WHERE id = $1 "
            "RETURNING id, dealer_id, document::text AS document, created_at, updated_at",
            draft_id,
            msgspec.json.encode(document).decode(),
            dealer_id,
        )
        await audit.record(
            conn,
            caller,
            action="update",
            resource="draft",
            resource_id=draft_id,
            dealer_id=dealer_id,
            before=before,
            after=document,
        )
        return await _progress(conn, caller, row)


@get("/drafts/{draft_id:int}", summary="Resume a draft")
async def get_draft(state: State, caller: Caller, draft_id: int) -> Draft:
    """The stored steps, which are complete, what is still wrong, and the next step."""
    async with state.pool.acquire() as conn:
        return await _progress(conn, caller, await _load(conn, caller, draft_id))


@get("/drafts", summary="List drafts (continue on this customer)")
async def list_drafts(
    state: State,
    caller: Caller,
    limit: int = Parameter(default=50, ge=1, le=500),
    cursor: int | None = Parameter(default=None, ge=0),
) -> Page[Draft]:
    """The caller's drafts, most recently changed first by id."""
    visible = await visible_dealers(state.pool, caller)
    limit = clamp_limit(limit)
    async with state.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, dealer_id, document::text AS document, created_at, updated_at FROM drafts "
            "WHERE ($1::bigint[] IS NULL OR dealer_id = ANY($1)) AND id > $2 ORDER BY id LIMIT $3",
            visible,
            cursor or 0,
            limit + 1,
        )
        items = [await _progress(conn, caller, r) for r in rows[:limit]]
    return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


@delete("/drafts/{draft_id:int}", summary="Discard a draft", status_code=204)
async def delete_draft(state: State, caller: Caller, draft_id: int) -> None:
    """Removes the draft."""
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await _load(conn, caller, draft_id, for_update=True)
        await conn.execute("DELETE FROM drafts WHERE id = $1", draft_id)
        await audit.record(
            conn,
            caller,
            action="delete",
            resource="draft",
            resource_id=draft_id,
            dealer_id=row["dealer_id"],
        )


@post("/drafts/{draft_id:int}/submit", summary="Create the customer from a draft")
async def submit_draft(state: State, caller: Caller, draft_id: int) -> CustomerCreated:
    """Same rules as POST /v1/customers; the draft is removed when the customer is created."""
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        row = await _load(conn, caller, draft_id, for_update=True)
        try:
            plan = await plan_creation(conn, caller, msgspec.json.decode(row["document"]))
        except Invalid as exc:
            raise invalid(exc.errors, warnings=exc.warnings) from None
        customer_id = await insert_customer(conn, caller, plan)
        await conn.execute("DELETE FROM drafts WHERE id = $1", draft_id)
        await audit.record(
            conn,
            caller,
            action="submit",
            resource="draft",
            resource_id=draft_id,
            dealer_id=plan.dealer_id,
            before=msgspec.json.decode(row["document"]),
            after={"customer_id": customer_id},
        )
        customer = await fetch_customer(conn, caller, customer_id)
    return CustomerCreated(customer=customer, summary=plan.summary, warnings=plan.warnings)


DRAFT_HANDLERS = [create_draft, update_draft, get_draft, list_drafts, delete_draft, submit_draft]
