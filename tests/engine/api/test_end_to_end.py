"""A customer created through the API: its DC-09 signal reaches the station simulator and shows in
its history with the decision and the delivery; the station's live receiver status follows the link."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from engine.station_sim import StationSimulator
from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule


@pytest.mark.slow
class TestApiToStation:
    async def test_signal_of_api_customer_forwarded_and_in_history(
        self, api: Api, admin: httpx.AsyncClient, database_url: str
    ) -> None:
        """Station, receiver and customer made over HTTP; a burglary alarm is delivered and listed."""
        station = StationSimulator()
        await station.start()
        try:
            await create_packages(admin)
            dealer = await api.dealer("Acme")
            client = api.client(await api.key("dealer", dealer))
            receiver = {
                "name": "rx",
                "host": "127.0.0.1",
                "port": station.port,
                "receiver_number": "3",
                "line_prefix": "7",
                "ack_timeout_s": 1.0,
                "null_poll_interval_s": 0.3,
            }
            assert (
                await client.post("/v1/stations", json={"name": "Central", "receivers": [receiver]})
            ).status_code == 201
            async with running_engine(settings_for(database_url)) as engine:
                assert engine.dc09 is not None
                serial = imei("35693803564380")
                request = security_request(
                    dealer,
                    serial,
                    forwarding={
                        "mode": "always",
                        "primary_receiver": "rx",
                        "station_account": "9876",
                    },
                )
                created = await client.post("/v1/customers", json=request)
                assert created.status_code == 201, created.text
                account = created.json()["summary"]["dc09_account"]
                module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account=account)
                await module.connect()
                # The engine learns of the new account through NOTIFY; until then it answers DUH.
                for _ in range(100):
                    reply = await module.send("ADM-CID", f"#{account}|1130 01 003")
                    if reply is not None and b'"ACK"' in reply:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("the engine never accepted the API-created account")
                await module.close()
                [received] = await station.wait_for(1)
                assert (received.account, received.receiver, received.line) == ("9876", "3", "7")
                url = f"/v1/customers/{created.json()['customer']['id']}/signals"
                for _ in range(100):
                    items = (await client.get(url)).json()["items"]
                    if (
                        items
                        and items[0]["deliveries"]
                        and items[0]["deliveries"][0]["state"] == "delivered"
                    ):
                        break
                    await asyncio.sleep(0.05)
                assert len(items) == 1
                assert items[0]["decisions"][0]["reason"] == "forwarded"
                assert items[0]["deliveries"][0]["state"] == "delivered"
                assert items[0]["deliveries"][0]["receiver_used"] == "rx"
                customer = (
                    await client.get(f"/v1/customers/{created.json()['customer']['id']}")
                ).json()
                assert customer["first_contact_at"] is not None and customer["can_log_in"] is True

                # The engine's own HTTP port serves the API with its live receiver links.
                assert engine.http is not None
                live = httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{engine.http.port}",
                    headers=client.headers,
                    timeout=10.0,
                )
                async with live:
                    status = (await live.get("/v1/stations/Central/status")).json()
                    [rx] = status["receivers"]
                    assert (rx["receiver"], rx["link_up"], rx["failed_over"]) == ("rx", True, False)
                    assert (rx["pending"], rx["dead"], rx["delivered_last_hour"]) == (0, 0, 1)
                    await station.stop()  # the station goes away: its NULL polls fail
                    for _ in range(200):
                        rx = (await live.get("/v1/stations/Central/status")).json()["receivers"][0]
                        if rx["link_up"] is False:
                            break
                        await asyncio.sleep(0.05)
                    assert rx["link_up"] is False
        finally:
            await station.stop()

    async def test_failed_attempts_shown_until_delivered(
        self, api: Api, admin: httpx.AsyncClient, database_url: str
    ) -> None:
        """While the station drops frames the history shows the delivery pending with each failed
        attempt, the last error and the next attempt; once it answers, delivered, every attempt listed."""
        station = StationSimulator(mode="drop")
        await station.start()
        try:
            await create_packages(admin)
            dealer = await api.dealer("Acme")
            client = api.client(await api.key("dealer", dealer))
            receiver = {
                "name": "rx",
                "host": "127.0.0.1",
                "port": station.port,
                "ack_timeout_s": 0.5,
                "null_poll_interval_s": 0.3,
            }
            assert (
                await client.post("/v1/stations", json={"name": "Central", "receivers": [receiver]})
            ).status_code == 201
            async with running_engine(settings_for(database_url)) as engine:
                assert engine.dc09 is not None
                request = security_request(
                    dealer,
                    imei("35693803564380"),
                    forwarding={
                        "mode": "always",
                        "primary_receiver": "rx",
                        "station_account": "9876",
                    },
                )
                created = await client.post("/v1/customers", json=request)
                assert created.status_code == 201, created.text
                account = created.json()["summary"]["dc09_account"]
                module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account=account)
                await module.connect()
                for _ in range(100):
                    reply = await module.send("ADM-CID", f"#{account}|1130 01 003")
                    if reply is not None and b'"ACK"' in reply:
                        break
                    await asyncio.sleep(0.05)
                await module.close()
                url = f"/v1/customers/{created.json()['customer']['id']}/signals"

                async def delivery() -> dict[str, object]:
                    items = (await client.get(url)).json()["items"]
                    deliveries = items[0]["deliveries"] if items else []
                    return deliveries[0] if deliveries else {}

                for _ in range(200):
                    pending = await delivery()
                    if pending.get("last_error") and int(str(pending["attempts"])) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert pending["state"] == "pending"
                assert pending["last_error"] == "no answer within the ACK timeout"
                assert pending["next_attempt_at"] is not None and pending["acked_at"] is None
                failures = pending["failed_attempts"]
                assert isinstance(failures, list) and len(failures) >= 1
                assert {(f["receiver"], f["error"]) for f in failures} == {
                    ("rx", "no answer within the ACK timeout")
                }
                station.set_mode("ack")
                for _ in range(400):
                    done = await delivery()
                    if done.get("state") == "delivered":
                        break
                    await asyncio.sleep(0.05)
                assert done["state"] == "delivered" and done["receiver_used"] == "rx"
                assert int(str(done["attempts"])) >= 3
                assert done["acked_at"] is not None and done["next_attempt_at"] is None
                # Every attempt is shown: the failures, oldest first, then the acknowledged one.
                failed = done["failed_attempts"]
                assert isinstance(failed, list) and len(failed) == int(str(done["attempts"])) - 1
                times = [f["at"] for f in failed]
                assert times == sorted(times) and times[-1] < str(done["acked_at"])
        finally:
            await station.stop()
