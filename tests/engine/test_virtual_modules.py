"""Virtual modules: the engine checks in for a virtual customer's module and sends the signals asked
for through the admin API, over the real policy and delivery path (real PostgreSQL, station-sim)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from engine.account_directory import AccountDirectory
from engine.account_model import Account
from engine.api.auth import create_key
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, IngestRefused, IngestResult, IngestUnavailable
from engine.ingest_writer import IngestWriter
from engine.service import Engine
from engine.settings import Settings, VirtualSettings
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.supervision import SupervisionStage
from engine.virtual_modules import VirtualModules
from tests.engine.api.catalog_setup import PACKAGES, imei, security_request
from tests.engine.test_ingest_e2e import running_engine, settings_for


def _settings(database_url: str) -> Settings:
    return msgspec.structs.replace(
        settings_for(database_url),
        virtual=VirtualSettings(checkin_interval_s=10, poll_s=0.1),
    )


async def _wait(check: Any, what: str, timeout_s: float = 15.0) -> Any:
    async with asyncio.timeout(timeout_s):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover - asyncio.timeout raises first


@contextlib.asynccontextmanager
async def _world(
    db_pool: asyncpg.Pool, database_url: str, engines: int = 1
) -> AsyncIterator[tuple[list[Engine], StationSimulator, httpx.AsyncClient, int]]:
    """Running engine(s), a station simulator, a dealer client on the first engine's HTTP port
    and the id of a virtual customer forwarding always to the simulator."""
    station = StationSimulator()
    await station.start()
    async with contextlib.AsyncExitStack() as stack:
        started = [
            await stack.enter_async_context(running_engine(_settings(database_url)))
            for _ in range(engines)
        ]
        http = started[0].http
        assert http is not None
        _, admin_key = await create_key(db_pool, role="admin", dealer_id=None)
        admin = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http.port}",
                headers={"Authorization": f"Bearer {admin_key}"},
                timeout=10,
            )
        )
        for package in PACKAGES:
            assert (await admin.post("/v1/packages", json=package)).status_code == 201
        dealer = (await admin.post("/v1/dealers", json={"name": "Acme"})).json()["id"]
        receiver = {
            "name": "rx",
            "host": "127.0.0.1",
            "port": station.port,
            "receiver_number": "3",
            "line_prefix": "7",
            "ack_timeout_s": 1.0,
        }
        station_body = {"name": "Central", "receivers": [receiver], "dealer_id": dealer}
        made = await admin.post("/v1/stations", json=station_body)
        assert made.status_code == 201, made.text
        request = security_request(
            dealer,
            "",
            virtual=True,
            forwarding={"mode": "always", "primary_receiver": "rx", "station_account": "4242"},
        )
        del request["system"]
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        try:
            yield started, station, admin, int(created.json()["customer"]["id"])
        finally:
            await station.stop()


@pytest.mark.slow
class TestVirtualModules:
    async def test_checkin_and_requested_fire_alarm_reach_the_station(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The virtual module checks in by itself (first contact, supervision armed); a fire alarm
        asked for over the API reaches station-sim and shows in the history as virtual."""
        async with _world(db_pool, database_url) as (_, station, admin, customer):
            url = f"/v1/customers/{customer}"

            async def contacted() -> bool:
                return bool((await admin.get(url)).json()["can_log_in"])

            await _wait(contacted, "the virtual module never checked in")
            account = (await admin.get(url)).json()["account"]
            deadline = await db_pool.fetchval(
                "SELECT extract(epoch FROM deadline - now()) FROM supervision WHERE account = $1",
                account,
            )
            assert deadline is not None and deadline > 86_000  # 24 h + grace from the check-in

            queued = await admin.post(f"{url}/virtual-signals", json={"preset": "fire"})
            assert queued.status_code == 202, queued.text
            assert queued.json()["state"] == "queued"
            [received] = await station.wait_for(1, timeout_s=15)
            assert (received.account, received.receiver, received.line) == ("4242", "3", "7")
            assert [(e.code, e.zone) for e in received.events] == [("110", 1)]

            async def sent() -> list[dict[str, Any]]:
                items = (await admin.get(f"{url}/virtual-signals")).json()
                return items if items[0]["state"] == "sent" else []

            [request] = await _wait(sent, "the request was never marked sent")
            assert request["result"] == "accepted"

            async def delivered() -> list[dict[str, Any]]:
                items = (await admin.get(f"{url}/signals", params={"forwarded": "true"})).json()
                ready = (
                    items["items"] and items["items"][0]["deliveries"][0]["state"] == "delivered"
                )
                return items["items"] if ready else []

            [entry] = await _wait(delivered, "the fire alarm never showed as delivered")
            assert entry["transport"] == "virtual"
            assert entry["decisions"][0]["reason"] == "forwarded"

    async def test_bad_requests_are_refused(self, db_pool: asyncpg.Pool, database_url: str) -> None:
        """A preset and events together, a malformed event and a real customer's module: clear errors."""
        async with _world(db_pool, database_url) as (_, _, admin, customer):
            url = f"/v1/customers/{customer}/virtual-signals"
            both = await admin.post(
                url, json={"preset": "fire", "events": [{"family": "cid", "code": "110"}]}
            )
            assert both.status_code == 422 and both.json()["errors"][0]["rule"] == "one_of"
            bad = await admin.post(url, json={"events": [{"family": "cid", "code": "11"}]})
            assert bad.status_code == 422
            assert "3 digits" in bad.json()["errors"][0]["message"]
            unknown = await admin.post(url, json={"preset": "earthquake"})
            assert unknown.status_code == 400
            dealer = (await admin.get(f"/v1/customers/{customer}")).json()["dealer_id"]
            real = await admin.post(
                "/v1/customers",
                json=security_request(dealer, imei("49015420323751"), login={"login_name": "real"}),
            )
            assert real.status_code == 201, real.text
            refused = await admin.post(
                f"/v1/customers/{real.json()['customer']['id']}/virtual-signals",
                json={"preset": "fire"},
            )
            assert refused.status_code == 409
            assert await db_pool.fetchval("SELECT count(*) FROM virtual_requests") == 0

    async def test_two_engines_send_each_request_once(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """With two engines claiming requests, 12 queued signals reach the station exactly once each."""
        async with _world(db_pool, database_url, engines=2) as (_, station, admin, customer):
            url = f"/v1/customers/{customer}/virtual-signals"
            zones = list(range(1, 13))
            for zone in zones:
                event = {"family": "cid", "code": "130", "zone": zone, "partition": 1}
                assert (await admin.post(url, json={"events": [event]})).status_code == 202
            received = await station.wait_for(len(zones), timeout_s=20)
            await asyncio.sleep(1.0)  # a duplicate, if any, would arrive meanwhile
            assert sorted(r.events[0].zone for r in station.received) == zones
            assert len(received) == len(zones)
            results = await db_pool.fetch("SELECT result FROM virtual_requests ORDER BY id")
            assert [r["result"] for r in results] == ["accepted"] * len(zones)

    async def test_request_retried_after_a_crash_is_not_forwarded_twice(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """If an engine dies after the signal's commit but before marking the request done, the
        request is sent again by the next engine and recognised as a duplicate."""
        async with _world(db_pool, database_url) as (engines, station, admin, customer):
            engine = engines[0]
            assert engine.virtual_modules is not None and engine.pipeline is not None
            await engine.virtual_modules.stop()  # this test drives the requests itself
            url = f"/v1/customers/{customer}/virtual-signals"
            assert (await admin.post(url, json={"preset": "burglary"})).status_code == 202
            modules = VirtualModules(db_pool, engine.pipeline, checkin_interval_s=60, poll_s=0.1)
            assert await modules.send_requests(datetime.now(UTC)) == 1
            await station.wait_for(1, timeout_s=15)
            # the state a crash between the commit and the "done" mark leaves behind
            await db_pool.execute("UPDATE virtual_requests SET done_at = NULL, result = NULL")
            assert await modules.send_requests(datetime.now(UTC)) == 1
            assert await db_pool.fetchval("SELECT result FROM virtual_requests") == "duplicate"
            await asyncio.sleep(1.0)
            assert [r.events[0].code for r in station.received] == ["130"]
            assert await db_pool.fetchval("SELECT count(*) FROM deliveries") == 1


class WriterSink:
    """The ingest writer as the modules' sink: one commit per signal, no pipeline task."""

    saturated = False

    def __init__(self, writer: IngestWriter) -> None:
        self._writer = writer

    async def submit(self, signal: InboundSignal) -> IngestResult:
        [result] = await self._writer([signal])
        return result


class TestCheckinSchedule:
    async def test_checks_in_every_interval_and_resets_supervision(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """On a fake clock: a new virtual module checks in at once, then every
        checkin_interval_s, each check-in moving its supervision deadline; once the account is
        no longer virtual it stops."""
        virtual = Account(account="ABC1", virtual=True, supervision_interval_s=200)
        await AccountStore(db_pool).upsert_many([virtual])
        directory = AccountDirectory()
        directory.load([virtual])
        writer = IngestWriter(
            db_pool,
            duplicate_window_s=600,
            forwarding=ForwardingStage(directory),
            supervision=SupervisionStage(directory, grace_s=0),
        )
        modules = VirtualModules(
            db_pool, WriterSink(writer), checkin_interval_s=60, poll_s=1.0, sync_interval_s=0
        )
        t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

        async def deadline() -> datetime | None:
            value: datetime | None = await db_pool.fetchval("SELECT deadline FROM supervision")
            return value

        assert await modules.fire_due(t0) == 1
        assert await deadline() == t0 + timedelta(seconds=200)
        assert await modules.seconds_to_next(t0) == 60.0
        assert await modules.fire_due(t0 + timedelta(seconds=59)) == 0
        assert await modules.fire_due(t0 + timedelta(seconds=60)) == 1
        assert await deadline() == t0 + timedelta(seconds=260)
        await AccountStore(db_pool).upsert_many([msgspec.structs.replace(virtual, virtual=False)])
        assert await modules.fire_due(t0 + timedelta(seconds=600)) == 0
        assert await db_pool.fetchval("SELECT count(*) FROM virtual_schedule") == 0


class TestRequestRetry:
    async def test_a_request_retried_after_a_long_outage_is_still_a_duplicate(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The signal was committed but the request never marked done (the engine died, or the
        database went away before the claim's commit); the request is sent again an hour later,
        when an engine runs again: it is recognised as the same signal, stored and forwarded
        once. (The key was held only dc09.duplicate_window_s, 10 minutes: stored twice.)"""
        await _virtual_with_a_request(db_pool)
        directory = AccountDirectory()
        directory.load([Account(account="ABC1", virtual=True)])
        writer = IngestWriter(
            db_pool, duplicate_window_s=600, forwarding=ForwardingStage(directory)
        )
        modules = VirtualModules(db_pool, WriterSink(writer), checkin_interval_s=60, poll_s=1.0)
        t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        assert await modules.send_requests(t0) == 1
        await db_pool.execute("UPDATE virtual_requests SET done_at = NULL, result = NULL")
        assert await modules.send_requests(t0 + timedelta(hours=1)) == 1
        assert await db_pool.fetchval("SELECT result FROM virtual_requests") == "duplicate"
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == 1


class TestRequestOrder:
    async def test_two_engines_keep_one_modules_requests_in_order(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Engine A is sending a module's entry delay when its disarm is queued; engine B, looking
        meanwhile, leaves the disarm until the entry is done: the station gets entry, then
        disarm (B sent the disarm first: a disarm before the entry, and then a Crash & Smash
        for a disarmed demo system)."""
        await _virtual_with_a_request(db_pool)
        directory = AccountDirectory()
        directory.load([Account(account="ABC1", virtual=True)])
        writer = IngestWriter(
            db_pool, duplicate_window_s=600, forwarding=ForwardingStage(directory)
        )
        claimed, go = asyncio.Event(), asyncio.Event()

        class HeldSink:
            saturated = False

            async def submit(self, signal: InboundSignal) -> IngestResult:
                claimed.set()
                await go.wait()
                [result] = await writer([signal])
                return result

        pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=2) for _ in "ab"]
        try:
            first = VirtualModules(pools[0], HeldSink(), checkin_interval_s=60, poll_s=1.0)
            second = VirtualModules(pools[1], WriterSink(writer), checkin_interval_s=60, poll_s=1.0)
            t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
            sending = asyncio.create_task(first.send_requests(t0))
            await asyncio.wait_for(claimed.wait(), 5)
            await db_pool.execute(
                "INSERT INTO virtual_requests (account, payload) VALUES ('ABC1', $1::jsonb)",
                '{"v":1,"msg_id":"r2","events":[{"family":"cid","code":"401","qualifier":"1"}]}',
            )
            assert await second.send_requests(t0 + timedelta(seconds=1)) == 0
            go.set()
            assert await asyncio.wait_for(sending, 5) == 1
            assert await second.send_requests(t0 + timedelta(seconds=2)) == 1
        finally:
            go.set()
            for pool in pools:
                await pool.close()
        codes = await db_pool.fetch("SELECT events->0->>'code' AS code FROM signals ORDER BY id")
        assert [r["code"] for r in codes] == ["130", "401"]


async def _virtual_with_a_request(db_pool: asyncpg.Pool) -> Account:
    """Virtual module ABC1 with one queued request (a burglary)."""
    virtual = Account(account="ABC1", virtual=True)
    await AccountStore(db_pool).upsert_many([virtual])
    await db_pool.execute(
        "INSERT INTO virtual_requests (account, payload) VALUES ('ABC1', $1::jsonb)",
        '{"v":1,"msg_id":"r1","events":[{"family":"cid","code":"130","zone":1}]}',
    )
    return virtual


class DownSink:
    """The pipeline while the database is away or it sheds: every submit is refused at once
    (``refused``: instead, the database refuses the signal's data, for good)."""

    saturated = False

    def __init__(self, error: type[IngestUnavailable] = IngestUnavailable) -> None:
        self.error = error
        self.submits = 0

    async def submit(self, signal: InboundSignal) -> IngestResult:
        self.submits += 1
        raise self.error("database unavailable")


class TestPipelineUnavailable:
    async def test_an_unavailable_pipeline_is_retried_a_poll_later_not_at_once(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A queued request and a due check-in the pipeline cannot take: the timer tries again
        after its poll (0.3 s), not every 10 ms with 500 failing submits each round."""
        await _virtual_with_a_request(db_pool)
        sink = DownSink()
        modules = VirtualModules(
            db_pool, sink, checkin_interval_s=60, poll_s=0.3, sync_interval_s=0
        )
        modules.start()
        try:
            await asyncio.sleep(1.0)
        finally:
            await modules.stop()
        assert 2 <= sink.submits <= 12  # a request and a check-in per round, ~4 rounds
        assert await db_pool.fetchval("SELECT done_at FROM virtual_requests") is None

    async def test_a_module_the_directory_does_not_know_yet_waits(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A virtual module created a moment ago, before the engine's account directory has it:
        its check-in and its requested signal wait (committed without its settings, the check-in
        armed no supervision deadline), and go once the directory has it."""
        virtual = await _virtual_with_a_request(db_pool)
        directory = AccountDirectory()
        writer = IngestWriter(
            db_pool,
            duplicate_window_s=600,
            forwarding=ForwardingStage(directory),
            supervision=SupervisionStage(directory, grace_s=0),
        )
        modules = VirtualModules(
            db_pool,
            WriterSink(writer),
            checkin_interval_s=60,
            poll_s=0.3,
            sync_interval_s=0,
            known=lambda account: directory.get(account) is not None,
        )
        now = datetime.now(UTC)
        assert await modules.fire_due(now) == 0
        assert await modules.seconds_to_next(now) == 0.3  # a poll, not at once
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == 0
        directory.load([virtual])
        assert await modules.fire_due(now) == 2  # the request and the check-in
        assert await db_pool.fetchval("SELECT deadline FROM supervision") is not None

    async def test_a_refused_request_is_recorded_not_retried_for_ever(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """The database refuses the request's signal (its data): it is marked done with the
        reason and the requests behind it go on."""
        await _virtual_with_a_request(db_pool)
        modules = VirtualModules(
            db_pool, DownSink(IngestRefused), checkin_interval_s=60, poll_s=0.3, sync_interval_s=0
        )
        assert await modules.send_requests(datetime.now(UTC)) == 0
        row = await db_pool.fetchrow("SELECT done_at, result FROM virtual_requests")
        assert row is not None and row["done_at"] is not None
        assert row["result"].startswith("not sent: refused by the database")
