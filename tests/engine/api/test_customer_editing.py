"""Editing a created customer's contact details: the creation rules apply again, names never change."""

from __future__ import annotations

from typing import Any

import httpx

from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api, problem_rules


async def _customer(api: Api, admin: httpx.AsyncClient) -> int:
    await create_packages(admin)
    dealer = await api.dealer("Acme")
    created = await admin.post(
        "/v1/customers", json=security_request(dealer, imei("49015420323751"))
    )
    assert created.status_code == 201, created.text
    return int(created.json()["customer"]["id"])


async def _refused(admin: httpx.AsyncClient, customer: int, body: dict[str, Any]) -> set[Any]:
    before = (await admin.get(f"/v1/customers/{customer}")).json()["document"]
    response = await admin.patch(f"/v1/customers/{customer}", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (await admin.get(f"/v1/customers/{customer}")).json()["document"] == before
    return problem_rules(response.json())


class TestContactRules:
    async def test_email_checked_like_at_creation(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A new email must be an address and be entered twice, identically; nothing changes otherwise."""
        customer = await _customer(api, admin)
        assert ("email", "email") in await _refused(
            admin, customer, {"email": "nope", "email_confirm": "nope"}
        )
        assert ("email_confirm", "emails_match") in await _refused(
            admin, customer, {"email": "ada@example.net", "email_confirm": "ada@example.org"}
        )
        assert ("email_confirm", "emails_match") in await _refused(
            admin, customer, {"email": "ada@example.net"}
        )
        changed = await admin.patch(
            f"/v1/customers/{customer}",
            json={"email": "ada@example.net", "email_confirm": "ADA@example.net"},
        )
        assert changed.status_code == 200, changed.text
        stored = changed.json()["document"]["customer"]
        assert stored["email"] == "ada@example.net" and "email_confirm" not in stored

    async def test_phone_and_type(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A phone number needs 7-15 digits; its type is one of mobile/home/work."""
        customer = await _customer(api, admin)
        assert ("phone", "phone") in await _refused(admin, customer, {"phone": "call me"})
        bad_type = await admin.patch(f"/v1/customers/{customer}", json={"phone_type": "fax"})
        assert bad_type.status_code == 400
        assert ("phone_type", "enum") in problem_rules(bad_type.json())
        changed = await admin.patch(
            f"/v1/customers/{customer}", json={"phone": "212 555 0100", "phone_type": "home"}
        )
        assert changed.status_code == 200, changed.text
        stored = changed.json()["document"]["customer"]
        assert (stored["phone"], stored["phone_type"]) == ("212 555 0100", "home")

    async def test_new_address_gets_its_time_zone(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A moved customer's time zone is detected from the new ZIP; a bad ZIP is refused."""
        customer = await _customer(api, admin)
        address = {"street1": "5 Broadway", "city": "New York", "state": "NY", "zip": "10001"}
        assert ("address.zip", "format") in await _refused(
            admin, customer, {"address": {**address, "zip": "1000"}}
        )
        changed = await admin.patch(f"/v1/customers/{customer}", json={"address": address})
        assert changed.status_code == 200, changed.text
        assert changed.json()["document"]["customer"]["address"]["time_zone"] == "America/New_York"
        chosen = await admin.patch(
            f"/v1/customers/{customer}",
            json={"address": {**address, "time_zone": "America/Chicago"}},
        )
        assert chosen.json()["document"]["customer"]["address"]["time_zone"] == "America/Chicago"

    async def test_names_immutable(self, api: Api, admin: httpx.AsyncClient) -> None:
        """First and last name are refused after creation, each named."""
        customer = await _customer(api, admin)
        rules = await _refused(admin, customer, {"first_name": "Augusta", "last_name": "King"})
        assert {("first_name", "immutable"), ("last_name", "immutable")} <= rules
        info = (await admin.get(f"/v1/customers/{customer}")).json()["document"]["customer"]
        assert (info["first_name"], info["last_name"]) == ("Ada", "Lovelace")


class TestDecodeErrors:
    async def test_missing_field_named_with_its_path(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A missing field is a 400 whose error names the field itself with rule "required"."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        request = security_request(dealer, imei("49015420323751"))
        del request["customer"]["email_confirm"]
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 400
        assert ("customer.email_confirm", "required") in problem_rules(response.json())

    async def test_bad_enum_and_unknown_field(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A value outside an enum is rule "enum"; an unknown field is rule "unknown"."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        request = security_request(dealer, imei("49015420323751"))
        request["customer"]["phone_type"] = "fax"
        response = await admin.post("/v1/customers", json=request)
        assert ("customer.phone_type", "enum") in problem_rules(response.json())
        request = security_request(dealer, imei("49015420323751"))
        request["customer"]["password"] = "secret"
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 400
        assert ("customer.password", "unknown") in problem_rules(response.json())

    async def test_every_step_reported_at_once(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Broken fields in several steps are listed together (creation, dry run, commitment); a
        caller without a key gets the 401 first."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        request = security_request(dealer, imei("49015420323751"))
        request["customer"]["phone_type"] = "fax"
        request["system"]["module_type"] = 5
        request["operations"]["contract_length_months"] = "many"
        request["colour"] = "red"
        expected = {
            ("customer.phone_type", "enum"),
            ("system.module_type", "type"),
            ("operations.contract_length_months", "type"),
            ("colour", "unknown"),
        }
        for url in ("/v1/customers", "/v1/customers/validate"):
            response = await admin.post(url, json=request)
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert problem_rules(response.json()) == expected
        del request["system"]
        commitment = await admin.post("/v1/commitments", json=request)
        assert problem_rules(commitment.json()) == expected - {("system.module_type", "type")}
        assert (await api.client(None).post("/v1/customers", json=request)).status_code == 401
        assert await api.pool.fetchval("SELECT count(*) FROM customers") == 0

    async def test_a_number_sent_as_a_string_is_a_type_error(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A number sent as a string was taken as litestar's lax conversion takes it; a value of
        another JSON type than its field's is a type error like any other (nothing created)."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        request = security_request(dealer, imei("49015420323751"))
        request["dealer"]["dealer_id"] = str(dealer)
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 400, response.text
        assert problem_rules(response.json()) == {("dealer.dealer_id", "type")}
        assert await api.pool.fetchval("SELECT count(*) FROM customers") == 0
