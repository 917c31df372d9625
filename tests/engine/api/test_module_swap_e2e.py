"""A module swap on a live account, seen by a running engine: the old module's MQTT messages are
refused, the new module's are accepted under the same account, and the history keeps both."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aiomqtt
import httpx
import msgspec
import pytest

from engine.api.auth import create_key
from tests.engine.api.catalog_setup import PACKAGES, security_request
from tests.engine.test_ingest_e2e import running_engine, settings_for

OLD, NEW = "BB0012AB34CD", "BB0012AB34CE"


async def _publish_event(
    module: aiomqtt.Client, prefix: str, serial: str, msg_id: str
) -> dict[str, Any]:
    """Publish a burglary event from ``serial``; its ack."""
    payload = {
        "v": 1,
        "msg_id": msg_id,
        "events": [{"family": "cid", "code": "130", "qualifier": "1", "zone": 3}],
    }
    await module.publish(f"{prefix}/modules/{serial}/events", json.dumps(payload), qos=1)
    async with asyncio.timeout(10):
        async for message in module.messages:
            if str(message.topic).endswith(f"/{serial}/ack"):
                ack: dict[str, Any] = msgspec.json.decode(message.payload)  # type: ignore[arg-type]
                return ack
    raise AssertionError("unreachable")


@pytest.mark.slow
class TestModuleSwapLive:
    async def test_old_serial_refused_new_accepted_history_kept(
        self, db_pool: Any, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """Created and swapped through the engine's own API; MQTT acks follow the swap at once."""
        prefix = f"swap-{secrets.token_hex(4)}/v1"
        _, key = await create_key(db_pool, role="admin", dealer_id=None)
        settings = settings_for(
            database_url, mqtt=True, prefix=prefix, client_id=f"e-{secrets.token_hex(3)}"
        )
        async with running_engine(settings) as engine:
            assert engine.http is not None
            await asyncio.wait_for(engine._mqtt.subscribed.wait(), 10)
            api = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{engine.http.port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=10.0,
            )
            async with api:
                for package in PACKAGES:
                    assert (await api.post("/v1/packages", json=package)).status_code == 201
                dealer = (await api.post("/v1/dealers", json={"name": "Acme"})).json()["id"]
                request = security_request(
                    dealer, "", system={"serial": OLD, "panel_type": "wireless-panel"}
                )
                created = await api.post("/v1/customers", json=request)
                assert created.status_code == 201, created.text
                customer = created.json()["customer"]
                assert customer["module_serial"] == OLD and customer["account"] == OLD
                host, port = mqtt_broker
                async with aiomqtt.Client(host, port, identifier=f"m-{secrets.token_hex(3)}") as m:
                    await m.subscribe(f"{prefix}/modules/+/ack", qos=1)
                    # The engine learns of the new account through NOTIFY.
                    for attempt in range(100):
                        ack = await _publish_event(m, prefix, OLD, f"old-{attempt}")
                        if ack["status"] == "accepted":
                            break
                        await asyncio.sleep(0.05)
                    assert ack["status"] == "accepted"
                    swapped = await api.post(
                        f"/v1/customers/{customer['id']}/module-swap",
                        json={"serial": NEW, "module_type": "broadband"},
                    )
                    assert swapped.status_code == 200, swapped.text
                    assert swapped.json()["account"] == OLD  # the account number is kept
                    for attempt in range(100):
                        new_ack = await _publish_event(m, prefix, NEW, f"new-{attempt}")
                        if new_ack["status"] == "accepted":
                            break
                        await asyncio.sleep(0.05)
                    assert new_ack["status"] == "accepted"
                    old_ack = await _publish_event(m, prefix, OLD, "old-after")
                    assert (old_ack["status"], old_ack["reason"]) == ("rejected", "unknown module")
                history = (await api.get(f"/v1/customers/{customer['id']}/signals")).json()
                events = [s for s in history["items"] if s["kind"] == "event"]
                assert len(events) == 2 and {s["account"] for s in events} == {OLD}
                modules = (await api.get(f"/v1/customers/{customer['id']}/modules")).json()
                assert [(m["module_serial"], m["until"] is None) for m in modules] == [
                    (OLD, False),
                    (NEW, True),
                ]
