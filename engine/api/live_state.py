"""``GET /v1/customers/{id}/state``: what the engine knows of the account right now.

Phone line (for the "only if the phone line fails" mode), supervision deadline and Panel Not
Responding, Crash & Smash timers, first/last contact, queued and dead-lettered deliveries; the
same as ``alarmrelay state ACCOUNT``.
"""

from __future__ import annotations

from litestar import get
from litestar.datastructures import State

from engine.api.auth import Caller
from engine.api.customer_store import fetch_customer
from engine.api.problems import ProblemError
from engine.store.account_status import AccountStatus, account_status


@get("/customers/{customer_id:int}/state", summary="Live state of a customer's account")
async def customer_state(state: State, caller: Caller, customer_id: int) -> AccountStatus:
    """409 for a commitment or a terminated customer (no engine account)."""
    customer = await fetch_customer(state.pool, caller, customer_id)
    status = (
        await account_status(
            state.pool,
            customer.account,
            # billing starts when the account does (at creation, or a commitment's activation)
            since=customer.billing_started_at or customer.created_at,
        )
        if customer.account is not None and customer.status == "active"
        else None
    )
    if status is None:
        raise ProblemError(409, "Conflict", f"the customer is {customer.status}: no live account")
    return status


LIVE_STATE_HANDLERS = [customer_state]
