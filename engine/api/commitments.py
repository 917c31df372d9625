"""Commitments (a customer stored ahead of time, without charge, until its module is known),
activation by module serial, and module swap on a live account.

A commitment has every step except the system information; it gets a commitment ID and no
``accounts`` row (the engine knows nothing of it, nothing is billed). Activating it with the
module validates the system step and the rest of the stored document again (packages and
receivers may have changed) and creates the engine's account in the same transaction.

A module swap keeps the customer's DC-09 account number (so its signal history, supervision and
station account stay one), replaces the module serial (the MQTT identity: the old serial is no
longer accepted), and may set a new AES key; the new module must be programmed with the same
account number. The old module is kept in the customer's module history.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
from litestar import get, post
from litestar.datastructures import State

from engine.api import audit
from engine.api.auth import Caller, require_write
from engine.api.creation import Invalid, add_months, check_system, plan_creation
from engine.api.creation_body import report_decode_errors
from engine.api.customer_model import (
    Customer,
    CustomerCreate,
    CustomerCreated,
    ForwardingStep,
    SystemInfo,
)
from engine.api.customer_store import document_of, fetch_customer, insert_account, insert_customer
from engine.api.problems import FieldError, ProblemError, conflict, invalid, not_found
from engine.api.serials import MODULE_TYPES, Pathway, detect_module_type, normalize_serial
from engine.api.tenancy import visible_dealers


class Activation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The module that turns a commitment into a customer (and optional late steps)."""

    system: SystemInfo
    pathway: Pathway | None = None  # replaces the stored pathway when given
    forwarding: ForwardingStep | None = None  # replaces the stored forwarding step when given


class ModuleSwap(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The replacement module."""

    serial: str
    module_type: str | None = None  # detected from the serial format when absent
    key: str | None = None  # a new DC-09 AES key (None: keep the current one)
    key_format: Literal["hex", "ascii"] = "hex"
    # The panel, when it changes too (default: detected for a panel with the module built in,
    # else the current one).
    panel_type: str | None = None
    # Default: the current pathway when the new module supports it, else the module's default.
    pathway: Pathway | None = None


class ModuleRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One module a customer has had."""

    account: str
    module_serial: str
    module_type: str
    since: datetime
    until: datetime | None


@post(
    "/commitments",
    summary="Create a commitment (a customer without module, not charged)",
    before_request=report_decode_errors,
)
async def create_commitment(state: State, caller: Caller, data: CustomerCreate) -> CustomerCreated:
    """All steps except ``system``; the answer carries the commitment ID."""
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        try:
            plan = await plan_creation(conn, caller, msgspec.to_builtins(data), commitment=True)
        except Invalid as exc:
            raise invalid(exc.errors, warnings=exc.warnings) from None
        customer_id = await insert_customer(conn, caller, plan, commitment=True)
        customer = await fetch_customer(conn, caller, customer_id)
    return CustomerCreated(customer=customer, summary=plan.summary, warnings=plan.warnings)


async def _commitment_id(conn: Any, caller: Caller, commitment_id: str) -> int:
    row = await conn.fetchrow(
        "SELECT id, dealer_id, sub_dealer_id FROM customers WHERE commitment_id = $1", commitment_id
    )
    visible = await visible_dealers(conn, caller)
    if row is None or (
        visible is not None
        and row["dealer_id"] not in visible
        and row["sub_dealer_id"] not in visible
    ):
        raise not_found("commitment")
    return int(row["id"])


@post(
    "/commitments/{commitment_id:str}/activate",
    summary="Activate a commitment with its module",
    status_code=200,
)
async def activate_commitment(
    state: State, caller: Caller, commitment_id: str, data: Activation
) -> CustomerCreated:
    """Validates the module (serial/IMEI, uniqueness) and the stored steps; creates the engine account."""
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        customer_id = await _commitment_id(conn, caller, commitment_id)
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        if before.status != "commitment":
            raise ProblemError(
                409,
                "Conflict",
                "this commitment is already active"
                if before.status == "active"
                else "this commitment was terminated: create a new customer",
                type_="urn:alarmrelay:problem:conflict",
            )
        document = document_of(before)
        document["customer"]["email_confirm"] = document["customer"][
            "email"
        ]  # confirmed at creation
        operations = document.get("operations") or {}
        length = operations.get("contract_length_months")
        derived = add_months(before.created_at.astimezone(UTC).date(), length) if length else None
        if derived is not None and operations.get("contract_end_date") == derived.isoformat():
            # The end date was derived from the length when the commitment was stored: the
            # contract runs from the activation (billing starts now), derived again from today.
            operations["contract_end_date"] = None
        document["system"] = msgspec.to_builtins(data.system)
        if data.pathway is not None:  # else the commitment's choice (or the module's default)
            document["pathway"] = data.pathway
        if data.forwarding is not None:
            document["forwarding"] = msgspec.to_builtins(data.forwarding)
        try:
            # The caller sees this commitment (its dealer's, or as the sub-dealer installing it).
            sold = document.get("package") or {}
            plan = await plan_creation(
                conn,
                caller,
                document,
                exclude_customer=customer_id,
                dealer_checked=True,
                # sold with the commitment: a package deactivated since still counts for it
                kept_packages=frozenset(
                    c for c in [sold.get("base"), *(sold.get("addons") or [])] if c
                ),
            )
        except Invalid as exc:
            raise invalid(exc.errors, warnings=exc.warnings) from None
        account = plan.account
        assert account is not None
        await insert_account(conn, account)
        await conn.execute(
            """UPDATE customers SET status = 'active', account = $2, module_serial = $3, document = $4::jsonb,
                   billing_started_at = now(), updated_at = now() WHERE id = $1""",
            customer_id,
            account.account,
            account.module_serial,
            msgspec.json.encode(plan.document).decode(),
        )
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
            action="activate",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before={"status": "commitment"},
            after={"status": "active", "account": account},
        )
        customer = await fetch_customer(conn, caller, customer_id)
    return CustomerCreated(customer=customer, summary=plan.summary, warnings=plan.warnings)


