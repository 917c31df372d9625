"""API keys, roles and tenancy on dealers; the audit log; problem documents; OpenAPI."""

from __future__ import annotations

import httpx

from tests.engine.api.conftest import Api


class TestAuth:
    async def test_no_key_is_401_problem(self, api: Api) -> None:
        """A request without a key is a 401 problem document naming the header to send."""
        response = await api.client(None).get("/v1/me")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "Bearer" in response.json()["detail"]

    async def test_unknown_key_is_401(self, api: Api) -> None:
        """A key that was never issued is refused."""
        response = await api.client("ar_not-a-key").get("/v1/me")
        assert response.status_code == 401

    async def test_401_says_how_to_authenticate(self, api: Api) -> None:
        """Every 401 carries WWW-Authenticate (RFC 9110 §15.5.2: a 401 must), so a client or
        proxy that answers the challenge knows to send a bearer key; it had none."""
        for key in (None, "ar_not-a-key"):
            response = await api.client(key).get("/v1/dealers")
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == 'Bearer realm="alarmrelay"'

    async def test_x_api_key_header(self, api: Api) -> None:
        """X-API-Key works like the bearer header."""
        client = httpx.AsyncClient(base_url=api.base_url, headers={"X-API-Key": api.admin_key})
        async with client:
            response = await client.get("/v1/me")
        assert response.status_code == 200
        assert response.json()["role"] == "admin"

    async def test_key_stored_hashed_and_shown_once(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A created key works, is not in the database in clear, and listing never shows it."""
        dealer = await api.dealer("Acme")
        created = await admin.post("/v1/api-keys", json={"role": "dealer", "dealer_id": dealer})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        stored = await api.pool.fetch("SELECT key_hash, prefix FROM api_keys")
        assert all(key != r["key_hash"] and key not in r["key_hash"] for r in stored)
        listing = await admin.get("/v1/api-keys")
        assert key not in listing.text
        me = await api.client(key).get("/v1/me")
        assert me.json() == {"key_id": created.json()["id"], "role": "dealer", "dealer_id": dealer}

    async def test_revoked_key_stops_working(self, api: Api, admin: httpx.AsyncClient) -> None:
        """After revocation the key is a 401."""
        created = (await admin.post("/v1/api-keys", json={"role": "read-only"})).json()
        assert (await admin.delete(f"/v1/api-keys/{created['id']}")).status_code == 204
        assert (await api.client(created["key"]).get("/v1/me")).status_code == 401

    async def test_dealer_key_needs_dealer(self, admin: httpx.AsyncClient) -> None:
        """A dealer key without dealer_id is a 422 naming the field."""
        response = await admin.post("/v1/api-keys", json={"role": "dealer"})
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "dealer_id"

    async def test_a_label_is_bounded(self, admin: httpx.AsyncClient) -> None:
        """A 100 kB label was stored and then listed with the key every time."""
        response = await admin.post("/v1/api-keys", json={"role": "read-only", "label": "x" * 201})
        assert response.status_code == 422
        assert [(e["field"], e["rule"]) for e in response.json()["errors"]] == [("label", "length")]
        taken = await admin.post("/v1/api-keys", json={"role": "read-only", "label": "x" * 200})
        assert taken.status_code == 201, taken.text

    async def test_dealer_cannot_create_keys(self, api: Api) -> None:
        """Key management is admin only."""
        dealer = await api.dealer("Acme")
        response = await api.client(await api.key("dealer", dealer)).post(
            "/v1/api-keys", json={"role": "admin"}
        )
        assert response.status_code == 403

    async def test_read_only_cannot_write(self, api: Api) -> None:
        """A read-only key reads but cannot create a dealer."""
        client = api.client(await api.key("read-only"))
        assert (await client.get("/v1/dealers")).status_code == 200
        assert (await client.post("/v1/dealers", json={"name": "x"})).status_code == 403


class TestDealerTenancy:
    async def test_dealer_sees_itself_and_sub_dealers_only(self, api: Api) -> None:
        """A dealer key lists its own tree; another dealer is a 404."""
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        client = api.client(await api.key("dealer", acme))
        sub = await client.post("/v1/dealers", json={"name": "Acme North"})
        assert sub.status_code == 201
        assert sub.json()["parent_id"] == acme
        listed = {d["id"] for d in (await client.get("/v1/dealers")).json()["items"]}
        assert listed == {acme, sub.json()["id"]}
        assert (await client.get(f"/v1/dealers/{other}")).status_code == 404
        assert (
            await client.patch(f"/v1/dealers/{other}", json={"name": "mine"})
        ).status_code == 404

    async def test_dealers_paginate(self, api: Api, admin: httpx.AsyncClient) -> None:
        """limit and next_cursor walk the list without repeats."""
        ids = [await api.dealer(f"D{i}") for i in range(5)]
        seen: list[int] = []
        cursor = None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await admin.get("/v1/dealers", params=params)).json()
            seen += [d["id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == ids


class TestAudit:
    async def test_changes_are_audited_with_before_after(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A rename leaves an entry with who, what and before/after."""
        dealer = await api.dealer("Acme")
        await admin.patch(f"/v1/dealers/{dealer}", json={"name": "Acme Inc"})
        entries = (
            await admin.get("/v1/audit", params={"resource": "dealer", "resource_id": str(dealer)})
        ).json()["items"]
        assert [e["action"] for e in entries] == ["update", "create"]
        assert entries[0]["before"]["name"] == "Acme" and entries[0]["after"]["name"] == "Acme Inc"
        assert entries[0]["role"] == "admin" and entries[0]["at"]

    async def test_dealer_sees_only_its_audit_entries(self, api: Api) -> None:
        """Another dealer's changes are not in a dealer's audit view."""
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        client = api.client(await api.key("dealer", acme))
        entries = (await client.get("/v1/audit")).json()["items"]
        assert {e["resource_id"] for e in entries} == {str(acme)}
        assert str(other) not in {e["resource_id"] for e in entries}


class TestOpenApi:
    async def test_document_and_docs_served(self, api: Api) -> None:
        """The OpenAPI document lists /v1 paths and the interactive docs page answers."""
        client = api.client(None)
        doc = (await client.get("/schema/openapi.json")).json()
        assert "/v1/dealers" in doc["paths"]
        for page in ("/schema/swagger", "/schema/redoc"):
            answer = await client.get(page)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith(
                "text/html"
            )

    async def test_unknown_route_is_problem(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A 404 route is a problem document too."""
        response = await admin.get("/v1/nothing-here")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")


class TestProblems:
    async def test_id_beyond_64_bits_is_404(self, admin: httpx.AsyncClient) -> None:
        """An id the database cannot hold names no customer: a 404 problem, not a 500."""
        response = await admin.post(
            "/v1/customers/968038469470537165403634794496/welcome-letter/send"
        )
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
