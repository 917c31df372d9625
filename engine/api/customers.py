# ruff: noqa: PERF401  # each rule appends its error in a loop of its own
"""``/v1/customers``: the account-creation flow in one request, dry-run validation, reading and
editing customers, enterprise groups.

A created customer with a module is also a row of the engine's ``accounts`` table (the module's
DC-09 account number: given in ``system.dc09_account`` or derived from the serial, see
serials.derived_account), written in the same transaction, so the engine accepts its signals at once.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import get, patch, post, put
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api import audit
from engine.api.auth import Caller, require_write
from engine.api.creation import Invalid, check_customer, plan_creation
from engine.api.creation_body import report_decode_errors
from engine.api.customer_model import (
    Address,
    Customer,
    CustomerCreate,
    CustomerCreated,
    CustomerInfo,
    Validation,
)
from engine.api.customer_store import (
    CUSTOMER_SELECT,
    customer_from_row,
    document_of,
    fetch_customer,
    insert_customer,
)
from engine.api.packages import enterprise_eligible, load_packages
from engine.api.pagination import Page, clamp_limit
from engine.api.problems import FieldError, ProblemError, invalid
from engine.api.tenancy import visible_dealers


class CustomerUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Editable contact fields. First and last name are listed only to refuse them clearly."""

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    email_confirm: str | None = None
    phone: str | None = None
    phone_type: Literal["mobile", "home", "work"] | None = None
    language: Literal["en", "es", "fr"] | None = None
    address: Address | None = None


class EnterpriseGroup(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The enterprise group (None removes it)."""

    enterprise_group: str | None


@post(
    "/customers",
    summary="Create a customer (the whole flow in one request)",
    before_request=report_decode_errors,
)
async def create_customer(state: State, caller: Caller, data: CustomerCreate) -> CustomerCreated:
    """Validates every step; on any error a 422 problem lists each field and rule and nothing is written."""
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        try:
            plan = await plan_creation(conn, caller, msgspec.to_builtins(data))
        except Invalid as exc:
            raise invalid(exc.errors, warnings=exc.warnings) from None
        customer_id = await insert_customer(conn, caller, plan)
        customer = await fetch_customer(conn, caller, customer_id)
    return CustomerCreated(customer=customer, summary=plan.summary, warnings=plan.warnings)


@post(
    "/customers/validate",
    summary="Validate a creation and get the confirmation summary",
    status_code=200,
    before_request=report_decode_errors,
)
async def validate_customer(state: State, caller: Caller, data: CustomerCreate) -> Validation:
    """A dry run of POST /v1/customers: nothing is written."""
    async with state.pool.acquire() as conn:
        try:
            plan = await plan_creation(conn, caller, msgspec.to_builtins(data))
        except Invalid as exc:
            return Validation(
                valid=False,
                summary=None,
                warnings=exc.warnings,
                errors=[msgspec.to_builtins(e) for e in exc.errors],
            )
    return Validation(valid=True, summary=plan.summary, warnings=plan.warnings, errors=[])


@get("/customers", summary="List customers")
async def list_customers(
    state: State,
    caller: Caller,
    status: Literal["active", "commitment", "terminated"] | None = None,
    dealer_id: int | None = None,
    limit: int = Parameter(default=50, ge=1, le=500),
    cursor: int | None = Parameter(default=None, ge=0),
) -> Page[Customer]:
    """The caller's customers (a dealer: its own and its sub-dealers'), in id order.
    ``dealer_id``: that dealer's customers, also those it serves as their sub-dealer."""
    visible = await visible_dealers(state.pool, caller)
    limit = clamp_limit(limit)
    rows = await state.pool.fetch(
        CUSTOMER_SELECT
        + """ WHERE ($1::bigint[] IS NULL OR c.dealer_id = ANY($1) OR c.sub_dealer_id = ANY($1))
              AND ($2::text IS NULL OR c.status = $2) AND ($3::bigint IS NULL OR c.dealer_id = $3 OR c.sub_dealer_id = $3)
              AND c.id > $4 ORDER BY c.id LIMIT $5""",
        visible,
        status,
        dealer_id,
        cursor or 0,
        limit + 1,
    )
    items = [customer_from_row(r) for r in rows[:limit]]
    return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)


