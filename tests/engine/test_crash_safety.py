"""kill -9 of a real engine process under load: every ACKed signal is stored exactly once."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import aiomqtt
import asyncpg
import pytest

from engine.account_model import Account
from engine.store.accounts import AccountStore
from protocols.dc09_frame import decode_frame, encode_frame
from tests.support.engine_process import EngineProcess, write_config

pytestmark = pytest.mark.slow


async def _sender(port: int, account: str, acked: list[str], stop: asyncio.Event) -> None:
    """A stop-and-wait module: sends unique events, records the ones ACKed, stops at the first silence."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    n = 0
    try:
        while not stop.is_set():
            n += 1
            seq = f"{n % 9999 + 1:04d}"
            data = f"#{account}|1130 01 {n % 1000:03d}"
            payload = f"{seq}:{data}"
            writer.write(encode_frame(token="ADM-CID", seq=seq, account=account, data=data))
            await writer.drain()
            try:
                reply = await asyncio.wait_for(reader.readuntil(b"\r"), 2)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            if decode_frame(reply).token == "ACK":
                acked.append(payload)
            if n >= 900:
                return
    finally:
        writer.close()


class TestKillNine:
    async def test_every_acked_signal_survives(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """kill -9 while 8 modules send at full speed; after restart every ACKed signal is stored once."""
        accounts = [f"{0xA00 + i:X}" for i in range(8)]
        await AccountStore(db_pool).upsert_many([Account(account=a) for a in accounts])
        config = write_config(
            tmp_path / "engine.toml",
            database_url=database_url,
            data_dir=tmp_path / "var",
            extra="[mqtt]\nenabled = false\n",
        )
        engine = EngineProcess(config)
        await asyncio.to_thread(engine.start)
        acked: dict[str, list[str]] = {a: [] for a in accounts}
        stop = asyncio.Event()
        senders = [
            asyncio.create_task(_sender(engine.dc09_port, a, acked[a], stop)) for a in accounts
        ]
        while sum(len(v) for v in acked.values()) < 400:
            await asyncio.sleep(0.01)
        engine.kill9()
        stop.set()
        await asyncio.gather(*senders)

        restarted = EngineProcess(config)
        await asyncio.to_thread(restarted.start)
        try:
            rows = await db_pool.fetch("SELECT account, seq, events, duplicates FROM signals")
        finally:
            restarted.terminate()
        stored: dict[str, list[str]] = {a: [] for a in accounts}
        for row in rows:
            event = json.loads(row["events"])[0]
            stored[row["account"]].append(
                f"{row['seq']}:#{row['account']}|1130 01 {event['zone'] or 0:03d}"
            )
        total_acked = sum(len(v) for v in acked.values())
        assert total_acked >= 400
        for account in accounts:
            missing = set(acked[account]) - set(stored[account])
            assert not missing, f"ACKed but not stored for {account}: {sorted(missing)[:5]}"
            assert len(stored[account]) == len(set(stored[account])), "a signal was stored twice"
            # At most the in-flight frame (committed, ACK lost in the kill) is stored without an ACK.
            assert len(stored[account]) - len(acked[account]) <= 1
        assert all(r["duplicates"] == 0 for r in rows)
        assert restarted.events("engine_stopped"), (
            "the restarted engine shut down cleanly on SIGTERM"
        )


class TestSharedSubscription:
    async def test_two_engines_split_mqtt_load(
        self, db_pool: asyncpg.Pool, database_url: str, mqtt_broker: tuple[str, int], tmp_path: Path
    ) -> None:
        """Two engine processes on one shared subscription store every message once between them."""
        serials = [f"SER-{i}" for i in range(4)]
        await AccountStore(db_pool).upsert_many(
            [Account(account=f"{0xB00 + i:X}", module_serial=s) for i, s in enumerate(serials)]
        )
        prefix = f"share-{secrets.token_hex(4)}/v1"
        engines = []
        for n in range(2):
            config = write_config(
                tmp_path / f"e{n}.toml",
                database_url=database_url,
                data_dir=tmp_path / f"var{n}",
                extra=f'[mqtt]\ntopic_prefix = "{prefix}"\nclient_id = "engine-{n}-{secrets.token_hex(3)}"\n',
            )
            engine = EngineProcess(config)
            await asyncio.to_thread(engine.start)
            engines.append(engine)
        try:
            host, port = mqtt_broker
            total = 200
            async with aiomqtt.Client(
                host, port, identifier=f"mods-{secrets.token_hex(3)}"
            ) as client:
                await client.subscribe(f"{prefix}/modules/+/ack", qos=1)
                for i in range(total):
                    serial = serials[i % len(serials)]
                    body = {
                        "v": 1,
                        "msg_id": f"m{i}",
                        "events": [{"family": "sia", "code": "BA", "zone": i % 999}],
                    }
                    await client.publish(
                        f"{prefix}/modules/{serial}/events", json.dumps(body), qos=1
                    )
                acks = 0
                async with asyncio.timeout(30):
                    async for _ in client.messages:
                        acks += 1
                        if acks == total:
                            break
            assert acks == total
            assert await db_pool.fetchval("SELECT count(*) FROM signals") == total
            assert await db_pool.fetchval("SELECT count(DISTINCT seq) FROM signals") == total
            per_engine = [await asyncio.to_thread(_accepted_mqtt, e.http_port) for e in engines]
            assert sum(per_engine) == total
            assert all(n > 0 for n in per_engine), f"one engine took no messages: {per_engine}"
        finally:
            for engine in engines:
                engine.terminate()


def _accepted_mqtt(http_port: int) -> int:
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(
        r'alarmrelay_mqtt_messages_total\{kind="events",result="accepted"\} ([0-9.]+)', text
    )
    return int(float(match.group(1))) if match else 0
