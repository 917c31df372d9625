"""A station/receiver change while a delivery waits for the station's ACK: the send completes on
its connection (first attempt), and later deliveries use the new configuration."""

from __future__ import annotations

import asyncpg

from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.stations import StationStore
from tests.engine.test_forwarding_e2e import provision, wait_state
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule


def receiver(port: int, line_prefix: str) -> ReceiverConfig:
    """The station's receiver; ACKs may take 1.5 s, so the ACK timeout is 3 s."""
    return ReceiverConfig(
        name="rx-primary", host="127.0.0.1", port=port, receiver_number="3",
        line_prefix=line_prefix, ack_timeout_s=3.0, null_poll_interval_s=0.3,
    )  # fmt: skip


class TestReceiverReload:
    async def test_send_in_flight_survives_a_reload(
        self, db_pool: asyncpg.Pool, database_url: str, station: StationSimulator
    ) -> None:
        """The station ACKs after 1.5 s; the receivers table changes meanwhile (NOTIFY, rebuild).
        The delivery is ACKed on its first attempt; the next one goes out with the new config."""
        store = StationStore(db_pool)
        await store.upsert([Station(name="s", receivers=(receiver(station.port, "7"),))])
        await provision(db_pool)
        station.set_mode("delay", delay_ms=1500)
        async with running_engine(settings_for(database_url)) as engine:
            assert engine.dc09 is not None
            module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="1234")
            await module.connect()
            reply = await module.send("ADM-CID", "#1234|1130 01 003")
            assert reply is not None and b'"ACK"' in reply
            await wait_state(
                db_pool,
                "SELECT count(*) FROM deliveries WHERE state = 'pending' AND lease_owner IS NOT NULL",
                1,
            )
            # change the receiver while the station holds its ACK: line prefix 7 → 8
            await store.upsert(
                [
                    Station(
                        name="s",
                        receivers=(receiver(station.port, "8"),),
                    )
                ]
            )
            await wait_state(db_pool, "SELECT state FROM deliveries", "delivered")
            assert await db_pool.fetchval("SELECT attempts FROM deliveries") == 1
            station.set_mode("ack")
            reply = await module.send("ADM-CID", "#1234|1131 01 004")
            assert reply is not None and b'"ACK"' in reply
            received = await station.wait_for(2, timeout_s=10)
            await module.close()
        assert [(r.events[0].code, r.line) for r in received] == [("130", "7"), ("131", "8")]
