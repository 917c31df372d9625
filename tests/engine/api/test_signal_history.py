"""A customer's signal history: only the signals of its own module, within its own time."""

from __future__ import annotations

import httpx

from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api

SERIAL = imei("49015420323751")


async def _signal(api: Api, account: str, seq: str) -> None:
    await api.pool.execute(
        "INSERT INTO signals (received_at, account, transport, kind, seq) "
        "VALUES (now(), $1, 'tcp', 'event', $2)",
        account,
        seq,
    )


class TestHistoryWindow:
    async def test_commitment_activated_with_a_reused_module_shows_none_of_the_old_customer(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Dealer Other stores a commitment; Acme's customer with the module (a takeover) sends
        a signal and is terminated; Other activates its commitment with that module. The account
        number is the same, but Other's history starts at its activation: Acme's customer's
        alarm is not shown to Other."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        other_client = api.client(await api.key("dealer", other))
        request = security_request(other, "", login={"login_name": "takeover"})
        del request["system"]
        commitment = await other_client.post("/v1/commitments", json=request)
        assert commitment.status_code == 201, commitment.text
        commitment_id = commitment.json()["customer"]["commitment_id"]
        new_id = commitment.json()["customer"]["id"]

        old = await admin.post("/v1/customers", json=security_request(acme, SERIAL))
        assert old.status_code == 201, old.text
        old_id = old.json()["customer"]["id"]
        await _signal(api, old.json()["customer"]["account"], "0001")
        ended = await admin.post(f"/v1/customers/{old_id}/terminate", json={})
        assert ended.status_code == 200, ended.text

        activated = await other_client.post(
            f"/v1/commitments/{commitment_id}/activate",
            json={
                "system": {
                    "serial": SERIAL,
                    "module_type": "lte-voice",
                    "panel_type": "wireless-panel",
                }
            },
        )
        assert activated.status_code == 200, activated.text
        account = activated.json()["customer"]["account"]
        assert account == old.json()["customer"]["account"]
        await _signal(api, account, "0002")

        history = (await other_client.get(f"/v1/customers/{new_id}/signals")).json()["items"]
        assert [s["seq"] for s in history] == ["0002"]
        old_history = (await admin.get(f"/v1/customers/{old_id}/signals")).json()["items"]
        assert [s["seq"] for s in old_history] == ["0001"]
