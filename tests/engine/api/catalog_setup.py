"""A small catalogue for API tests: packages, a station with receivers, valid IMEIs."""

from __future__ import annotations

from typing import Any

import httpx

from engine.api.serials import luhn_ok

PACKAGES: list[dict[str, Any]] = [
    {
        "code": "res-basic",
        "name": "Residential Basic",
        "kind": "base",
        "account_types": ["security_system"],
        "monthly_price_cents": 2999,
    },
    {
        "code": "res-voice",
        "name": "Residential Voice",
        "kind": "base",
        "account_types": ["security_system"],
        "monthly_price_cents": 3999,
        "includes": ["two_way_voice"],
    },
    {
        "code": "biz",
        "name": "Business",
        "kind": "base",
        "account_types": ["security_system"],
        "commercial": True,
        "monthly_price_cents": 5999,
    },
    {
        "code": "video",
        "name": "Video Only",
        "kind": "base",
        "account_types": ["video_access"],
        "monthly_price_cents": 1999,
        "includes": ["video", "images"],
    },
    {
        "code": "smart",
        "name": "Automation",
        "kind": "base",
        "account_types": ["automation"],
        "monthly_price_cents": 999,
        "includes": ["energy_management"],
    },
    {
        "code": "enterprise",
        "name": "Enterprise",
        "kind": "addon",
        "account_types": ["security_system"],
        "monthly_price_cents": 1000,
        "includes": ["enterprise"],
    },
    {
        "code": "sup6",
        "name": "6-hour supervision",
        "kind": "addon",
        "account_types": ["security_system"],
        "monthly_price_cents": 500,
        "includes": ["supervision_6h"],
    },
]


def imei(body: str) -> str:
    """A 15-digit IMEI with a correct Luhn check digit for a 14-digit body."""
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


async def create_packages(admin: httpx.AsyncClient) -> None:
    """The test catalogue of packages and add-ons."""
    for package in PACKAGES:
        response = await admin.post("/v1/packages", json=package)
        assert response.status_code == 201, response.text


async def create_station(
    pool: Any, dealer_id: int | None, *, two_way_voice: bool = True, name: str = "Central"
) -> str:
    """A station (registered by ``dealer_id``) with one IP receiver ``<name>-r1``; the receiver name."""
    await pool.execute("INSERT INTO stations (name, own) VALUES ($1, false)", name)
    receiver = f"{name}-r1"
    await pool.execute(
        "INSERT INTO receivers (name, station, kind, host, port, receiver_number, line_prefix, two_way_voice) "
        "VALUES ($1, $2, 'ip', '127.0.0.1', 9999, '1', '1', $3)",
        receiver,
        name,
        two_way_voice,
    )
    if dealer_id is not None:
        await pool.execute(
            "INSERT INTO dealer_stations (station, dealer_id) VALUES ($1, $2)", name, dealer_id
        )
    return receiver


def security_request(dealer_id: int, serial: str, **overrides: Any) -> dict[str, Any]:
    """A valid security-system creation request, with top-level sections replaced by ``overrides``."""
    request: dict[str, Any] = {
        "account_type": "security_system",
        "dealer": {"dealer_id": dealer_id, "property_type": "residential", "install_type": "new"},
        "customer": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@example.com",
            "email_confirm": "ada@example.com",
            "phone": "+1 (512) 555-0100",
            "phone_type": "mobile",
            "language": "en",
            "address": {
                "country": "US",
                "street1": "1 Main St",
                "city": "Austin",
                "state": "TX",
                "zip": "78701",
            },
            "installed_at_primary_address": True,
        },
        "operations": {"sales_rep": "Bob", "contract_length_months": 36, "customer_source": "web"},
        "system": {"serial": serial, "module_type": "lte-voice", "panel_type": "wireless-panel"},
        "package": {"base": "res-basic"},
        "forwarding": {"mode": "never"},
    }
    request.update(overrides)
    return request
