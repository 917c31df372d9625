"""Signals asked of a virtual customer's module go to that customer's account only."""

from __future__ import annotations

import httpx

from engine.virtual_modules import _CLAIM_REQUESTS
from tests.engine.api.catalog_setup import create_packages, security_request
from tests.engine.api.conftest import Api

DEMO_SERIAL = "DEMO"  # a virtual module's own serial: two dealers' demos may well share it


class TestAfterTermination:
    async def test_a_queued_request_is_not_sent_to_the_next_holder_of_the_account(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Acme queues a fire alarm for its demo customer and terminates it before an engine
        sent it; Other's new demo customer with the same serial (so the same account number)
        would have received that fire alarm: the engine sends a request to any live virtual
        account of its number. Terminating settles the customer's queued requests: not sent."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        demo = security_request(acme, DEMO_SERIAL, virtual=True)
        demo["system"]["module_type"] = "lte"
        old = await admin.post("/v1/customers", json=demo)
        assert old.status_code == 201, old.text
        old_id = old.json()["customer"]["id"]
        queued = await admin.post(
            f"/v1/customers/{old_id}/virtual-signals", json={"preset": "fire"}
        )
        assert queued.status_code == 202, queued.text
        ended = await admin.post(f"/v1/customers/{old_id}/terminate", json={})
        assert ended.status_code == 200, ended.text

        demo = security_request(other, DEMO_SERIAL, virtual=True, login={"login_name": "demo2"})
        demo["system"]["module_type"] = "lte"
        new = await admin.post("/v1/customers", json=demo)
        assert new.status_code == 201, new.text
        assert new.json()["customer"]["account"] == old.json()["customer"]["account"]

        async with api.pool.acquire() as conn, conn.transaction():
            claimed = await conn.fetch(_CLAIM_REQUESTS, 100)
        assert [r["id"] for r in claimed if r["live"]] == []
        requests = (await admin.get(f"/v1/customers/{old_id}/virtual-signals")).json()
        assert [(r["state"], r["result"]) for r in requests] == [
            ("not_sent", "not sent: the customer was terminated")
        ]