@get("/customers/{customer_id:int}", summary="Get a customer")
async def get_customer(state: State, caller: Caller, customer_id: int) -> Customer:
    """404 when it does not exist or belongs to another dealer."""
    return await fetch_customer(state.pool, caller, customer_id)


@patch("/customers/{customer_id:int}", summary="Edit a customer's contact details")
async def update_customer(
    state: State, caller: Caller, customer_id: int, data: CustomerUpdate
) -> Customer:
    """Email (twice), phone and its type, language, address. First and last name are not editable
    after creation. The changed contact section is checked with the creation rules (step 2b)."""
    require_write(caller)
    errors: list[FieldError] = []
    for name in ("first_name", "last_name"):
        if getattr(data, name) is not None:
            errors.append(
                FieldError(
                    field=name, rule="immutable", message=f"{name} cannot be changed after creation"
                )
            )
    if (data.email is None) != (data.email_confirm is None):
        errors.append(
            FieldError(
                field="email_confirm",
                rule="emails_match",
                message="a new email address is entered twice: give email and email_confirm",
            )
        )
    if errors:
        raise invalid(errors)
    changes: dict[str, Any] = {
        k: v
        for k, v in msgspec.to_builtins(data).items()
        if v is not None and k not in {"first_name", "last_name", "email_confirm"}
    }
    async with state.pool.acquire() as conn, conn.transaction():
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        doc = document_of(before)
        merged = {**doc["customer"], **changes}
        merged["email_confirm"] = data.email_confirm if data.email is not None else merged["email"]
        try:
            info = msgspec.convert(merged, CustomerInfo)
        except msgspec.ValidationError as exc:
            raise invalid([FieldError(field="customer", rule="type", message=str(exc))]) from None
        checked = check_customer(info, errors)
        if errors:
            # The creation rules name fields as "customer.<field>"; this body is the section itself.
            raise invalid(
                [
                    msgspec.structs.replace(e, field=e.field.removeprefix("customer."))
                    for e in errors
                ]
            )
        doc["customer"] = msgspec.to_builtins(checked)
        doc["customer"].pop("email_confirm", None)
        await conn.execute(
            "UPDATE customers SET document = $2::jsonb, updated_at = now() WHERE id = $1",
            customer_id,
            msgspec.json.encode(doc).decode(),
        )
        after = await fetch_customer(conn, caller, customer_id)
        await audit.record(
            conn,
            caller,
            action="update",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before=before.document["customer"],
            after=after.document["customer"],
        )
    return after


@put("/customers/{customer_id:int}/enterprise-group", summary="Set or clear the enterprise group")
async def set_enterprise_group(
    state: State, caller: Caller, customer_id: int, data: EnterpriseGroup
) -> Customer:
    """Only with a commercial package and the enterprise add-on."""
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        if data.enterprise_group is not None:
            package = before.document.get("package") or {}
            codes = [package.get("base"), *(package.get("addons") or [])]
            # FOR SHARE: a concurrent PUT /packages taking what allows the group waits for this.
            packages = await load_packages(conn, [c for c in codes if c], for_share=True)
            base = packages.get(package.get("base") or "")
            addons = [packages[a] for a in package.get("addons") or [] if a in packages]
            if not data.enterprise_group.strip() or len(data.enterprise_group) > 100:
                raise invalid(
                    [
                        FieldError(
                            field="enterprise_group", rule="length", message="1-100 characters"
                        )
                    ]
                )
            if not enterprise_eligible(base, addons):
                raise invalid(
                    [
                        FieldError(
                            field="enterprise_group",
                            rule="enterprise_eligible",
                            message="an enterprise group needs a commercial package and the enterprise add-on",
                        )
                    ]
                )
        await conn.execute(
            "UPDATE customers SET enterprise_group = $2, document = jsonb_set(document, '{enterprise_group}', coalesce(to_jsonb($2::text), 'null'::jsonb)), updated_at = now() WHERE id = $1",
            customer_id,
            data.enterprise_group,
        )
        await audit.record(
            conn,
            caller,
            action="set_enterprise_group",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before={"enterprise_group": before.enterprise_group},
            after={"enterprise_group": data.enterprise_group},
        )
        return await fetch_customer(conn, caller, customer_id)


CUSTOMER_HANDLERS = [
    create_customer,
    validate_customer,
    list_customers,
    get_customer,
    update_customer,
    set_enterprise_group,
]
__all__ = ["CUSTOMER_HANDLERS", "ProblemError"]
