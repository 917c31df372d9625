"""Changes to a live customer after creation: forwarding, service package, dialer delay, termination.

Each change is validated with the same rules as the creation flow, written to the customer's
document and to the engine's ``accounts`` row in one transaction (the row's NOTIFY refreshes every
running engine at once), and audited with before/after.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from litestar import post, put
from litestar.datastructures import State

from engine.api import audit
from engine.api.auth import Caller, require_write
from engine.api.creation import check_forwarding, check_package, supervision_interval_for
from engine.api.customer_model import Customer, ForwardingStep, PackageStep
from engine.api.customer_store import document_of, fetch_customer
from engine.api.packages import (
    SUPERVISION_6H_S,
    SUPERVISION_DEFAULT_S,
    Quote,
    enterprise_eligible,
    load_packages,
    quote,
)
from engine.api.problems import FieldError, ProblemError, invalid
from engine.api.serials import MODULE_TYPES, ModuleType

_encoder = msgspec.json.Encoder()


class DialerDelay(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The panel's dialer delay, used by Crash & Smash (null: the engine's default)."""

    dialer_delay_s: int | None = msgspec.field(default=None)


class Termination(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why the account ends (kept in the audit log)."""

    reason: str = ""


def _live(customer: Customer) -> str:
    """The DC-09 account of a live customer, else 409 naming the status."""
    if customer.status != "active" or customer.account is None:
        raise ProblemError(
            409,
            "Conflict",
            f"the customer is {customer.status}: only a live account can be changed",
        )
    return customer.account


async def _current_module(conn: asyncpg.Connection, customer_id: int) -> ModuleType | None:
    code = await conn.fetchval(
        "SELECT module_type FROM customer_modules WHERE customer_id = $1 AND until IS NULL "
        "ORDER BY id DESC LIMIT 1",
        customer_id,
    )
    return MODULE_TYPES.get(code) if code else None


async def _current_package(conn: asyncpg.Connection, doc: dict[str, Any]) -> Quote | None:
    """The customer's package as sold, even if deactivated since (that only stops new sales)."""
    step = msgspec.convert(doc.get("package") or {}, PackageStep)
    if step.base is None:
        return None
    packages = await load_packages(conn, [step.base, *step.addons], for_share=True)
    if step.base not in packages or any(a not in packages for a in step.addons):
        return None
    return quote(packages[step.base], [packages[a] for a in step.addons])


async def _save_document(conn: asyncpg.Connection, customer_id: int, doc: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE customers SET document = $2::jsonb, updated_at = now() WHERE id = $1",
        customer_id,
        _encoder.encode(doc).decode(),
    )


@put("/customers/{customer_id:int}/forwarding", summary="Change monitoring-station forwarding")
async def set_forwarding(
    state: State, caller: Caller, customer_id: int, data: ForwardingStep
) -> Customer:
    """Step 7 again on a live account: mode, receiver, station account, events, two-way voice.

    Two-way voice is checked here as at creation (module capable, receiver supports it, package
    includes it); the error names what is missing.
    """
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        account = _live(before)
        doc = document_of(before)
        errors: list[FieldError] = []
        warnings: list[str] = []
        package = await _current_package(conn, doc)
        module = await _current_module(conn, customer_id)
        forwarding = await check_forwarding(
            conn,
            data,
            account_type=before.account_type,
            dealer_id=before.dealer_id,
            module=module,
            package=package,
            check_module=not (before.virtual and module is None),
            errors=errors,
            warnings=warnings,
        )
        if errors:
            raise invalid(errors, warnings=warnings)
        await conn.execute(
            "UPDATE accounts SET forwarding = $2::jsonb, updated_at = now() WHERE account = $1",
            account,
            _encoder.encode(forwarding).decode(),
        )
        doc["forwarding"] = msgspec.to_builtins(data)
        await _save_document(conn, customer_id, doc)
        await audit.record(
            conn,
            caller,
            action="update_forwarding",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before=before.document.get("forwarding"),
            after=doc["forwarding"],
        )
        return await fetch_customer(conn, caller, customer_id)


@put("/customers/{customer_id:int}/package", summary="Change the service package and add-ons")
async def set_package(
    state: State, caller: Caller, customer_id: int, data: PackageStep
) -> Customer:
    """Step 6 again: the supervision interval follows the package (6 h with ``supervision_6h``),
    unless the account has one of its own (UL's 200 s), which stays.

    A package without two-way voice is refused while the account's forwarding has it on, and
    one that does not allow an enterprise group while the customer has one.
    """
    require_write(caller)
    async with state.pool.acquire() as conn, conn.transaction():
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        account = _live(before)
        doc = document_of(before)
        errors: list[FieldError] = []
        current = doc.get("package") or {}
        # The base and add-ons the customer has stay choosable even if deactivated since.
        kept = frozenset(c for c in [current.get("base"), *(current.get("addons") or [])] if c)
        selected, package, packages = await check_package(
            conn, data, before.account_type, before.dealer_id, errors, kept=kept
        )
        if (
            package is not None
            and before.enterprise_group is not None
            and not enterprise_eligible(
                packages.get(selected.base or ""),
                [packages[a] for a in selected.addons if a in packages],
            )
        ):
            errors.append(
                FieldError(
                    field="package",
                    rule="enterprise_group_in_use",
                    message="the customer is in an enterprise group, which needs a commercial "
                    "package and the enterprise add-on: clear the group first",
                )
            )
        voice_on = bool((doc.get("forwarding") or {}).get("two_way_voice"))
        if package is not None and voice_on and "two_way_voice" not in package.includes:
            errors.append(
                FieldError(
                    field="package",
                    rule="two_way_voice_in_use",
                    message="two-way voice is on for this account: turn it off in forwarding first",
                )
            )
        if errors:
            raise invalid(errors)
        assert package is not None
        # 6 h with supervision_6h, else 24 h; an interval of the account's own (UL's 200 s, from
        # the accounts import) is kept, as when a package itself is edited.
        interval = await conn.fetchval(
            "UPDATE accounts SET supervision_interval_s = CASE WHEN supervision_interval_s "
            "IN ($3, $4) THEN $2 ELSE supervision_interval_s END, updated_at = now() "
            "WHERE account = $1 RETURNING supervision_interval_s",
            account,
            supervision_interval_for(package),
            SUPERVISION_6H_S,
            SUPERVISION_DEFAULT_S,
        )
        doc["package"] = msgspec.to_builtins(selected)
        await _save_document(conn, customer_id, doc)
        await audit.record(
            conn,
            caller,
            action="update_package",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before=before.document.get("package"),
            after={**doc["package"], "supervision_interval_s": interval},
        )
        return await fetch_customer(conn, caller, customer_id)


@put("/customers/{customer_id:int}/dialer-delay", summary="Set the panel's dialer delay")
async def set_dialer_delay(
    state: State, caller: Caller, customer_id: int, data: DialerDelay
) -> Customer:
    """0-600 s, or null for the engine's default (``crash_smash.dialer_delay_s``)."""
    require_write(caller)
    if data.dialer_delay_s is not None and not 0 <= data.dialer_delay_s <= 600:
        raise invalid(
            [FieldError(field="dialer_delay_s", rule="range", message="0-600 seconds, or null")]
        )
    async with state.pool.acquire() as conn, conn.transaction():
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        account = _live(before)
        previous = await conn.fetchval(
            "UPDATE accounts a SET dialer_delay_s = $2, updated_at = now() "
            "FROM accounts old WHERE a.account = $1 AND old.account = a.account "
            "RETURNING old.dialer_delay_s",
            account,
            data.dialer_delay_s,
        )
        doc = document_of(before)
        doc.setdefault("system", {})
        if doc["system"] is None:
            doc["system"] = {}
        doc["system"]["dialer_delay_s"] = data.dialer_delay_s
        await _save_document(conn, customer_id, doc)
        await audit.record(
            conn,
            caller,
            action="update_dialer_delay",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before={"dialer_delay_s": previous},
            after={"dialer_delay_s": data.dialer_delay_s},
        )
        return await fetch_customer(conn, caller, customer_id)


@post("/customers/{customer_id:int}/terminate", summary="Terminate a customer", status_code=200)
async def terminate(state: State, caller: Caller, customer_id: int, data: Termination) -> Customer:
    """The module stops being accepted (DUH) and is no longer supervised; billing ends; unused
    welcome-letter set-up links stop working.

    The customer, its signal history and its audit trail stay readable. Deliveries already
    queued for the station are still delivered: an acknowledged alarm is never dropped. A
    commitment can be terminated too (it was never billed).
    """
    require_write(caller)
    if len(data.reason) > 500:
        raise invalid([FieldError(field="reason", rule="length", message="at most 500 characters")])
    async with state.pool.acquire() as conn, conn.transaction():
        before = await fetch_customer(conn, caller, customer_id, for_update=True)
        if before.status == "terminated":
            raise ProblemError(409, "Conflict", "the customer is already terminated")
        if before.account is not None:
            # The virtual module's schedule first: an engine committing its check-in holds that
            # row until the check-in is committed, which needs the account and supervision rows.
            # Taken after them, each side waited for the other.
            await conn.execute("DELETE FROM virtual_schedule WHERE account = $1", before.account)
            # The number may go to a new customer: its panel's phone line starts working (a
            # commit that needs the state locks it before the account row, as here).
            await conn.execute("DELETE FROM account_state WHERE account = $1", before.account)
            await conn.execute("DELETE FROM accounts WHERE account = $1", before.account)
            await conn.execute("DELETE FROM supervision WHERE account = $1", before.account)
            # The number may go to a new customer (another dealer's): it starts with no Crash &
            # Smash entries and no remembered disarms of this one's module.
            await conn.execute("DELETE FROM pending_entries WHERE account = $1", before.account)
            await conn.execute("DELETE FROM entry_disarms WHERE account = $1", before.account)
        await conn.execute(
            "UPDATE customer_modules SET until = now() WHERE customer_id = $1 AND until IS NULL",
            customer_id,
        )
        # A virtual module's queued signals: an engine sends a request to whichever virtual
        # account has its number, which may be another customer's by the time it runs.
        await conn.execute(
            "UPDATE virtual_requests SET done_at = now(), result = 'not sent: the customer was "
            "terminated' WHERE customer_id = $1 AND done_at IS NULL",
            customer_id,
        )
        # A welcome letter's unused set-up link would still open the portal for a former customer.
        await conn.execute(
            "UPDATE setup_tokens SET revoked_at = now() "
            "WHERE customer_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
            customer_id,
        )
        ended: datetime | None = await conn.fetchval(
            """UPDATE customers SET status = 'terminated', terminated_at = now(),
                   billing_ended_at = CASE WHEN billing_started_at IS NULL THEN NULL ELSE now() END,
                   updated_at = now()
               WHERE id = $1 RETURNING terminated_at""",
            customer_id,
        )
        await audit.record(
            conn,
            caller,
            action="terminate",
            resource="customer",
            resource_id=customer_id,
            dealer_id=before.dealer_id,
            before={"status": before.status, "module_serial": before.module_serial},
            after={"status": "terminated", "terminated_at": ended, "reason": data.reason},
        )
        return await fetch_customer(conn, caller, customer_id)


CUSTOMER_CHANGE_HANDLERS = [set_forwarding, set_package, set_dialer_delay, terminate]
