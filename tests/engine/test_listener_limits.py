"""DC-09 listener limits over real sockets: max connections, idle timeout, per-connection rate limit."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.commands.stations import parse_stations
from engine.errors import UserFacingError
from engine.settings import Settings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import StationSimulator
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from protocols.dc09_frame import encode_frame
from protocols.dc09_receiver import ReceiverEvent
from protocols.signal import DEFAULT_FORWARDED_CATEGORIES, Category
from tests.engine.test_ingest_e2e import running_engine, settings_for
from tests.support.dc09_module import Dc09TcpModule, Dc09UdpModule


def with_dc09(database_url: str, **dc09: object) -> Settings:
    base = settings_for(database_url)
    return msgspec.structs.replace(base, dc09=msgspec.structs.replace(base.dc09, **dc09))


class TestLimits:
    async def test_max_connections(self, db_pool: asyncpg.Pool, database_url: str) -> None:
        """Past max_connections a new TCP connection is closed at once; existing ones keep working."""
        await AccountStore(db_pool).upsert_many([Account(account="1234")])
        async with running_engine(with_dc09(database_url, port=0, max_connections=2)) as engine:
            assert engine.dc09 is not None
            port = engine.dc09.port
            kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.1)
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(10), 2) == b""  # closed by the engine
            writer = kept[0][1]
            writer.write(encode_frame(token="NULL", seq="0000", account="1234", data=""))
            assert b'"ACK"' in await asyncio.wait_for(kept[0][0].readuntil(b"\r"), 2)
            for _, w in kept:
                w.close()

    async def test_idle_connection_is_closed(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A connection silent past idle_timeout_s is closed."""
        async with running_engine(with_dc09(database_url, port=0, idle_timeout_s=0.5)) as engine:
            assert engine.dc09 is not None
            reader, _ = await asyncio.open_connection("127.0.0.1", engine.dc09.port)
            assert await asyncio.wait_for(reader.read(10), 5) == b""

    async def test_rate_limit_gives_no_ack(self, db_pool: asyncpg.Pool, database_url: str) -> None:
        """A module over its per-connection rate gets no ACK for the excess (it will retry)."""
        await AccountStore(db_pool).upsert_many([Account(account="1234")])
        async with running_engine(with_dc09(database_url, port=0, rate_limit_per_s=1.0)) as engine:
            assert engine.dc09 is not None
            module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="1234")
            await module.connect()
            replies = [
                await module.send("ADM-CID", f"#1234|1130 01 {z:03d}", timeout=0.5)
                for z in range(1, 6)
            ]
            await module.close()
        assert replies[0] is not None
        assert None in replies
        stored = await db_pool.fetchval("SELECT count(*) FROM signals")
        assert stored == sum(r is not None for r in replies)

    async def test_udp_rate_limit_is_per_source(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A UDP source over the rate gets no ACK for the excess; another source on the same port
        is not held back by it. Before, UDP had no limit at all: a source could send as fast as
        it liked, rejected frames included, and take the engine's time from every module."""
        await AccountStore(db_pool).upsert_many([Account(account="1234"), Account(account="5678")])
        shed = _shed("udp")
        async with running_engine(with_dc09(database_url, port=0, rate_limit_per_s=1.0)) as engine:
            assert engine.dc09 is not None
            flooding = Dc09UdpModule("127.0.0.1", engine.dc09.port, account="1234")
            quiet = Dc09UdpModule("127.0.0.1", engine.dc09.port, account="5678")
            await flooding.connect()
            await quiet.connect()
            try:
                replies = [
                    await flooding.send("ADM-CID", f"#1234|1130 01 {z:03d}", timeout=0.5)
                    for z in range(1, 7)
                ]
                other = await quiet.send("ADM-CID", "#5678|1130 01 001")
            finally:
                flooding.close()
                quiet.close()
        assert replies[0] is not None and b'"ACK"' in replies[0]
        assert None in replies
        assert other is not None and b'"ACK"' in other
        assert _shed("udp") - shed == replies.count(None)
        stored = await db_pool.fetchval("SELECT count(*) FROM signals WHERE account = '1234'")
        assert stored == sum(r is not None for r in replies)

    async def test_a_udp_datagram_over_the_limit_is_dropped_unread(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A source over its rate costs the engine no parsing and no AES decryption: only the
        datagrams within the limit are read. Before, every datagram was parsed (and decrypted)
        first and charged after, so a flood still took the engine's time frame by frame."""
        await AccountStore(db_pool).upsert_many([Account(account="1234")])
        async with running_engine(with_dc09(database_url, port=0, rate_limit_per_s=1.0)) as engine:
            assert engine.dc09 is not None
            protocol = engine.dc09._udp_protocol
            assert protocol is not None
            conn = protocol._conn
            read: list[bytes] = []
            receive = conn.receive_datagram

            def counting(data: bytes, *, now: datetime) -> list[ReceiverEvent]:
                read.append(data)
                return receive(data, now=now)

            conn.receive_datagram = counting  # type: ignore[method-assign]
            flooding = Dc09UdpModule("127.0.0.1", engine.dc09.port, account="1234")
            await flooding.connect()
            try:
                replies = [
                    await flooding.send("ADM-CID", f"#1234|1130 01 {z:03d}", timeout=0.3)
                    for z in range(1, 7)
                ]
            finally:
                flooding.close()
        answered = sum(r is not None for r in replies)
        assert 0 < answered < len(replies)
        assert len(read) == answered

    async def test_ipv6_wildcard_takes_ipv4_on_tcp_and_udp(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """dc09.host = "::" listens on every address, IPv4 included, on both transports. Before,
        TCP took only IPv6 (asyncio sets IPV6_V6ONLY) while UDP took both: a module on IPv4
        reached the engine over UDP but was refused over TCP."""
        await AccountStore(db_pool).upsert_many([Account(account="1234")])
        async with running_engine(with_dc09(database_url, port=0, host="::")) as engine:
            assert engine.dc09 is not None
            port = engine.dc09.port
            acks = []
            for zone, host in enumerate(("127.0.0.1", "::1")):
                module = Dc09TcpModule(host, port, account="1234")
                await module.connect()
                acks.append(await module.send("ADM-CID", f"#1234|1130 01 1{zone:02d}"))
                await module.close()
                udp = Dc09UdpModule(host, port, account="1234")
                await udp.connect()
                try:
                    acks.append(await udp.send("ADM-CID", f"#1234|1130 01 2{zone:02d}"))
                finally:
                    udp.close()
        assert all(a is not None and b'"ACK"' in a for a in acks), acks
        peers = await db_pool.fetch("SELECT transport, peer FROM signals ORDER BY id")
        hosts = sorted((r["transport"], r["peer"].rsplit(":", 1)[0]) for r in peers)
        # An IPv4 module keeps its IPv4 address in the history, not ::ffff:127.0.0.1.
        assert hosts == [("tcp", "127.0.0.1"), ("tcp", "::1"), ("udp", "127.0.0.1"), ("udp", "::1")]


def _shed(transport: str) -> float:
    value = REGISTRY.get_sample_value(
        "alarmrelay_signals_shed_total", {"transport": transport, "reason": "rate_limited"}
    )
    return value or 0.0


class TestPhoneLineFailureEndToEnd:
    async def test_only_while_the_line_is_failed(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """phone_line_failure mode: nothing while the line is fine; the telco fault and what follows; quiet after restore."""
        sim = StationSimulator()
        port = await sim.start()
        try:
            await StationStore(db_pool).upsert(
                [
                    Station(
                        name="s",
                        receivers=(ReceiverConfig(name="rx", host="127.0.0.1", port=port),),
                    )
                ]
            )
            forwarding = ForwardingSettings(
                mode=ForwardingMode.PHONE_LINE_FAILURE, phone_line_connected=True, station_account="1111", primary_receiver="rx",
                categories=DEFAULT_FORWARDED_CATEGORIES | {Category.PHONE_COMM_FAILURES},
            )  # fmt: skip
            await AccountStore(db_pool).upsert_many(
                [Account(account="1234", forwarding=forwarding)]
            )
            async with running_engine(settings_for(database_url)) as engine:
                assert engine.dc09 is not None
                module = Dc09TcpModule("127.0.0.1", engine.dc09.port, account="1234")
                await module.connect()
                for data in (
                    "#1234|1130 01 001",  # line fine: suppressed
                    "#1234|1351 00 000",  # telco fault: forwarded itself
                    "#1234|1130 01 002",  # while failed: forwarded
                    "#1234|3351 00 000",  # restore (trouble restoral, not selected)
                    "#1234|1130 01 003",  # line fine again: suppressed
                ):
                    assert await module.send("ADM-CID", data) is not None
                await module.close()
                await sim.wait_for(2, timeout_s=10)
                await asyncio.sleep(0.5)
        finally:
            await sim.stop()
        assert [(r.events[0].code, r.events[0].zone) for r in sim.received] == [
            ("351", None),
            ("130", 2),
        ]
        reasons = [
            r["reason"]
            for r in await db_pool.fetch("SELECT reason FROM decisions ORDER BY received_at")
        ]
        assert reasons == [
            "phone_line_ok",
            "forwarded",
            "forwarded",
            "category_not_selected",
            "phone_line_ok",
        ]


class TestStationsImport:
    @pytest.mark.parametrize(
        ("receiver", "problem"),
        [
            ({"name": "r", "host": "h", "port": "p"}, "station 0: receivers[0].port: expected int | null, got str"),
            ({"name": "r", "host": "h", "port": 1, "bogus": 1}, "station 0: receivers[0].bogus: unknown field"),
            ({"name": "r", "host": "h", "port": 1, "protocol": "sctp"}, "station 0: receivers[0].protocol: invalid enum value 'sctp'"),
        ],
    )  # fmt: skip
    def test_a_wrong_type_names_the_station_and_field(
        self, receiver: dict[str, object], problem: str
    ) -> None:
        """As accounts import does ("entry 0: ..."): the decoder's own wording, "Expected `int |
        null`, got `str` - at `$[0].receivers[0].port`", was shown as it came."""
        body = json.dumps([{"name": "c", "receivers": [receiver]}]).encode()
        with pytest.raises(UserFacingError) as info:
            parse_stations(body, "stations.json")
        assert str(info.value) == f"stations.json: {problem}"

    def test_a_byte_order_mark_is_not_an_error(self) -> None:
        """A file saved by a Windows editor starts with a UTF-8 byte order mark."""
        body = b"\xef\xbb\xbf" + json.dumps([{"name": "c"}]).encode()
        stations, _ = parse_stations(body, "stations.json")
        assert [s.name for s in stations] == ["c"]

    def test_phone_receiver_is_stored_with_a_warning(self, tmp_path: Path) -> None:
        """Phone receivers are accepted but the import says they cannot be delivered to."""
        body = [{"name": "c", "receivers": [{"name": "ph", "kind": "phone", "phone_number": "+15550100"},
                                            {"name": "ip", "host": "127.0.0.1", "port": 10010}]}]  # fmt: skip
        stations, warnings = parse_stations(json.dumps(body).encode(), "stations.json")
        assert [r.name for r in stations[0].receivers] == ["ph", "ip"]
        assert len(warnings) == 1
        assert "telephony gateway" in warnings[0]
