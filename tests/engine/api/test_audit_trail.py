"""The audit log over a dealer's whole working day: every change made through the API is an
entry with who (key, role, dealer), what (action, resource, id), when, and before/after."""

from __future__ import annotations

import httpx

from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api

RECEIVER = {"name": "rx", "host": "127.0.0.1", "port": 9100, "two_way_voice": True}


class TestAuditTrail:
    async def test_every_change_is_an_entry(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Each change by a dealer key is in its audit view with before/after where a value
        changed, and nothing but those changes is there."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        key_answer = await admin.post("/v1/api-keys", json={"role": "dealer", "dealer_id": acme})
        me = api.client(key_answer.json()["key"])
        key_id = key_answer.json()["id"]
        done: list[tuple[str, str]] = []

        async def ok(response: httpx.Response, action: str, resource: str) -> httpx.Response:
            assert response.status_code < 300, response.text
            done.append((action, resource))
            return response

        await ok(await me.post("/v1/dealers", json={"name": "Acme North"}), "create", "dealer")
        await ok(
            await me.patch(f"/v1/dealers/{acme}", json={"name": "Acme Inc"}), "update", "dealer"
        )
        await ok(
            await me.post("/v1/stations", json={"name": "Central", "receivers": [RECEIVER]}),
            "create",
            "station",
        )
        await ok(
            await me.put("/v1/stations/Central/receivers/rx", json={**RECEIVER, "port": 9101}),
            "put_receiver",
            "station",
        )
        await ok(
            await me.post("/v1/package-templates", json={"name": "T", "base": "res-basic"}),
            "create",
            "package_template",
        )
        await ok(
            await me.post(
                "/v1/installation-templates", json={"kind": "panel", "name": "P", "body": {}}
            ),
            "create",
            "installation_template",
        )
        created = await ok(
            await me.post(
                "/v1/customers",
                json=security_request(acme, imei("49015420323751"), package={"base": "biz"}),
            ),
            "create",
            "customer",
        )
        customer = created.json()["customer"]["id"]
        url = f"/v1/customers/{customer}"
        await ok(await me.patch(url, json={"phone": "5125550199"}), "update", "customer")
        await ok(
            await me.put(f"{url}/package", json={"base": "biz", "addons": ["enterprise"]}),
            "update_package",
            "customer",
        )
        await ok(
            await me.put(f"{url}/enterprise-group", json={"enterprise_group": "HQ"}),
            "set_enterprise_group",
            "customer",
        )
        await ok(
            await me.put(
                f"{url}/forwarding",
                json={"mode": "always", "primary_receiver": "rx", "station_account": "1234"},
            ),
            "update_forwarding",
            "customer",
        )
        await ok(
            await me.put(f"{url}/dialer-delay", json={"dialer_delay_s": 45}),
            "update_dialer_delay",
            "customer",
        )
        await ok(
            await me.post(
                f"{url}/module-swap",
                json={"serial": imei("35693803564381"), "module_type": "lte-voice"},
            ),
            "module_swap",
            "customer",
        )
        await ok(await me.post(f"{url}/welcome-letter"), "welcome_letter", "customer")
        await ok(await me.post(f"{url}/welcome-letter/send"), "welcome_letter_send", "customer")
        second = security_request(acme, imei("49015420323752"), login={"login_name": "second"})
        draft = await ok(
            await me.post("/v1/drafts", json={"document": {"account_type": "security_system"}}),
            "create",
            "draft",
        )
        draft_url = f"/v1/drafts/{draft.json()['id']}"
        await ok(await me.patch(draft_url, json={"document": second}), "update", "draft")
        await ok(await me.post(f"{draft_url}/submit"), "submit", "draft")
        done.append(("create", "customer"))  # the submitted draft's customer
        throwaway = await ok(await me.post("/v1/drafts", json={"document": {}}), "create", "draft")
        await ok(await me.delete(f"/v1/drafts/{throwaway.json()['id']}"), "delete", "draft")
        commitment_request = security_request(acme, "", login={"login_name": "later"})
        del commitment_request["system"]
        commitment = await ok(
            await me.post("/v1/commitments", json=commitment_request),
            "create_commitment",
            "customer",
        )
        await ok(
            await me.post(
                f"/v1/commitments/{commitment.json()['customer']['commitment_id']}/activate",
                json={
                    "system": {
                        "serial": imei("49015420323753"),
                        "module_type": "lte",
                        "panel_type": "wireless-panel",
                    }
                },
            ),
            "activate",
            "customer",
        )
        await ok(
            await me.post(f"{url}/terminate", json={"reason": "moved"}), "terminate", "customer"
        )

        entries = []
        cursor = None
        while True:
            page = (
                await me.get(
                    "/v1/audit", params={"limit": 10} | ({"cursor": cursor} if cursor else {})
                )
            ).json()
            entries += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        mine = [e for e in entries if e["key_id"] == key_id]
        assert sorted((e["action"], e["resource"]) for e in mine) == sorted(done)
        assert all(e["role"] == "dealer" and e["actor_dealer"] == acme and e["at"] for e in mine)
        by_action = {e["action"]: e for e in reversed(mine)}
        for action, field, old, new in (
            ("update_dialer_delay", "dialer_delay_s", None, 45),
            ("set_enterprise_group", "enterprise_group", None, "HQ"),
            ("module_swap", "module_serial", imei("49015420323751"), imei("35693803564381")),
            ("terminate", "status", "active", "terminated"),
        ):
            entry = by_action[action]
            assert (entry["before"][field], entry["after"][field]) == (old, new), action
        forwarding = by_action["update_forwarding"]
        assert (forwarding["before"]["mode"], forwarding["after"]["mode"]) == ("never", "always")
        # The admin's own entries (dealer creation, the key) are not the dealer's changes.
        admin_key = (await admin.get("/v1/me")).json()["key_id"]
        assert {e["key_id"] for e in entries} == {key_id, admin_key}
