"""``/v1/customers/{id}/virtual-signals``: make a virtual customer's simulated module send a signal.

The request is queued; an engine sends it through the ingest pipeline within ``virtual.poll_s``
(see engine/virtual_modules.py), so the signal meets the real policy, forwarding and delivery.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

import msgspec
from litestar import get, post
from litestar.datastructures import State

from engine.api import audit
from engine.api.auth import Caller, require_write
from engine.api.customer_store import fetch_customer
from engine.api.problems import FieldError, ProblemError, invalid
from protocols.mqtt_payloads import MqttPayloadError, decode_events

Preset = Literal[
    "burglary",
    "fire",
    "panic",
    "medical",
    "co",
    "tamper",
    "opening",
    "closing",
    "ac_trouble",
    "ac_restore",
    "test",
    "entry_delay",
]

# Contact ID events of each preset, as an MQTT events payload carries them (docs/mqtt.md).
PRESETS: dict[str, dict[str, Any]] = {
    "burglary": {"events": [{"family": "cid", "code": "130", "zone": 3, "partition": 1}]},
    "fire": {"events": [{"family": "cid", "code": "110", "zone": 1, "partition": 1}]},
    "panic": {"events": [{"family": "cid", "code": "120", "zone": 0, "partition": 1}]},
    "medical": {"events": [{"family": "cid", "code": "100", "zone": 0, "partition": 1}]},
    "co": {"events": [{"family": "cid", "code": "162", "zone": 2, "partition": 1}]},
    "tamper": {"events": [{"family": "cid", "code": "137", "zone": 0, "partition": 1}]},
    "opening": {
        "events": [{"family": "cid", "code": "401", "qualifier": "1", "user": 1, "partition": 1}]
    },
    "closing": {
        "events": [{"family": "cid", "code": "401", "qualifier": "3", "user": 1, "partition": 1}]
    },
    "ac_trouble": {"events": [{"family": "cid", "code": "301", "qualifier": "1", "zone": 0}]},
    "ac_restore": {"events": [{"family": "cid", "code": "301", "qualifier": "3", "zone": 0}]},
    "test": {"events": [{"family": "cid", "code": "602", "zone": 0}]},
    "entry_delay": {"entry_delay": {"partition": 1, "zone": 1, "entry_delay_s": 30}},
}


class VirtualSignal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A preset, or events (and/or an entry delay) in the MQTT events format."""

    preset: Preset | None = None
    events: list[dict[str, Any]] | None = None
    entry_delay: dict[str, Any] | None = None
    dialer_failed: bool = False


class VirtualRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A queued request and, once an engine has sent it, its result."""

    id: int
    account: str
    payload: dict[str, Any]
    created_at: datetime
    state: Literal["queued", "sent", "not_sent"]
    result: str | None
    signal_at: datetime | None


def _payload(data: VirtualSignal) -> dict[str, Any]:
    """The MQTT events payload of a request, validated like a module's; 422 on a problem."""
    given = data.events is not None or data.entry_delay is not None
    if (data.preset is None) == (not given):
        raise invalid(
            [
                FieldError(
                    field="preset",
                    rule="one_of",
                    message="give a preset, or events and/or entry_delay (not both)",
                )
            ]
        )
    body: dict[str, Any] = (
        dict(PRESETS[data.preset])
        if data.preset is not None
        else {
            k: v
            for k, v in (("events", data.events), ("entry_delay", data.entry_delay))
            if v is not None
        }
    )
    payload = {"v": 1, "msg_id": "virtual-" + secrets.token_hex(6), **body}
    if data.dialer_failed:
        payload["dialer_failed"] = True
    try:
        decode_events(msgspec.json.encode(payload))
    except MqttPayloadError as exc:
        raise invalid([FieldError(field="events", rule="mqtt_events", message=str(exc))]) from None
    return payload


def _request(row: Any) -> VirtualRequest:
    result = row["result"]
    state: Literal["queued", "sent", "not_sent"] = (
        "queued"
        if row["done_at"] is None
        else "sent"
        if result in {"accepted", "duplicate"}
        else "not_sent"
    )
    return VirtualRequest(
        id=row["id"],
        account=row["account"],
        payload=msgspec.json.decode(row["payload"]),
        created_at=row["created_at"],
        state=state,
        result=result,
        signal_at=row["signal_at"],
    )


_SELECT = (
    "SELECT id, account, payload::text AS payload, created_at, done_at, result, signal_at "
    "FROM virtual_requests"
)


@post(
    "/customers/{customer_id:int}/virtual-signals",
    summary="Make a virtual customer's module send a signal",
    status_code=202,
)
async def send_virtual_signal(
    state: State, caller: Caller, customer_id: int, data: VirtualSignal
) -> VirtualRequest:
    """Queued at once (202); an engine sends it within ``virtual.poll_s``. Presets are Contact ID
    events (burglary 130, fire 110, panic 120, medical 100, CO 162, tamper 137, opening/closing
    401, AC trouble/restore 301, test 602) or an entry delay (Crash & Smash)."""
    require_write(caller)
    payload = _payload(data)
    async with state.pool.acquire() as conn, conn.transaction():
        customer = await fetch_customer(conn, caller, customer_id)
        if not customer.virtual or customer.status != "active" or customer.account is None:
            raise ProblemError(
                409, "Conflict", "only a live virtual customer has a simulated module"
            )
        row = await conn.fetchrow(
            "INSERT INTO virtual_requests (account, customer_id, payload) VALUES ($1, $2, $3::jsonb) "
            "RETURNING id, account, payload::text AS payload, created_at, done_at, result, signal_at",
            customer.account,
            customer_id,
            msgspec.json.encode(payload).decode(),
        )
        await audit.record(
            conn,
            caller,
            action="virtual_signal",
            resource="customer",
            resource_id=customer_id,
            dealer_id=customer.dealer_id,
            after=payload,
        )
    return _request(row)


@get("/customers/{customer_id:int}/virtual-signals", summary="Signals asked of a virtual module")
async def list_virtual_signals(
    state: State, caller: Caller, customer_id: int
) -> list[VirtualRequest]:
    """The latest 100 requests, newest first, with their state (queued, sent, not_sent)."""
    await fetch_customer(state.pool, caller, customer_id)
    rows = await state.pool.fetch(
        _SELECT + " WHERE customer_id = $1 ORDER BY id DESC LIMIT 100", customer_id
    )
    return [_request(r) for r in rows]


VIRTUAL_SIGNAL_HANDLERS = [send_virtual_signal, list_virtual_signals]
