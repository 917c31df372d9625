"""The audit log: every change made through the API, written in the change's own transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api.auth import Caller
from engine.api.pagination import Page, clamp_limit
from engine.api.tenancy import visible_dealers

_encoder = msgspec.json.Encoder()


COMMAND_LINE = Caller(key_id=0, role="admin", dealer_id=None)  # stands for the operator's shell


async def record(
    conn: asyncpg.Connection,
    caller: Caller,
    *,
    action: str,
    resource: str,
    resource_id: object,
    dealer_id: int | None,
    before: Any = None,
    after: Any = None,
) -> None:
    """Append one audit entry (call inside the transaction that makes the change).

    ``COMMAND_LINE`` as the caller: a change made with an ``alarmrelay`` command (database
    access, no API key), recorded with no key id and role ``command-line``."""
    command_line = caller is COMMAND_LINE
    await conn.execute(
        """
        INSERT INTO audit_log (key_id, role, actor_dealer, dealer_id, action, resource, resource_id, before, after)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb)
        """,
        None if command_line else caller.key_id,
        "command-line" if command_line else caller.role,
        caller.dealer_id,
        dealer_id,
        action,
        resource,
        str(resource_id),
        None if before is None else _encoder.encode(_redact(before)).decode(),
        None if after is None else _encoder.encode(_redact(after)).decode(),
    )


_SECRET_FIELDS = frozenset({"key", "password", "token"})


def _redact(value: Any) -> Any:
    """Keys (DC-09 AES, API) never enter the audit log; their presence is recorded."""
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, dict):
        return {k: ("***" if k in _SECRET_FIELDS and v else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One change: who (key id, role, dealer), what (action on resource), when, before/after."""

    id: int
    at: datetime
    key_id: int | None
    role: str
    actor_dealer: int | None
    dealer_id: int | None
    action: str
    resource: str
    resource_id: str
    before: Any
    after: Any


@get("/audit", summary="Audit log (admin: all; dealer: its own and its sub-dealers')")
async def list_audit(
    state: State,
    caller: Caller,
    resource: str | None = None,
    resource_id: str | None = None,
    limit: int = Parameter(default=50, ge=1, le=500),
    cursor: int | None = Parameter(
        default=None, ge=1, description="next_cursor of the previous page"
    ),
) -> Page[AuditEntry]:
    """Newest first. Filter by resource (customer, dealer, …) and resource id."""
    visible = await visible_dealers(state.pool, caller)
    limit = clamp_limit(limit)
    rows = await state.pool.fetch(
        """
        SELECT id, at, key_id, role, actor_dealer, dealer_id, action, resource, resource_id,
               before::text AS before, after::text AS after
        FROM audit_log
        WHERE ($1::bigint[] IS NULL OR dealer_id = ANY($1) OR actor_dealer = ANY($1)
               -- a customer of a dealer above, served by the caller's tree as its sub-dealer
               OR (resource = 'customer' AND resource_id IN (
                   SELECT id::text FROM customers WHERE sub_dealer_id = ANY($1))))
          AND ($2::text IS NULL OR resource = $2) AND ($3::text IS NULL OR resource_id = $3)
          AND ($4::bigint IS NULL OR id < $4)
        ORDER BY id DESC LIMIT $5
        """,
        visible,
        resource,
        resource_id,
        cursor,
        limit + 1,
    )
    items = [
        AuditEntry(
            **{k: r[k] for k in r.keys() if k not in ("before", "after")},  # noqa: SIM118
            before=None if r["before"] is None else msgspec.json.decode(r["before"]),
            after=None if r["after"] is None else msgspec.json.decode(r["after"]),
        )
        for r in rows[:limit]
    ]
    return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


AUDIT_HANDLERS = [list_audit]
__all__ = ["AUDIT_HANDLERS", "AuditEntry", "record"]
