"""Tenancy: every customer route answers 404 to a dealer outside the customer's dealer tree
(another dealer, a sub-dealer of the owner, another dealer's read-only key), and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx

from tests.engine.api.catalog_setup import create_packages, create_station, imei, security_request
from tests.engine.api.conftest import Api

SWAP_TO = imei("35693803564381")
# Every operation on /v1/customers/{customer_id}…, with a body that decodes (so the answer comes
# from the handler, not from body validation). The test fails when a new route is not listed here.
OPERATIONS: dict[tuple[str, str], dict[str, Any] | None] = {
    ("GET", ""): None,
    ("PATCH", ""): {"phone": "5125550199"},
    ("PUT", "/enterprise-group"): {"enterprise_group": None},
    ("PUT", "/forwarding"): {"mode": "never"},
    ("PUT", "/package"): {"base": "res-basic"},
    ("PUT", "/dialer-delay"): {"dialer_delay_s": 30},
    ("POST", "/terminate"): {"reason": "not yours"},
    ("GET", "/virtual-signals"): None,
    ("POST", "/virtual-signals"): {"preset": "fire"},
    ("GET", "/state"): None,
    ("POST", "/module-swap"): {"serial": SWAP_TO, "module_type": "lte"},
    ("GET", "/modules"): None,
    ("GET", "/signals"): None,
    ("POST", "/welcome-letter"): None,
    ("POST", "/welcome-letter/send"): None,
}
PREFIX = "/v1/customers/{customer_id}"


async def _snapshot(api: Api, customer: int) -> tuple[Any, ...]:
    pool = api.pool
    return (
        await pool.fetchval("SELECT count(*) FROM audit_log"),
        await pool.fetchval(
            "SELECT document::text || status || coalesce(module_serial, '') FROM customers WHERE id = $1",
            customer,
        ),
        await pool.fetchval(
            "SELECT row_to_json(a)::text FROM accounts a JOIN customers c ON c.account = a.account "
            "WHERE c.id = $1",
            customer,
        ),
        await pool.fetchval("SELECT count(*) FROM setup_tokens"),
        await pool.fetchval("SELECT count(*) FROM virtual_requests"),
        await pool.fetchval("SELECT count(*) FROM customer_modules"),
    )


class TestCustomerRoutes:
    async def test_every_customer_route_is_listed(self, api: Api) -> None:
        """The operations below are all the customer routes of the OpenAPI document."""
        doc = (await api.client(None).get("/schema/openapi.json")).json()
        documented = {
            (method.upper(), path.removeprefix(PREFIX))
            for path, item in doc["paths"].items()
            if path.startswith(PREFIX)
            for method in item
            if method in {"get", "put", "post", "patch", "delete"}
        }
        assert documented == set(OPERATIONS)

    async def test_outsiders_get_404_and_change_nothing(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Another dealer, the owner's sub-dealer and another dealer's read-only key: 404 on every
        route; the customer, its engine account, its audit trail and letters stay as they were."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        north = await api.dealer("Acme North", acme)
        other = await api.dealer("Other")
        other_sub = await api.dealer("Other South", other)
        await create_station(api.pool, acme)
        created = await admin.post(
            "/v1/customers",
            json=security_request(acme, imei("49015420323751"), virtual=True),
        )
        assert created.status_code == 201, created.text
        customer = int(created.json()["customer"]["id"])
        before = await _snapshot(api, customer)

        outsiders = {
            "other dealer": api.client(await api.key("dealer", other)),
            "other's sub-dealer": api.client(await api.key("dealer", other_sub)),
            "owner's sub-dealer": api.client(await api.key("dealer", north)),
        }
        for who, client in outsiders.items():
            for (method, suffix), body in OPERATIONS.items():
                url = PREFIX.format(customer_id=customer) + suffix
                response = await client.request(method, url, json=body)
                assert response.status_code == 404, (who, method, url, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                assert response.json()["detail"] == "customer not found"
            listed = (await client.get("/v1/customers")).json()["items"]
            assert customer not in [c["id"] for c in listed], who
            audit = (
                await client.get(
                    "/v1/audit", params={"resource": "customer", "resource_id": str(customer)}
                )
            ).json()["items"]
            assert audit == [], who
        reader = api.client(await api.key("read-only", other))
        for method, suffix in OPERATIONS:
            if method == "GET":
                url = PREFIX.format(customer_id=customer) + suffix
                assert (await reader.get(url)).status_code == 404, url
        assert await _snapshot(api, customer) == before

        owner = api.client(await api.key("dealer", acme))
        assert (await owner.get(f"/v1/customers/{customer}")).status_code == 200
        changed = await owner.patch(f"/v1/customers/{customer}", json={"phone": "5125550199"})
        assert changed.status_code == 200, changed.text

    async def test_commitment_of_another_dealer_cannot_be_activated(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Activating another dealer's commitment is a 404 and leaves it a commitment."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        request = security_request(acme, "")
        del request["system"]
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"]
        response = await api.client(await api.key("dealer", other)).post(
            f"/v1/commitments/{commitment['commitment_id']}/activate",
            json={"system": {"serial": imei("49015420323751"), "module_type": "lte"}},
        )
        assert response.status_code == 404
        status = await api.pool.fetchval(
            "SELECT status FROM customers WHERE id = $1", commitment["id"]
        )
        assert status == "commitment"
        assert await api.pool.fetchval("SELECT count(*) FROM accounts") == 0

    async def test_sub_dealer_customer_tree(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A customer of sub-dealer North (dealer Acme) is seen by North and Acme, not by South."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        north = await api.dealer("North", acme)
        south = await api.dealer("South", acme)
        acme_client = api.client(await api.key("dealer", acme))
        request = security_request(acme, imei("49015420323751"))
        request["dealer"]["sub_dealer_id"] = north
        created = await acme_client.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        customer = created.json()["customer"]["id"]
        assert created.json()["customer"]["sub_dealer_id"] == north
        for dealer, status in ((acme, 200), (north, 200), (south, 404)):
            client = api.client(await api.key("dealer", dealer))
            assert (await client.get(f"/v1/customers/{customer}")).status_code == status
            signals = await client.get(f"/v1/customers/{customer}/signals")
            assert signals.status_code == status

    async def test_sub_dealer_customer_listed_and_audited_for_it(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A customer of sub-dealer North (dealer Acme) is listed under ``dealer_id=North`` (as
        North's own key lists it), and North sees its audit trail; South sees neither."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        north = await api.dealer("North", acme)
        south = await api.dealer("South", acme)
        acme_client = api.client(await api.key("dealer", acme))
        request = security_request(acme, imei("49015420323751"))
        request["dealer"]["sub_dealer_id"] = north
        created = await acme_client.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        customer = created.json()["customer"]["id"]
        for client, dealer_id in ((acme_client, north), (admin, north)):
            listed = await client.get("/v1/customers", params={"dealer_id": dealer_id})
            assert [c["id"] for c in listed.json()["items"]] == [customer]
        listed = await acme_client.get("/v1/customers", params={"dealer_id": south})
        assert listed.json()["items"] == []
        trail = {"resource": "customer", "resource_id": str(customer)}
        for dealer, entries in ((north, ["create"]), (south, [])):
            client = api.client(await api.key("dealer", dealer))
            audit = (await client.get("/v1/audit", params=trail)).json()["items"]
            assert [e["action"] for e in audit] == entries

    async def test_sub_dealer_activates_the_commitment_it_serves(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Acme's commitment assigned to sub-dealer North is activated by North's installer (it
        was refused on dealer.dealer_id, a field not in the activation, though North sees the
        commitment); the customer stays Acme's. South still gets 404."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        north = await api.dealer("North", acme)
        south = await api.dealer("South", acme)
        request = security_request(acme, "")
        del request["system"]
        request["dealer"]["sub_dealer_id"] = north
        created = await api.client(await api.key("dealer", acme)).post(
            "/v1/commitments", json=request
        )
        assert created.status_code == 201, created.text
        url = f"/v1/commitments/{created.json()['customer']['commitment_id']}/activate"
        activation = {"system": {"serial": imei("49015420323751"), "module_type": "lte", "panel_type": "wireless-panel"}}  # fmt: skip
        outsider = api.client(await api.key("dealer", south))
        assert (await outsider.post(url, json=activation)).status_code == 404
        activated = await api.client(await api.key("dealer", north)).post(url, json=activation)
        assert activated.status_code == 200, activated.text
        customer = activated.json()["customer"]
        assert (customer["status"], customer["dealer_id"], customer["sub_dealer_id"]) == (
            "active",
            acme,
            north,
        )
