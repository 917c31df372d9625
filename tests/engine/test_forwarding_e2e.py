"""Forwarding end to end: frames into the engine, frames out at the station simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.service import Engine
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from protocols.dc09_crypto import AesKey
from protocols.signal import DEFAULT_FORWARDED_CATEGORIES
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule

MODULE_KEY = "000102030405060708090A0B0C0D0E0F"
STATION_KEY = "F0E0D0C0B0A090807060504030201000"


def receiver(name: str, port: int, **extra: Any) -> ReceiverConfig:
    return ReceiverConfig(
        name=name, host="127.0.0.1", port=port, receiver_number="3", line_prefix="7", ack_timeout_s=1.0,
        null_poll_interval_s=0.3, **extra,
    )  # fmt: skip


async def provision(
    pool: asyncpg.Pool, *, primary: str = "rx-primary", backup: str | None = None, **forwarding: Any
) -> None:
    settings = ForwardingSettings(
        mode=forwarding.pop("mode", ForwardingMode.ALWAYS),
        station_account=forwarding.pop("station_account", "9876"),
        primary_receiver=primary,
        backup_receiver=backup,
        categories=forwarding.pop("categories", DEFAULT_FORWARDED_CATEGORIES),
        **forwarding,
    )
    await AccountStore(pool).upsert_many(
        [
            Account(account="1234", forwarding=settings),
            Account(account="5678", key=MODULE_KEY, forwarding=settings),
        ]
    )


async def provision_primary_and_backup(
    pool: asyncpg.Pool, *, primary_port: int, backup_port: int
) -> None:
    """One station with receivers rx-primary and rx-backup, the accounts forwarded to the
    primary with the backup behind it."""
    await StationStore(pool).upsert(
        [
            Station(
                name="central",
                receivers=(
                    receiver("rx-primary", primary_port),
                    receiver("rx-backup", backup_port),
                ),
            )
        ]
    )
    await provision(pool, backup="rx-backup")


def primary_deliveries(outcome: str) -> float:
    """How many deliveries to rx-primary ended with ``outcome`` so far (0 before the first)."""
    return (
        REGISTRY.get_sample_value(
            "alarmrelay_deliveries_total", {"receiver": "rx-primary", "outcome": outcome}
        )
        or 0.0
    )


async def burglary_alarms(engine: Engine, zones: Iterable[int]) -> None:
    """Account 1234's module sends the engine a burglary alarm (CID 130) per zone, each one
    answered, then hangs up."""
    assert engine.dc09 is not None
    module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="1234")
    await module.connect()
    for zone in zones:
        assert await module.send("ADM-CID", f"#1234|1130 01 {zone:03d}") is not None
    await module.close()


async def dead_receiver_port() -> int:
    """A port a station simulator listened on and no longer does (connections are refused)."""
    dead = StationSimulator()
    port = await dead.start()
    await dead.stop()
    return port


async def wait_state(pool: asyncpg.Pool, sql: str, expected: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (value := await pool.fetchval(sql)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{sql!r} is {value!r}, expected {expected!r}")
        await asyncio.sleep(0.05)


class TestEndToEnd:
    async def test_selected_signals_arrive_in_order(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """Exactly the selected signals reach the station, in order, with station account, R, L and family."""
        await StationStore(db_pool).upsert(
            [Station(name="central", receivers=(receiver("rx-primary", station.port),))]
        )
        await provision(db_pool)
        async with running_engine(settings_for(database_url)) as engine:
            assert engine.dc09 is not None
            module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="1234")
            await module.connect()
            sent = [
                ("ADM-CID", "#1234|1130 01 003"),  # burglary: forwarded
                ("ADM-CID", "#1234|1570 01 004"),  # bypass: not selected by default
                ("SIA-DCS", "#1234|Nri1/FA017"),  # fire: forwarded
                ("ADM-CID", "#1234|3401 01 002"),  # closing: forwarded
                ("SIA-DCS", "#1234|NLB"),  # program mode: never forwarded
            ]
            for token, data in sent:
                assert await module.send(token, data) is not None
            await module.close()
            received = await station.wait_for(3)
            await asyncio.sleep(0.3)
        assert len(station.received) == 3
        assert [(r.events[0].family, r.events[0].code) for r in station.received] == [
            ("cid", "130"),
            ("sia", "FA"),
            ("cid", "401"),
        ]
        assert {(r.account, r.receiver, r.line) for r in received} == {("9876", "3", "7")}
        reasons = await db_pool.fetch(
            "SELECT reason FROM decisions ORDER BY received_at, event_index"
        )
        assert [r["reason"] for r in reasons] == [
            "forwarded",
            "category_not_selected",
            "forwarded",
            "forwarded",
            "not_forwardable",
        ]
        rows = await db_pool.fetch(
            "SELECT state, receiver_used, attempts FROM deliveries ORDER BY id"
        )
        assert [(r["state"], r["receiver_used"]) for r in rows] == [("delivered", "rx-primary")] * 3

    async def test_encrypted_on_both_legs_and_family_conversion(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """AES from the module and AES to a CID-only station receiver; SIA events are converted."""
        sim = StationSimulator(key=AesKey.from_hex(STATION_KEY))
        await sim.start()
        try:
            await StationStore(db_pool).upsert(
                [
                    Station(
                        name="central",
                        receivers=(
                            receiver("rx-primary", sim.port, key=STATION_KEY, families="cid"),
                        ),
                    )
                ]
            )
            await provision(db_pool)
            async with running_engine(settings_for(database_url)) as engine:
                assert engine.dc09 is not None
                module = Dc09TcpModule(
                    "127.0.0.1", engine.dc09.port, account="5678", key=AesKey.from_hex(MODULE_KEY)
                )
                await module.connect()
                assert await module.send("SIA-DCS", "#5678|Nri2/BA005") is not None
                await module.close()
                [got] = await sim.wait_for(1)
        finally:
            await sim.stop()
        assert got.encrypted
        assert (got.token, got.events[0].code, got.events[0].qualifier, got.events[0].zone) == (
            "ADM-CID",
            "130",
            "1",
            5,
        )
        assert await db_pool.fetchval("SELECT family_sent FROM deliveries") == "cid"


class TestFailures:
    async def test_station_down_then_back_in_order(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """With the station down signals queue durably; when it returns they arrive in order."""
        sim = StationSimulator()
        port = await sim.start()
        await sim.stop()  # down, but we know its port
        await StationStore(db_pool).upsert(
            [Station(name="central", receivers=(receiver("rx-primary", port),))]
        )
        await provision(db_pool)
        async with running_engine(settings_for(database_url)) as engine:
            await burglary_alarms(engine, range(1, 6))
            await wait_state(
                db_pool,
                "SELECT count(*) FROM deliveries WHERE state = 'pending' AND attempts > 0",
                1,
            )
            back = StationSimulator(port=port)
            await back.start()
            try:
                received = await back.wait_for(5, timeout_s=30)
            finally:
                await back.stop()
        assert [r.events[0].zone for r in received[:5]] == [1, 2, 3, 4, 5]

    async def test_failover_to_backup(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """Primary down: after N failures the backup receives the signals."""
        dead_port = await dead_receiver_port()
        await provision_primary_and_backup(
            db_pool, primary_port=dead_port, backup_port=station.port
        )
        failed = primary_deliveries("failed")
        async with running_engine(settings_for(database_url)) as engine:
            await burglary_alarms(engine, [9])
            [got] = await station.wait_for(1, timeout_s=30)
        assert got.events[0].zone == 9
        # Three failures on the primary (the third fails the group over in the same delivery)
        assert primary_deliveries("failed") == failed + 3
        assert await db_pool.fetchval("SELECT receiver_used FROM deliveries") == "rx-backup"

    async def test_a_signal_the_primary_refuses_is_delivered_by_the_backup(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """The primary DUHs (an account only the backup knows): the backup gets the alarm in
        the same delivery, the history keeps the primary's refusal, nothing is dead-lettered."""
        refusing = StationSimulator()
        await refusing.start()
        refusing.set_mode("duh")
        try:
            await provision_primary_and_backup(
                db_pool, primary_port=refusing.port, backup_port=station.port
            )
            refused = primary_deliveries("duh")
            async with running_engine(settings_for(database_url)) as engine:
                await burglary_alarms(engine, [14])
                [got] = await station.wait_for(1, timeout_s=30)
                await wait_state(db_pool, "SELECT state FROM deliveries", "delivered")
        finally:
            await refusing.stop()
        assert got.events[0].zone == 14
        assert [r.events[0].zone for r in refusing.received] == [14]
        row = await db_pool.fetchrow("SELECT receiver_used, failed_attempts FROM deliveries")
        assert row is not None and row["receiver_used"] == "rx-backup"
        assert "rx-primary" in str(row["failed_attempts"]) and "DUH" in str(row["failed_attempts"])
        assert primary_deliveries("duh") == refused + 1

    @pytest.mark.parametrize(
        ("primary", "backup"), [("rx-primary", "central-2"), ("central-1", "rx-primary")]
    )
    async def test_a_receiver_no_station_has_does_not_hold_back_the_other(
        self,
        db_pool: asyncpg.Pool,
        database_url: str,
        station: StationSimulator,
        primary: str,
        backup: str,
    ) -> None:
        """An account's backup (or primary) that no station has yet: its alarms go to the
        receiver that exists, in order, instead of waiting in the outbox for the missing one."""
        await StationStore(db_pool).upsert(
            [Station(name="central", receivers=(receiver("rx-primary", station.port),))]
        )
        await provision(db_pool, primary=primary, backup=backup)
        async with running_engine(settings_for(database_url)) as engine:
            await burglary_alarms(engine, [1, 2])
            received = await station.wait_for(2, timeout_s=10)
        assert [r.events[0].zone for r in received] == [1, 2]
        rows = await db_pool.fetch("SELECT state, receiver_used FROM deliveries ORDER BY id")
        assert [tuple(r) for r in rows] == [("delivered", "rx-primary")] * 2

    async def test_nak_adopts_clock_and_resends(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A station whose clock is an hour ahead NAKs; we adopt its time and the resend is ACKed."""
        sim = StationSimulator(clock_skew_s=3600)
        await sim.start()
        try:
            await StationStore(db_pool).upsert(
                [Station(name="central", receivers=(receiver("rx-primary", sim.port),))]
            )
            await provision(db_pool)
            async with running_engine(settings_for(database_url)) as engine:
                await burglary_alarms(engine, [11])
                [got] = await sim.wait_for(1, timeout_s=20)
        finally:
            await sim.stop()
        assert got.events[0].zone == 11
        assert await db_pool.fetchval("SELECT state FROM deliveries") == "delivered"

    async def test_duh_dead_letters(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """A DUH from the station dead-letters the delivery (not retried) and the next one proceeds."""
        station.set_mode("duh")
        await StationStore(db_pool).upsert(
            [Station(name="central", receivers=(receiver("rx-primary", station.port),))]
        )
        await provision(db_pool)
        async with running_engine(settings_for(database_url)) as engine:
            assert engine.dc09 is not None
            module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="1234")
            await module.connect()
            assert await module.send("ADM-CID", "#1234|1130 01 012") is not None
            await wait_state(db_pool, "SELECT state FROM deliveries", "dead")
            station.set_mode("ack")
            assert await module.send("ADM-CID", "#1234|1130 01 013") is not None
            await module.close()
            await wait_state(
                db_pool, "SELECT count(*) FROM deliveries WHERE state = 'delivered'", 1
            )
        assert [r.events[0].zone for r in station.received] == [12, 13]
