"""The engine's LISTEN connections (account and receiver changes) survive losing the database:
after the connections drop, changes made later still reach the running engine (real PostgreSQL,
cut through a TCP proxy)."""

from __future__ import annotations

import asyncio

import asyncpg

from engine.account_model import Account
from engine.station_model import ReceiverConfig, Station
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from protocols.dc09_frame import decode_frame
from tests.engine.test_ingest_e2e import port_of, provision, running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule
from tests.support.tcp_proxy import proxied_database


async def _eventually(check: object, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("not reached in time")
        await asyncio.sleep(0.1)


class TestListenAfterConnectionLoss:
    async def test_changes_after_two_outages_reach_the_engine(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Two outages 3 s apart (every engine connection dropped, as pg_terminate_backend does);
        then an account and a receiver are added: the engine ACKs the new module and knows the
        new receiver, without a restart."""
        await provision(db_pool)
        async with proxied_database(database_url) as (proxy, url):
            settings = settings_for(url)
            async with running_engine(settings) as engine:
                for _ in range(2):
                    proxy.cut()
                    await asyncio.sleep(0.3)
                    proxy.restore()
                    await asyncio.sleep(3)
                await AccountStore(db_pool).upsert_many([Account(account="ABD1")])
                await StationStore(db_pool).upsert(
                    [
                        Station(
                            name="late",
                            receivers=(ReceiverConfig(name="rx-late", host="127.0.0.1", port=9),),
                        )
                    ]
                )
                await _eventually(lambda: engine.directory.get("ABD1") is not None)
                module = Dc09TcpModule("127.0.0.1", port_of(engine), account="ABD1")
                await module.connect()
                reply = await module.send("ADM-CID", "#ABD1|1130 01 001", seq="0960")
                await module.close()
                assert reply is not None and decode_frame(reply).token == "ACK"
                assert engine.receivers is not None
                await _eventually(lambda: "rx-late" in engine.receivers.current().names)
