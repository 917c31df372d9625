"""Monitoring stations and receivers over the API; signal history of a customer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from engine.store.stations import StationStore
from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api

RECEIVER = {
    "name": "cs-r1",
    "host": "127.0.0.1",
    "port": 9100,
    "receiver_number": "12",
    "line_prefix": "3",
    "key": "0123456789ABCDEF0123456789ABCDEF",
    "two_way_voice": True,
}


class TestStations:
    async def test_dealer_registers_station_used_in_creation(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A dealer's station is listed without its key and its receiver can be chosen for forwarding."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        client = api.client(await api.key("dealer", dealer))
        created = await client.post(
            "/v1/stations", json={"name": "Central", "receivers": [RECEIVER]}
        )
        assert created.status_code == 201, created.text
        station = created.json()
        assert station["dealer_id"] == dealer and station["own"] is False
        assert station["receivers"][0]["key_set"] is True and "key" not in station["receivers"][0]
        assert RECEIVER["key"] not in (await client.get("/v1/stations")).text
        request = security_request(
            dealer,
            imei("49015420323751"),
            forwarding={"mode": "always", "primary_receiver": "cs-r1", "station_account": "ABCD"},
        )
        response = await client.post("/v1/customers", json=request)
        assert response.status_code == 201, response.text
        assert response.json()["warnings"] == []

    async def test_receiver_connections_stored_and_checked(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A receiver's connection count is stored and listed (default 4); 0 is refused."""
        wide = {**RECEIVER, "name": "wide", "connections": 12}
        plain = {**RECEIVER, "name": "plain", "port": 9101}
        created = await admin.post("/v1/stations", json={"name": "C2", "receivers": [wide, plain]})
        assert created.status_code == 201, created.text
        counts = {r["name"]: r["connections"] for r in created.json()["receivers"]}
        assert counts == {"wide": 12, "plain": 4}
        bad = await admin.post(
            "/v1/stations",
            json={"name": "C3", "receivers": [{**RECEIVER, "name": "z", "connections": 0}]},
        )
        assert bad.status_code == 422
        assert "connections must be 1-64" in bad.text

    async def test_receiver_poll_account_stored_and_checked(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A receiver's NULL-poll account is stored, listed (default 0000) and reaches the
        engine's receiver list; one DC-09 cannot carry is a field error."""
        known = {**RECEIVER, "name": "known", "poll_account": "9999"}
        plain = {**RECEIVER, "name": "plain", "port": 9101}
        created = await admin.post("/v1/stations", json={"name": "C4", "receivers": [known, plain]})
        assert created.status_code == 201, created.text
        accounts = {r["name"]: r["poll_account"] for r in created.json()["receivers"]}
        assert accounts == {"known": "9999", "plain": "0000"}
        stored = {r.name: r.poll_account for r in await StationStore(api.pool).ip_receivers()}
        assert stored == {"known": "9999", "plain": "0000"}
        bad = await admin.put(
            "/v1/stations/C4/receivers/known", json={**known, "poll_account": "12-34"}
        )
        assert bad.status_code == 422
        assert "poll_account must be 1-16 characters" in bad.text

    async def test_other_dealer_cannot_see_or_use_station(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Another dealer's station is a 404 and its receiver is unknown in the flow."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        await api.client(await api.key("dealer", acme)).post(
            "/v1/stations", json={"name": "Central", "receivers": [RECEIVER]}
        )
        other_client = api.client(await api.key("dealer", other))
        assert (await other_client.get("/v1/stations/Central")).status_code == 404
        assert (await other_client.get("/v1/stations")).json()["items"] == []
        request = security_request(
            other,
            imei("49015420323751"),
            forwarding={"mode": "always", "primary_receiver": "cs-r1", "station_account": "ABCD"},
        )
        response = await other_client.post("/v1/customers", json=request)
        assert response.status_code == 422

    async def test_own_station_offered_to_every_dealer(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Only an admin marks the provider's own station; every dealer then sees it."""
        dealer = await api.dealer("Acme")
        client = api.client(await api.key("dealer", dealer))
        refused = await client.post(
            "/v1/stations", json={"name": "Ours", "own": True, "receivers": [RECEIVER]}
        )
        assert refused.status_code == 422
        assert (
            await admin.post(
                "/v1/stations", json={"name": "Ours", "own": True, "receivers": [RECEIVER]}
            )
        ).status_code == 201
        assert [s["name"] for s in (await client.get("/v1/stations")).json()["items"]] == ["Ours"]
        assert (
            await client.put("/v1/stations/Ours/receivers/cs-r1", json=RECEIVER)
        ).status_code == 403

    async def test_put_receiver_and_validation(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A receiver is replaced by PUT; a bad port or hex receiver number is a field error."""
        assert (
            await admin.post("/v1/stations", json={"name": "Central", "receivers": [RECEIVER]})
        ).status_code == 201
        changed = await admin.put(
            "/v1/stations/Central/receivers/cs-r1", json={**RECEIVER, "port": 9200}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["receivers"][0]["port"] == 9200
        bad = await admin.put(
            "/v1/stations/Central/receivers/cs-r1", json={**RECEIVER, "receiver_number": "XYZ"}
        )
        assert bad.status_code == 422
        assert "hex" in bad.json()["errors"][0]["message"]
        entries = (await admin.get("/v1/audit", params={"resource": "station"})).json()["items"]
        assert [e["action"] for e in entries] == ["put_receiver", "create"]
        assert RECEIVER["key"] not in str(entries)

    async def test_phone_receiver_warning(self, admin: httpx.AsyncClient) -> None:
        """A phone receiver is stored with the warning that it cannot be delivered to."""
        response = await admin.post(
            "/v1/stations",
            json={
                "name": "Old",
                "receivers": [{"name": "ph", "kind": "phone", "phone_number": "5551234"}],
            },
        )
        assert response.status_code == 201
        assert "telephony gateway" in response.json()["warnings"][0]

    async def test_duplicate_station_conflict(self, admin: httpx.AsyncClient) -> None:
        """A second station with the same name is a 409."""
        assert (await admin.post("/v1/stations", json={"name": "Central"})).status_code == 201
        assert (await admin.post("/v1/stations", json={"name": "Central"})).status_code == 409

    async def test_status_counts_queue(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Pending and dead deliveries are counted per receiver."""
        await admin.post("/v1/stations", json={"name": "Central", "receivers": [RECEIVER]})
        now = datetime.now(UTC)
        for i, state in enumerate(("pending", "pending", "dead")):
            await api.pool.execute(
                "INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, priority, event, primary_receiver, state, seq, received_at) "
                "VALUES ($1, 0, 'A1', 'l', 'ABCD', 1, '{}', 'cs-r1', $2, '0001', $3)",
                i + 1,
                state,
                now,
            )
        status = (await admin.get("/v1/stations/Central/status")).json()
        assert status["receivers"][0]["pending"] == 2 and status["receivers"][0]["dead"] == 1
        # This API runs without an engine: no live link to report.
        assert status["receivers"][0]["link_up"] is None

    async def test_delivered_counted_at_the_receiver_that_acknowledged(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """After a failover the backup delivers: its delivered_last_hour counts those (they were
        counted at the primary that was down, and the backup showed 0); pending stays with the
        primary, whose lane it is."""
        backup = {**RECEIVER, "name": "cs-r2", "port": 9101}
        await admin.post("/v1/stations", json={"name": "Central", "receivers": [RECEIVER, backup]})
        now = datetime.now(UTC)
        for i, (state, used) in enumerate((("delivered", "cs-r2"), ("delivered", "cs-r2"), ("pending", None))):  # fmt: skip
            await api.pool.execute(
                "INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, priority, event, primary_receiver, backup_receiver, state, seq, received_at, receiver_used, acked_at) "
                "VALUES ($1, 0, 'A1', 'l', 'ABCD', 1, '{}', 'cs-r1', 'cs-r2', $2, '0001', $3, $4, CASE WHEN $2 = 'delivered' THEN $3::timestamptz END)",
                i + 1,
                state,
                now,
                used,
            )
        status = (await admin.get("/v1/stations/Central/status")).json()
        counts = {
            r["receiver"]: (r["pending"], r["delivered_last_hour"]) for r in status["receivers"]
        }
        assert counts == {"cs-r1": (1, 0), "cs-r2": (0, 2)}


class TestHistory:
    async def test_history_with_decisions_deliveries_and_filters(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A customer's signals come with decisions and deliveries, filterable and paginated."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        serial = imei("49015420323751")
        customer = (
            await admin.post("/v1/customers", json=security_request(dealer, serial))
        ).json()["customer"]
        # The signals below are dated up to 10 minutes back; history lists only signals from the
        # customer's lifetime (from its module's installation), so both are dated an hour back.
        await api.pool.execute(
            "UPDATE customers SET created_at = now() - interval '1 hour' WHERE id = $1",
            customer["id"],
        )
        await api.pool.execute(
            "UPDATE customer_modules SET since = now() - interval '1 hour' WHERE customer_id = $1",
            customer["id"],
        )
        now = datetime.now(UTC)
        for i, (category, forward) in enumerate(
            (("alarms", True), ("arming", False), ("alarms", True))
        ):
            received = now - timedelta(minutes=10 - i)
            signal_id = await api.pool.fetchval(
                "INSERT INTO signals (received_at, account, transport, kind, seq, events, categories) "
                "VALUES ($1, $2, 'tcp', 'event', $3, '[{\"code\": \"130\"}]', $4) RETURNING id",
                received,
                serial,
                f"{i:04d}",
                [category],
            )
            await api.pool.execute(
                "INSERT INTO decisions (signal_id, event_index, received_at, account, forward, reason, category) VALUES ($1, 0, $2, $3, $4, $5, $6)",
                signal_id,
                received,
                serial,
                forward,
                "forwarded" if forward else "category_not_selected",
                category,
            )
            if forward:
                await api.pool.execute(
                    "INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, priority, event, primary_receiver, state, seq, received_at, attempts) "
                    "VALUES ($1, 0, $2, 'l', 'ABCD', 0, '{}', 'r1', 'delivered', $3, $4, 1)",
                    signal_id,
                    serial,
                    f"{i:04d}",
                    received,
                )
        other = await api.pool.fetchval(
            "INSERT INTO signals (received_at, account, transport, kind) VALUES ($1, 'FFFF', 'tcp', 'event') RETURNING id",
            now,
        )
        assert other
        url = f"/v1/customers/{customer['id']}/signals"
        everything = (await admin.get(url)).json()
        assert [s["seq"] for s in everything["items"]] == ["0002", "0001", "0000"]
        assert everything["items"][0]["decisions"][0]["reason"] == "forwarded"
        delivery = everything["items"][0]["deliveries"][0]
        assert (delivery["state"], delivery["attempts"], delivery["next_attempt_at"]) == (
            "delivered",
            1,
            None,
        )
        assert everything["items"][1]["deliveries"] == []
        assert [
            s["seq"] for s in (await admin.get(url, params={"forwarded": "false"})).json()["items"]
        ] == ["0001"]
        assert [
            s["seq"] for s in (await admin.get(url, params={"category": "alarms"})).json()["items"]
        ] == ["0002", "0000"]
        since = (now - timedelta(minutes=9, seconds=30)).isoformat()
        assert [
            s["seq"] for s in (await admin.get(url, params={"since": since})).json()["items"]
        ] == ["0002", "0001"]
        page = (await admin.get(url, params={"limit": 2})).json()
        rest = (await admin.get(url, params={"limit": 2, "cursor": page["next_cursor"]})).json()
        assert [s["seq"] for s in page["items"] + rest["items"]] == ["0002", "0001", "0000"]

    async def test_history_tenancy(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Another dealer cannot read a customer's history."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        other = await api.dealer("Other")
        customer = (
            await admin.post("/v1/customers", json=security_request(dealer, imei("49015420323751")))
        ).json()["customer"]
        client = api.client(await api.key("dealer", other))
        assert (await client.get(f"/v1/customers/{customer['id']}/signals")).status_code == 404
