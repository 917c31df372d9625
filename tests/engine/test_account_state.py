"""Phone-line state end to end: set and cleared by the panel's own signals, shown per account, and
driving "only if the phone line fails" (real sockets, real PostgreSQL, station simulator)."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.account_status import account_status
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from tests.engine.test_accounts_cli import cli
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule


class TestPhoneLine:
    async def test_sia_line_trouble_with_the_fault_category_off(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """SIA LT (Phone Communication Failures not selected): the fault itself is not forwarded,
        but the line shows failed and the next alarm is forwarded; after LR the line shows fine
        and alarms are suppressed again."""
        sim = StationSimulator()
        port = await sim.start()
        await StationStore(db_pool).upsert(
            [Station(name="s", receivers=(ReceiverConfig(name="rx", host="127.0.0.1", port=port),))]
        )
        forwarding = ForwardingSettings(
            mode=ForwardingMode.PHONE_LINE_FAILURE,
            phone_line_connected=True,
            station_account="1111",
            primary_receiver="rx",
        )
        await AccountStore(db_pool).upsert_many([Account(account="4321", forwarding=forwarding)])
        line: list[bool] = []
        try:
            async with running_engine(settings_for(database_url)) as engine:
                assert engine.dc09 is not None
                module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="4321")
                await module.connect()
                for data in (
                    "#4321|Nri1/BA001",  # line fine: suppressed
                    "#4321|NLT001",  # phone line trouble: sets the state (not selected itself)
                    "#4321|Nri1/BA002",  # while failed: forwarded
                    "#4321|NLR001",  # line restored
                    "#4321|Nri1/BA003",  # line fine again: suppressed
                ):
                    assert await module.send("SIA-DCS", data) is not None  # ACK: committed
                    status = await account_status(db_pool, "4321")
                    assert status is not None
                    line.append(status.phone_line_failed)
                await module.close()
                await sim.wait_for(1, timeout_s=10)
                await asyncio.sleep(0.3)  # a second forwarded alarm would show up by now
                code, out, err = await cli(database_url, "state", "4321")
        finally:
            await sim.stop()
        assert line == [False, True, True, False, False]
        assert [(r.events[0].code, r.events[0].zone) for r in sim.received] == [("BA", 2)]
        reasons = [
            r["reason"]
            for r in await db_pool.fetch("SELECT reason FROM decisions ORDER BY received_at")
        ]
        assert reasons == [
            "phone_line_ok",
            "category_not_selected",
            "forwarded",
            "category_not_selected",
            "phone_line_ok",
        ]
        assert code == 0, err
        assert json.loads(out)["phone_line_failed"] is False

    async def test_failure_to_communicate_shows_on_the_account(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Contact ID 354 (failure to communicate) and 352 (telco 2) set the line, their Q=3
        restores clear it; `alarmrelay state` shows it while failed."""
        await AccountStore(db_pool).upsert_many([Account(account="4322")])
        async with running_engine(settings_for(database_url)) as engine:
            assert engine.dc09 is not None
            module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="4322")
            await module.connect()
            seen = []
            for data in ("#4322|1354 00 000", "#4322|3354 00 000", "#4322|1352 00 000"):
                assert await module.send("ADM-CID", data) is not None
                status = await account_status(db_pool, "4322")
                assert status is not None
                seen.append(status.phone_line_failed)
            code, out, err = await cli(database_url, "state", "4322")
            assert await module.send("ADM-CID", "#4322|3352 00 000") is not None
            await module.close()
        assert seen == [True, False, True]
        assert code == 0, err
        assert json.loads(out)["phone_line_failed"] is True
        status = await account_status(db_pool, "4322")
        assert status is not None and status.phone_line_failed is False
