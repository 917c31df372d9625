"""Failed delivery attempts in a customer's history: each one listed, the latest 20 kept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx

from engine.delivery import Dispatcher
from engine.station_model import ReceiverConfig
from engine.station_sim import StationSimulator
from receivers.registry import ReceiverRegistry
from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api

SERIAL = imei("49015420323751")


async def _customer_with_delivery(
    api: Api,
    admin: httpx.AsyncClient,
    *,
    primary: str,
    backup: str | None = None,
    station_account: str = "1234",
) -> int:
    """A customer whose one stored alarm has a pending delivery to ``primary`` (and ``backup``)."""
    await create_packages(admin)
    dealer = await api.dealer("Acme")
    created = await admin.post("/v1/customers", json=security_request(dealer, SERIAL))
    customer = created.json()["customer"]
    await api.pool.execute(
        "UPDATE customers SET created_at = now() - interval '1 minute' WHERE id = $1",
        customer["id"],
    )
    now = datetime.now(UTC)
    signal = await api.pool.fetchval(
        "INSERT INTO signals (received_at, account, transport, kind, seq, events, categories) "
        "VALUES ($1, $2, 'tcp', 'event', '0001', '[]', '{alarms}') RETURNING id",
        now,
        SERIAL,
    )
    await api.pool.execute(
        """INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, priority,
                                   event, primary_receiver, backup_receiver, seq, received_at)
           VALUES ($1, 0, $2, 'lane', $7, 0, $3::jsonb, $4, $5, '0001', $6)""",
        signal,
        SERIAL,
        '{"family":"cid","code":"130","qualifier":"1","zone":3,"classification":{"category":"alarms"}}',
        primary,
        backup,
        now,
        station_account,
    )
    return int(customer["id"])


class TestFailedAttempts:
    async def test_primary_failure_within_a_failover_is_listed(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The primary does not answer and the group fails over to the backup within the same
        delivery: the backup's ACK is the outcome, and the primary's failure is in the history
        before it (not only in the logs and metrics)."""
        dead = StationSimulator()
        dead_port = await dead.start()
        await dead.stop()  # nothing listens there any more: the primary refuses connections
        backup = StationSimulator()
        await backup.start()
        customer = await _customer_with_delivery(api, admin, primary="rx-a", backup="rx-b")
        registry = ReceiverRegistry(
            [
                ReceiverConfig(name="rx-a", host="127.0.0.1", port=dead_port, ack_timeout_s=1.0),
                ReceiverConfig(name="rx-b", host="127.0.0.1", port=backup.port, ack_timeout_s=1.0),
            ],
            failover_after=1,  # the first failure fails the group over, in that same delivery
        )
        dispatcher = Dispatcher(api.pool, lambda: registry, poll_s=0.01)
        dispatcher.start()
        try:
            async with asyncio.timeout(30):
                while await api.pool.fetchval("SELECT state FROM deliveries") != "delivered":
                    await asyncio.sleep(0.02)
        finally:
            await dispatcher.stop()
            await registry.close()
            await backup.stop()
        assert [(r.account, r.events[0].code) for r in backup.received] == [("1234", "130")]
        items = (await admin.get(f"/v1/customers/{customer}/signals")).json()["items"]
        [delivery] = items[0]["deliveries"]
        assert (delivery["state"], delivery["receiver_used"], delivery["attempts"]) == (
            "delivered",
            "rx-b",
            1,
        )
        [failure] = delivery["failed_attempts"]
        assert failure["receiver"] == "rx-a" and failure["error"]
        assert failure["at"] <= delivery["acked_at"]
        assert delivery["last_error"] is None

    async def test_latest_twenty_failures_listed(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A delivery whose receiver is gone fails again and again; the history lists the latest
        20 failures, oldest first, each with its receiver and error, beside the attempt count."""
        customer = await _customer_with_delivery(api, admin, primary="gone")
        registry = ReceiverRegistry([])  # no receiver named "gone": every attempt fails
        dispatcher = Dispatcher(
            api.pool, lambda: registry, poll_s=0.01, retry_base_s=0.001, retry_max_s=0.005
        )
        dispatcher.start()
        try:
            async with asyncio.timeout(30):
                while await api.pool.fetchval("SELECT attempts FROM deliveries") < 25:
                    await asyncio.sleep(0.02)
        finally:
            await dispatcher.stop()
        items = (await admin.get(f"/v1/customers/{customer}/signals")).json()["items"]
        [delivery] = items[0]["deliveries"]
        assert delivery["state"] == "pending" and delivery["attempts"] >= 25
        failures = delivery["failed_attempts"]
        assert len(failures) == 20
        assert all(f["receiver"] == "gone" for f in failures)
        assert all(
            f["error"].startswith("receiver not available: no IP receiver named 'gone'")
            for f in failures
        )
        assert [f["at"] for f in failures] == sorted(f["at"] for f in failures)
        assert delivery["last_error"] == failures[-1]["error"]

    async def test_primary_and_backup_failing_in_one_delivery_are_both_listed(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The primary fails, the group fails over and the backup fails too, in the same
        delivery: the history has the primary's failure, then the backup's."""
        ports = []
        for _ in range(2):
            gone = StationSimulator()
            ports.append(await gone.start())
            await gone.stop()  # nothing listens there any more: connections are refused
        customer = await _customer_with_delivery(api, admin, primary="rx-a", backup="rx-b")
        registry = ReceiverRegistry(
            [
                ReceiverConfig(name="rx-a", host="127.0.0.1", port=ports[0], ack_timeout_s=1.0),
                ReceiverConfig(name="rx-b", host="127.0.0.1", port=ports[1], ack_timeout_s=1.0),
            ],
            failover_after=1,
        )
        dispatcher = Dispatcher(api.pool, lambda: registry, poll_s=0.01, retry_base_s=60)
        dispatcher.start()
        try:
            async with asyncio.timeout(30):
                while not await api.pool.fetchval(
                    "SELECT attempts > 0 AND last_error IS NOT NULL FROM deliveries"
                ):
                    await asyncio.sleep(0.02)
        finally:
            await dispatcher.stop()
            await registry.close()
        items = (await admin.get(f"/v1/customers/{customer}/signals")).json()["items"]
        [delivery] = items[0]["deliveries"]
        assert (delivery["state"], delivery["attempts"], delivery["receiver_used"]) == (
            "pending",
            1,
            "rx-b",
        )
        assert [f["receiver"] for f in delivery["failed_attempts"]] == ["rx-a", "rx-b"]
        assert all(f["error"] for f in delivery["failed_attempts"])
        assert delivery["last_error"] == delivery["failed_attempts"][-1]["error"]


class TestUnsendable:
    async def test_a_frame_that_cannot_be_built_is_dead_lettered_and_the_lane_moves_on(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A station account DC-09 cannot carry (here from before imports checked it): the
        delivery is dead-lettered at once with the reason, not retried for ever with the
        account's later alarms waiting behind it, and the receiver is not failed over."""
        station = StationSimulator()
        await station.start()
        backup = StationSimulator()
        await backup.start()
        customer = await _customer_with_delivery(
            api, admin, primary="rx-a", backup="rx-b", station_account="12-34"
        )
        row = await api.pool.fetchrow("SELECT signal_id, event, received_at FROM deliveries")
        await api.pool.execute(
            """INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                                       priority, event, primary_receiver, backup_receiver, seq,
                                       received_at)
               VALUES ($1, 1, $2, 'lane', '1234', 0, $3::jsonb, 'rx-a', 'rx-b', '0002', $4)""",
            row["signal_id"],
            SERIAL,
            row["event"],
            row["received_at"],
        )
        registry = ReceiverRegistry(
            [
                ReceiverConfig(name="rx-a", host="127.0.0.1", port=station.port, ack_timeout_s=1.0),
                ReceiverConfig(name="rx-b", host="127.0.0.1", port=backup.port, ack_timeout_s=1.0),
            ],
            failover_after=1,
        )
        dispatcher = Dispatcher(api.pool, lambda: registry, poll_s=0.01)
        dispatcher.start()
        try:
            async with asyncio.timeout(30):
                while await api.pool.fetchval(
                    "SELECT count(*) FROM deliveries WHERE state = 'pending'"
                ):
                    await asyncio.sleep(0.02)
        finally:
            await dispatcher.stop()
            await registry.close()
            await station.stop()
            await backup.stop()
        states = await api.pool.fetch(
            "SELECT seq, state, attempts, last_error FROM deliveries ORDER BY seq"
        )
        assert [(r["seq"], r["state"], r["attempts"]) for r in states] == [
            ("0001", "dead", 1),
            ("0002", "delivered", 1),
        ]
        assert "frame not built" in states[0]["last_error"]
        assert "12-34" in states[0]["last_error"]
        # The later alarm went to the primary: the bad frame did not fail the group over.
        assert [(r.account, r.seq) for r in station.received] == [("1234", "0002")]
        assert backup.received == []
        items = (await admin.get(f"/v1/customers/{customer}/signals")).json()["items"]
        assert {d["state"] for d in items[0]["deliveries"]} == {"dead", "delivered"}
