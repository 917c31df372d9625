"""Ingestion end to end: real sockets into the engine, real PostgreSQL, real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt
import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from engine.account_model import Account
from engine.deadline_timer import Clock, utc_now
from engine.service import Engine
from engine.settings import DatabaseSettings, Dc09Settings, HttpSettings, MqttSettings, Settings
from engine.store.accounts import AccountStore
from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import CrcStyle, decode_frame, encode_frame
from tests.support.dc09_module import Dc09TcpModule, send_udp
from tests.support.tcp_proxy import TcpProxy

KEY_HEX = "000102030405060708090A0B0C0D0E0F"
KEY = AesKey.from_hex(KEY_HEX)


def settings_for(
    database_url: str, *, mqtt: bool = False, prefix: str = "t/v1", client_id: str = "test"
) -> Settings:
    return Settings(
        database=DatabaseSettings(url=database_url, commit_window_ms=0.5),
        dc09=Dc09Settings(port=0),
        http=HttpSettings(port=0),
        mqtt=MqttSettings(
            enabled=mqtt,
            topic_prefix=prefix,
            client_id=client_id,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        ),
    )


@contextlib.asynccontextmanager
async def running_engine(settings: Settings, *, clock: Clock = utc_now) -> AsyncIterator[Engine]:
    engine = Engine(settings, clock=clock)
    task = asyncio.create_task(engine.run())
    ready = asyncio.create_task(engine.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    assert ready in done, "engine did not become ready"
    try:
        yield engine
    finally:
        engine.stop.set()
        await asyncio.wait_for(task, 30)


async def provision(pool: asyncpg.Pool) -> None:
    await AccountStore(pool).upsert_many(
        [
            Account(account="1234", module_serial="SERIAL-1234"),
            Account(account="5678", key=KEY_HEX),
            Account(account="1409"),
            Account(account="22334455"),
        ]
    )


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def engine(db_pool: asyncpg.Pool, database_url: str) -> AsyncIterator[Engine]:
    await provision(db_pool)
    async with running_engine(settings_for(database_url)) as running:
        yield running


def port_of(engine: Engine) -> int:
    assert engine.dc09 is not None
    return engine.dc09.port


class TestRepliesOverSockets:
    @pytest.mark.parametrize("transport", ["tcp", "udp"])
    async def test_reply_classes(
        self, engine: Engine, db_pool: asyncpg.Pool, transport: str
    ) -> None:
        """ACK, NAK with our time, DUH and silence over real TCP and UDP sockets."""
        port = port_of(engine)
        now = datetime.now(UTC)
        cases = {
            "ack": encode_frame(
                token="ADM-CID", seq="0011", account="1234", data="#1234|1130 01 003"
            ),
            "nak": encode_frame(
                token="NULL",
                seq="0000",
                account="1409",
                data="",
                timestamp=now - timedelta(hours=1),
            ),
            "duh_unknown": encode_frame(
                token="SIA-DCS", seq="0012", account="ABCDEF", data="#ABCDEF|NBA01"
            ),
            "duh_plain_for_keyed": encode_frame(
                token="SIA-DCS", seq="0013", account="5678", data="#5678|NBA01"
            ),
            "silent_bad_crc": b"\n0000"
            + encode_frame(token="NULL", seq="0000", account="1234", data="")[5:],
        }
        replies: dict[str, bytes | None] = {}
        if transport == "tcp":
            module = Dc09TcpModule("127.0.0.1", port, account="1234")
            await module.connect()
            for name, raw in cases.items():
                replies[name] = await module.send_raw(raw, timeout=1.5)
            await module.close()
        else:
            for name, raw in cases.items():
                replies[name] = await send_udp("127.0.0.1", port, raw, timeout=1.5)
        ack = decode_frame(replies["ack"] or b"")
        assert (ack.token, ack.seq, ack.account) == ("ACK", "0011", "1234")
        nak = decode_frame(replies["nak"] or b"")
        assert nak.token == "NAK"
        assert nak.timestamp is not None
        assert abs((nak.timestamp - datetime.now(UTC)).total_seconds()) < 5
        assert decode_frame(replies["duh_unknown"] or b"").token == "DUH"
        assert decode_frame(replies["duh_plain_for_keyed"] or b"").token == "DUH"
        assert replies["silent_bad_crc"] is None
        rows = await db_pool.fetch("SELECT account, seq, transport FROM signals ORDER BY id")
        assert [(r["account"], r["seq"], r["transport"]) for r in rows] == [
            ("1234", "0011", transport)
        ]

    async def test_encrypted_frame_and_encrypted_ack(
        self, engine: Engine, db_pool: asyncpg.Pool
    ) -> None:
        """An AES frame is stored decrypted-and-parsed and answered with an encrypted ACK."""
        module = Dc09TcpModule("127.0.0.1", port_of(engine), account="5678", key=KEY)
        await module.connect()
        reply = await module.send("SIA-DCS", "#5678|Nri2/FA017")
        await module.close()
        assert reply is not None
        ack = module.decode_reply(reply)
        assert (ack.token, ack.encrypted) == ("ACK", True)
        row = await db_pool.fetchrow(
            "SELECT encrypted, events, categories FROM signals WHERE account = '5678'"
        )
        assert row is not None
        assert row["encrypted"] is True
        assert row["categories"] == ["alarms"]
        events = json.loads(row["events"])
        assert (events[0]["code"], events[0]["zone"], events[0]["partition"]) == ("FA", 17, 2)
        assert events[0]["classification"]["fire"] is True

    async def test_vendor_deviations_accepted(self, engine: Engine, db_pool: asyncpg.Pool) -> None:
        """Binary CRC, Eldes CR-in-CRC, bare L, several frames in one read and trailing NULs all get ACKs."""
        module = Dc09TcpModule("127.0.0.1", port_of(engine), account="1234")
        await module.connect()
        binary = encode_frame(
            token="ADM-CID",
            seq="0021",
            account="1234",
            data="#1234|1602 00 000",
            crc_style=CrcStyle.BINARY,
        )
        reply = await module.send_raw(binary)
        assert reply is not None
        assert decode_frame(reply).crc_style is CrcStyle.BINARY
        plain = encode_frame(token="ADM-CID", seq="0022", account="1234", data="#1234|1301 00 001")
        region = plain[9:-1]
        eldes_crc = crc16_arc(region + b"\r")
        eldes = b"\n" + f"{eldes_crc:04X}0{len(region) + 1:03X}".encode() + region + b"\r"
        assert decode_frame(await module.send_raw(eldes) or b"").seq == "0022"
        bare_l = b'\n78FC003B"SIA-DCS"0001L#22334455[#22334455|NCQ1]_14:33:53,02-09-2020\r'
        reply = await module.send_raw(bare_l)  # plain timestamp of 2020: NAK (checked by default)
        assert reply is not None
        assert decode_frame(reply).token == "NAK"
        two = (
            encode_frame(token="NULL", seq="0000", account="1234", data="")
            + b"\x00"
            + encode_frame(token="ADM-CID", seq="0023", account="1234", data="#1234|1401 01 002")
        )
        first = await module.send_raw(two)
        assert first is not None
        assert decode_frame(first.lstrip(b"\x00")).seq == "0000"
        await module.close()
        await wait_until(
            lambda: _count(
                db_pool, "SELECT count(*) FROM signals WHERE seq IN ('0021','0022','0023')", 3
            )
        )

    async def test_duplicate_is_acked_and_stored_once(
        self, engine: Engine, db_pool: asyncpg.Pool
    ) -> None:
        """A resent frame (same seq and data) is ACKed again but stored once and flagged."""
        module = Dc09TcpModule("127.0.0.1", port_of(engine), account="1234")
        await module.connect()
        first = await module.send("ADM-CID", "#1234|1130 01 005", seq="0101")
        again = await module.send("ADM-CID", "#1234|1130 01 005", seq="0101")
        await module.close()
        assert first is not None
        assert again is not None
        assert decode_frame(first).token == decode_frame(again).token == "ACK"
        rows = await db_pool.fetch("SELECT duplicates FROM signals WHERE seq = '0101'")
        assert [r["duplicates"] for r in rows] == [1]

    async def test_null_is_last_contact_not_an_event(
        self, engine: Engine, db_pool: asyncpg.Pool
    ) -> None:
        """A NULL link test updates last contact and is not stored as a signal."""
        module = Dc09TcpModule("127.0.0.1", port_of(engine), account="1409")
        await module.connect()
        reply = await module.send("NULL", "")
        await module.close()
        assert reply is not None
        assert decode_frame(reply).token == "ACK"
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == 0
        assert await db_pool.fetchval(
            "SELECT last_contact_at IS NOT NULL FROM accounts WHERE account = '1409'"
        )

    async def test_account_imported_while_running_is_used(
        self, engine: Engine, db_pool: asyncpg.Pool
    ) -> None:
        """An account added while the engine runs is accepted without a restart (LISTEN/NOTIFY)."""
        module = Dc09TcpModule("127.0.0.1", port_of(engine), account="777")
        await module.connect()
        before = await module.send("NULL", "")
        assert before is not None
        assert decode_frame(before).token == "DUH"
        await AccountStore(db_pool).upsert_many([Account(account="777")])
        await wait_until(lambda: _true(engine.directory.get("777") is not None))
        after = await module.send("NULL", "")
        await module.close()
        assert after is not None
        assert decode_frame(after).token == "ACK"


async def _count(pool: asyncpg.Pool, sql: str, expected: int) -> bool:
    return bool(await pool.fetchval(sql) == expected)


async def _true(value: bool) -> bool:
    return value


def _shed_udp_shutting_down() -> float:
    value = REGISTRY.get_sample_value(
        "alarmrelay_signals_shed_total", {"transport": "udp", "reason": "shutting_down"}
    )
    return value or 0.0


class TestShutdown:
    async def test_a_udp_signal_committed_during_shutdown_is_still_acked(
        self, engine: Engine, db_pool: asyncpg.Pool
    ) -> None:
        """SIGTERM while a UDP frame's commit is in flight: the engine takes no new datagrams
        (each counted as shed, reason shutting_down), but the ACK of the one it is committing
        still goes out (the socket used to close first: the module got nothing for a signal we
        had stored)."""
        port = port_of(engine)
        raw = encode_frame(token="ADM-CID", seq="0021", account="1234", data="#1234|1130 01 003")
        later = encode_frame(token="ADM-CID", seq="0022", account="1234", data="#1234|1130 01 004")
        async with db_pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            # The commit updates the account's last contact: it waits for this row lock.
            await conn.execute("SELECT 1 FROM accounts WHERE account = '1234' FOR UPDATE")
            reply = asyncio.create_task(send_udp("127.0.0.1", port, raw, timeout=10))
            await asyncio.sleep(0.5)
            engine.stop.set()
            await asyncio.sleep(0.3)
            shed = _shed_udp_shutting_down()
            assert await send_udp("127.0.0.1", port, later, timeout=0.5) is None
            assert _shed_udp_shutting_down() == shed + 1
            await tx.rollback()
        ack = decode_frame(await reply or b"")
        assert (ack.token, ack.seq, ack.account) == ("ACK", "0021", "1234")
        rows = await db_pool.fetch("SELECT seq FROM signals WHERE account = '1234'")
        assert [r["seq"] for r in rows] == ["0021"]


class TestDatabaseGoesAway:
    async def test_no_ack_while_down_and_recovery(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """With the database cut off no ACK is sent (the module retries); ACKs resume when it returns."""
        await provision(db_pool)
        host_port = database_url.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.split(":")
        proxy = TcpProxy(host, int(port))
        await proxy.start()
        proxied = database_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        settings = settings_for(proxied)
        try:
            async with running_engine(settings) as engine:
                module = Dc09TcpModule("127.0.0.1", port_of(engine), account="1234")
                await module.connect()
                assert await module.send("ADM-CID", "#1234|1130 01 001", seq="0201") is not None
                proxy.cut()
                assert (
                    await module.send("ADM-CID", "#1234|1130 01 002", seq="0202", timeout=3) is None
                )
                assert (
                    await module.send("ADM-CID", "#1234|1130 01 002", seq="0202", timeout=1) is None
                )
                proxy.restore()
                reply = None
                for _ in range(40):  # the module retries, as a panel does
                    reply = await module.send("ADM-CID", "#1234|1130 01 002", seq="0202", timeout=1)
                    if reply is not None:
                        break
                assert reply is not None
                assert decode_frame(reply).token == "ACK"
                await module.close()
        finally:
            await proxy.stop()
        rows = await db_pool.fetch("SELECT seq FROM signals ORDER BY id")
        assert [r["seq"] for r in rows] == ["0201", "0202"]


async def publish_one_by_one(
    pool: asyncpg.Pool,
    database_url: str,
    broker: tuple[str, int],
    payloads: list[dict[str, object]],
) -> list[dict[str, object]]:
    """Run an engine with MQTT, publish each events payload as module SERIAL-1234 once the
    previous one is acked, and return the acks."""
    await provision(pool)
    prefix = f"test-{secrets.token_hex(4)}/v1"
    settings = settings_for(
        database_url, mqtt=True, prefix=prefix, client_id=f"e-{secrets.token_hex(3)}"
    )
    acks: list[dict[str, object]] = []
    async with running_engine(settings) as engine:
        await asyncio.wait_for(engine._mqtt.subscribed.wait(), 10)
        async with aiomqtt.Client(*broker, identifier=f"m-{secrets.token_hex(3)}") as module:
            await module.subscribe(f"{prefix}/modules/SERIAL-1234/ack", qos=1)
            for body in payloads:
                await module.publish(
                    f"{prefix}/modules/SERIAL-1234/events", json.dumps(body), qos=1
                )
                async with asyncio.timeout(10):
                    async for message in module.messages:
                        acks.append(msgspec.json.decode(message.payload))  # type: ignore[arg-type]
                        break
    return acks


class TestMqttIngest:
    async def test_publish_ack_and_stored(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """A module's events publish is committed, acked on its ack topic, and stored; bad payloads are rejected."""
        await provision(db_pool)
        prefix = f"test-{secrets.token_hex(4)}/v1"
        async with running_engine(
            settings_for(
                database_url, mqtt=True, prefix=prefix, client_id=f"e-{secrets.token_hex(3)}"
            )
        ) as engine:
            listener = engine._mqtt
            await asyncio.wait_for(listener.subscribed.wait(), 10)
            host, port = mqtt_broker
            async with aiomqtt.Client(
                host, port, identifier=f"mod-{secrets.token_hex(3)}"
            ) as module:
                await module.subscribe(f"{prefix}/modules/SERIAL-1234/ack", qos=1)
                payload = {
                    "v": 1,
                    "msg_id": "m-1",
                    "events": [{"family": "cid", "code": "130", "qualifier": "1", "zone": 4}],
                }
                await module.publish(
                    f"{prefix}/modules/SERIAL-1234/events", json.dumps(payload), qos=1
                )
                await module.publish(f"{prefix}/modules/SERIAL-1234/events", b"{not json", qos=1)
                await module.publish(
                    f"{prefix}/modules/SERIAL-1234/checkin", json.dumps({"v": 1}), qos=1
                )
                acks = []
                async with asyncio.timeout(10):
                    async for message in module.messages:
                        acks.append(msgspec.json.decode(message.payload))  # type: ignore[arg-type]
                        if len(acks) == 3:
                            break
        statuses = sorted((a["status"], a.get("msg_id") or "") for a in acks)
        assert statuses == [("accepted", ""), ("accepted", "m-1"), ("rejected", "")]
        assert any("malformed JSON" in (a.get("reason") or "") for a in acks)
        rows = await db_pool.fetch("SELECT kind, transport, reject_reason FROM signals ORDER BY id")
        assert [(r["kind"], r["transport"]) for r in rows] == [
            ("event", "mqtt"),
            ("rejected", "mqtt"),
        ]

    async def test_a_reused_msg_id_with_new_content_is_a_new_alarm(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """A module whose msg_id counter restarts after a reboot sends its next alarm as m-1
        again: it was acked 'duplicate' and never stored nor forwarded. The key is now the
        msg_id and the content (as DC-09's seq and data): the same content again, even with
        a new sent_at, is still a duplicate."""

        def events(code: str, sent_at: str) -> dict[str, object]:
            return {
                "v": 1,
                "msg_id": "m-1",
                "sent_at": sent_at,
                "events": [{"family": "cid", "code": code, "qualifier": "1", "zone": 4}],
            }

        acks = await publish_one_by_one(
            db_pool,
            database_url,
            mqtt_broker,
            [
                events("130", "2026-12-07T19:00:00Z"),  # burglary
                events("130", "2026-12-07T19:00:05Z"),  # its resend
                events("110", "2026-12-07T19:20:00Z"),  # fire, after a reboot
            ],
        )
        assert [a["status"] for a in acks] == ["accepted", "duplicate", "accepted"]
        rows = await db_pool.fetch("SELECT events FROM signals WHERE kind = 'event' ORDER BY id")
        assert ["130" in str(rows[0]["events"]), "110" in str(rows[1]["events"])] == [True, True]
        assert len(rows) == 2

    async def test_a_sent_at_with_any_offset_is_stored(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int]
    ) -> None:
        """JSON allows any UTC offset up to ±23:59 in ``sent_at``; PostgreSQL reads at most
        ±15:59. An alarm whose module wrote a larger one (a firmware's time zone bug) passed
        validation, then failed its commit: the module was acked 'rejected' / 'not stored'
        (an alarm lost, the critical AlarmrelaySignalsRefused), and an entry delay's time
        failed the same way. The time is kept as the same instant in UTC: the alarm is stored."""
        alarm = {
            "v": 1,
            "msg_id": "tz-1",
            "sent_at": "2026-11-22T12:00:00+23:00",
            "events": [{"family": "cid", "code": "130", "qualifier": "1", "zone": 4}],
        }
        entry = {
            "v": 1,
            "msg_id": "tz-2",
            "sent_at": "2026-11-22T12:00:00-20:30",
            "entry_delay": {"partition": 1, "zone": 3, "entry_delay_s": 30},
        }
        acks = await publish_one_by_one(db_pool, database_url, mqtt_broker, [alarm, entry])
        assert [(a["msg_id"], a["status"]) for a in acks] == [
            ("tz-1", "accepted"),
            ("tz-2", "accepted"),
        ]
        rows = await db_pool.fetch("SELECT seq, sent_at FROM signals ORDER BY id")
        assert [(r["seq"], r["sent_at"]) for r in rows] == [
            ("tz-1", datetime(2026, 11, 21, 13, tzinfo=UTC)),
            ("tz-2", datetime(2026, 11, 23, 8, 30, tzinfo=UTC)),
        ]
