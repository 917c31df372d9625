"""Nothing half-created: concurrent requests racing for one login name, serial or swap target
end with exactly one winner, and the losers leave no customer, engine account or audit entry."""

from __future__ import annotations

import asyncio

import httpx

from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api

RACERS = 6


async def _counts(api: Api) -> tuple[int, int, int, int]:
    pool = api.pool
    return (
        await pool.fetchval("SELECT count(*) FROM customers"),
        await pool.fetchval("SELECT count(*) FROM accounts"),
        await pool.fetchval("SELECT count(*) FROM customer_modules"),
        await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE resource = 'customer' AND action = 'create'"
        ),
    )


class TestConcurrentCreation:
    async def test_one_login_name_one_customer(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Six creations with one login name and six serials: one customer, one engine account."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        requests = [
            security_request(dealer, imei(f"4901542032375{i}"), login={"login_name": "sameLogin"})
            for i in range(RACERS)
        ]
        clients = [api.client(api.admin_key) for _ in requests]
        answers = await asyncio.gather(
            *(c.post("/v1/customers", json=r) for c, r in zip(clients, requests, strict=True))
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses.count(201) == 1, [a.text for a in answers]
        for answer in answers:
            if answer.status_code != 201:
                assert answer.status_code in {409, 422}, answer.text
                assert {
                    "field": "login.login_name",
                    "rule": "unique",
                    "message": "login already in use",
                } in answer.json()["errors"]
        assert await _counts(api) == (1, 1, 1, 1)

    async def test_one_serial_one_account(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Six creations with one serial and six login names: one customer, one engine account."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        serial = imei("49015420323751")
        requests = [
            security_request(dealer, serial, login={"login_name": f"racer{i}"})
            for i in range(RACERS)
        ]
        clients = [api.client(api.admin_key) for _ in requests]
        answers = await asyncio.gather(
            *(c.post("/v1/customers", json=r) for c, r in zip(clients, requests, strict=True))
        )
        assert sorted(a.status_code for a in answers).count(201) == 1
        for answer in answers:
            if answer.status_code != 201:
                assert answer.status_code in {409, 422}, answer.text
                fields = {e["field"] for e in answer.json()["errors"]}
                assert fields & {"system.serial", "system.dc09_account"}, answer.text
        assert await _counts(api) == (1, 1, 1, 1)

    async def test_two_swaps_to_one_serial(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Two live accounts swapping to the same new module: one succeeds, the other is a
        conflict (not a server error) and keeps its module."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        ids = []
        for i in range(2):
            created = await admin.post(
                "/v1/customers",
                json=security_request(
                    dealer, imei(f"4901542032375{i}"), login={"login_name": f"swap{i}"}
                ),
            )
            assert created.status_code == 201, created.text
            ids.append(created.json()["customer"]["id"])
        target = imei("35693803564381")
        clients = [api.client(api.admin_key) for _ in ids]
        answers = await asyncio.gather(
            *(
                c.post(
                    f"/v1/customers/{i}/module-swap",
                    json={"serial": target, "module_type": "lte-voice"},
                )
                for c, i in zip(clients, ids, strict=True)
            )
        )
        assert sorted(a.status_code for a in answers)[0] == 200
        [loser] = [a for a in answers if a.status_code != 200]
        assert loser.status_code in {409, 422}, loser.text
        assert ("system.serial", "unique") in {
            (e["field"], e["rule"]) for e in loser.json()["errors"]
        }
        serials = await api.pool.fetch("SELECT module_serial FROM accounts ORDER BY account")
        assert sorted(r["module_serial"] for r in serials).count(target) == 1
        assert (
            await api.pool.fetchval("SELECT count(*) FROM customer_modules WHERE until IS NULL")
            == 2
        )