@post(
    "/customers/{customer_id:int}/module-swap",
    summary="Replace the module of a live account",
    status_code=200,
)
async def swap_module(state: State, caller: Caller, customer_id: int, data: ModuleSwap) -> Customer:
    """The new serial is validated like at creation; the old serial stops being accepted."""
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        if before.status != "active" or before.account is None:
            raise invalid(
                [
                    FieldError(
                        field="customer",
                        rule="active",
                        message="only a live account has a module to swap",
                    )
                ]
            )
        errors: list[FieldError] = []
        current_panel = (before.document.get("system") or {}).get("panel_type")
        built_in = MODULE_TYPES.get(data.module_type or "") or (
            detect_module_type(normalize_serial(data.serial)) if data.module_type is None else None
        )
        system, module = await check_system(
            conn,
            SystemInfo(
                serial=data.serial,
                module_type=data.module_type,
                key=data.key,
                key_format=data.key_format,
                dc09_account=before.account,
                # A module built into its panel brings the panel (a touchscreen replacing a
                # wireless panel and its communicator): the current one is not a mismatch.
                panel_type=data.panel_type
                or (None if built_in is not None and built_in.panel_type else current_panel),
            ),
            before.account_type,
            before.virtual,
            errors,
        )
        # check_system refuses the account number as "in use": here it is this customer's own.
        errors = [e for e in errors if e.field != "system.dc09_account"]
        voice_on = bool(
            await conn.fetchval(
                "SELECT (forwarding->>'two_way_voice')::boolean FROM accounts WHERE account = $1",
                before.account,
            )
        )
        if voice_on and module is not None and not module.two_way_voice:
            # PRODUCT.md: two-way voice needs a capable module; the option stays eligible.
            errors.append(
                FieldError(
                    field="module_type",
                    rule="two_way_voice_in_use",
                    message="two-way voice is on for this account and this module is not "
                    "two-way-voice capable: turn it off in forwarding first",
                )
            )
        pathway = data.pathway
        if module is not None:
            if pathway is None:
                current = before.document.get("pathway")
                pathway = current if current in module.pathways else module.default_pathway
            elif pathway not in module.pathways:
                errors.append(
                    FieldError(
                        field="pathway",
                        rule="module_pathway",
                        message=f"{module.name} supports {', '.join(module.pathways)}",
                    )
                )
        if errors:
            raise invalid(errors)
        assert system.serial is not None
        assert module is not None
        try:
            await conn.execute(
                """UPDATE accounts SET module_serial = $2, two_way_voice_capable = $3,
                       key = coalesce($4, key), key_format = CASE WHEN $4::text IS NULL THEN key_format ELSE $5 END,
                       updated_at = now() WHERE account = $1""",
                before.account,
                system.serial,
                module.two_way_voice,
                data.key,
                data.key_format,
            )
        except asyncpg.UniqueViolationError:
            # Another request gave this serial to another account since the check above.
            raise conflict(
                "system.serial", "unique", "this module serial already belongs to a live account"
            ) from None
        await conn.execute(
            "UPDATE customer_modules SET until = now() WHERE customer_id = $1 AND until IS NULL",
            customer_id,
        )
        await conn.execute(
            "INSERT INTO customer_modules (customer_id, account, module_serial, module_type) VALUES ($1, $2, $3, $4)",
            customer_id,
            before.account,
            system.serial,
            module.code,
        )
        document = document_of(before)
        document["system"] = {
            **(document.get("system") or {}),
            "serial": system.serial,
            "module_type": module.code,
            "panel_type": system.panel_type,
        }
        document["pathway"] = pathway
        await conn.execute(
            "UPDATE customers SET module_serial = $2, document = $3::jsonb, updated_at = now() WHERE id = $1",
            customer_id,
            system.serial,
            msgspec.json.encode(document).decode(),
        )
        await audit.record(
            conn,
            caller,
            action="module_swap",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before={
                "module_serial": before.module_serial,
                "panel_type": current_panel,
                "pathway": before.document.get("pathway"),
            },
            after={
                "module_serial": system.serial,
                "module_type": module.code,
                "panel_type": system.panel_type,
                "pathway": pathway,
            },
        )
        return await fetch_customer(conn, caller, customer_id)


@get("/customers/{customer_id:int}/modules", summary="Modules a customer has had")
async def list_modules(state: State, caller: Caller, customer_id: int) -> list[ModuleRecord]:
    """Oldest first; the current module has ``until`` null."""
    await fetch_customer(state.pool, caller, customer_id)
    rows = await state.pool.fetch(
        "SELECT account, module_serial, module_type, since, until FROM customer_modules WHERE customer_id = $1 ORDER BY id",
        customer_id,
    )
    return [ModuleRecord(**dict(r)) for r in rows]


COMMITMENT_HANDLERS = [create_commitment, activate_commitment, swap_module, list_modules]
