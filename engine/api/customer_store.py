"""Customers in PostgreSQL: the ``customers`` row and the engine's ``accounts`` row, written together."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import msgspec

from engine.account_model import Account
from engine.api import audit
from engine.api.auth import Caller
from engine.api.creation import Plan
from engine.api.customer_model import Customer
from engine.api.problems import conflict, not_found
from engine.api.tenancy import visible_dealers

_encoder = msgspec.json.Encoder()

CUSTOMER_SELECT = """
SELECT c.id, c.status, c.commitment_id, c.account_type, c.dealer_id, c.sub_dealer_id, c.account,
       c.module_serial, c.login_name, c.virtual, c.enterprise_group, c.billing_started_at,
       c.billing_ended_at, c.terminated_at,
       c.document::text AS document, c.created_at, c.updated_at,
       a.first_contact_at,
       -- the last contact lives on the supervision row once the account is supervised
       GREATEST(a.last_contact_at, v.last_contact_at) AS last_contact_at
-- a terminated customer has no engine account: its number may belong to a new customer now
FROM customers c LEFT JOIN accounts a ON a.account = c.account AND c.status <> 'terminated'
LEFT JOIN supervision v ON v.account = c.account AND c.status <> 'terminated'
"""


def customer_from_row(row: asyncpg.Record) -> Customer:
    """A Customer from a CUSTOMER_SELECT row."""
    values = dict(row)
    values["document"] = msgspec.json.decode(values["document"])
    values["can_log_in"] = values["first_contact_at"] is not None
    return Customer(**values)


async def insert_account(conn: asyncpg.Connection, account: Account) -> None:
    """The engine's row for the module (insert only: an existing account number is a conflict)."""
    try:
        await conn.execute(
            """
            INSERT INTO accounts (account, module_serial, name, key, key_format, timestamp_past_s, timestamp_future_s,
                                  local_time_zone, supervision_interval_s, two_way_voice_capable, virtual, forwarding)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)
            """,
            account.account,
            account.module_serial,
            account.name,
            account.key,
            account.key_format.value,
            account.timestamp_past_s,
            account.timestamp_future_s,
            account.local_time_zone,
            account.supervision_interval_s,
            account.two_way_voice_capable,
            account.virtual,
            _encoder.encode(account.forwarding).decode(),
        )
        # A number given back by a terminated customer: its phone-line faults and Crash & Smash
        # entries and disarms were that customer's, not this module's (the policy and the live
        # state read them). Termination deletes them too; this covers numbers freed before it did.
        await conn.execute("DELETE FROM account_state WHERE account = $1", account.account)
        await conn.execute("DELETE FROM pending_entries WHERE account = $1", account.account)
        await conn.execute("DELETE FROM entry_disarms WHERE account = $1", account.account)
        if account.virtual:  # the engine's simulated module checks in at once (virtual_modules.py)
            await conn.execute(
                "INSERT INTO virtual_schedule (account, next_checkin_at) VALUES ($1, now()) "
                "ON CONFLICT (account) DO NOTHING",
                account.account,
            )
    except asyncpg.UniqueViolationError as exc:
        if "module_serial" in str(exc.constraint_name or ""):
            raise conflict(
                "system.serial", "unique", "this module serial already belongs to a live account"
            ) from None
        raise conflict(
            "system.dc09_account", "unique", "this DC-09 account number is already in use"
        ) from None


async def insert_customer(
    conn: asyncpg.Connection, caller: Caller, plan: Plan, *, commitment: bool = False
) -> int:
    """Write a validated plan (call inside a transaction); returns the customer id."""
    account = plan.account
    if account is not None:
        await insert_account(conn, account)
    commitment_id = "CM-" + secrets.token_hex(5).upper() if commitment else None
    try:
        customer_id = await conn.fetchval(
            """
            INSERT INTO customers (status, commitment_id, account_type, dealer_id, sub_dealer_id, account, module_serial,
                                   login_name, virtual, enterprise_group, document, billing_started_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, CASE WHEN $1 = 'active' THEN now() END)
            RETURNING id
            """,
            "commitment" if commitment else "active",
            commitment_id,
            plan.account_type,
            plan.dealer_id,
            plan.sub_dealer_id,
            account.account if account else None,
            account.module_serial if account else None,
            plan.login_name,
            plan.summary.virtual,
            plan.summary.enterprise_group,
            _encoder.encode(plan.document).decode(),
        )
    except asyncpg.UniqueViolationError as exc:
        # Another creation took the name (or the account number) since validation checked it.
        if "login" in str(exc.constraint_name or ""):
            raise conflict("login.login_name", "unique", "login already in use") from None
        raise conflict(
            "system.dc09_account", "unique", "this DC-09 account number is already in use"
        ) from None
    if account is not None and account.module_serial is not None:
        await conn.execute(
            "INSERT INTO customer_modules (customer_id, account, module_serial, module_type) VALUES ($1, $2, $3, $4)",
            customer_id,
            account.account,
            account.module_serial,
            plan.module_type or "unknown",
        )
    await audit.record(
        conn,
        caller,
        action="create_commitment" if commitment else "create",
        resource="customer",
        resource_id=customer_id,
        dealer_id=plan.dealer_id,
        after={"document": plan.document, "account": account},
    )
    return int(customer_id)


async def fetch_customer(
    conn: asyncpg.Connection | asyncpg.Pool,
    caller: Caller,
    customer_id: int,
    *,
    for_update: bool = False,
) -> Customer:
    """A customer the caller may see, or 404 (also when it belongs to another dealer)."""
    row = await conn.fetchrow(
        CUSTOMER_SELECT + " WHERE c.id = $1" + (" FOR UPDATE OF c" if for_update else ""),
        customer_id,
    )
    if row is None:
        raise not_found("customer")
    visible = await visible_dealers(conn, caller)
    if (
        visible is not None
        and row["dealer_id"] not in visible
        and row["sub_dealer_id"] not in visible
    ):
        raise not_found("customer")
    return customer_from_row(row)


def document_of(customer: Customer) -> dict[str, Any]:
    """A copy of the stored creation document."""
    copy: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(customer.document))
    return copy
