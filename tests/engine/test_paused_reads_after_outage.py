"""DC-09 connections paused because the commit queue was saturated, and a database outage: once
the queue is emptied, however it is, the paused connections are read again.

Real sockets into a real engine, real PostgreSQL behind a proxy the test cuts and restores.
The engine's commit window is long (1 s) and its queue short (10 signals, paused at 8), so a
burst of frames pauses its connection while the writer still waits for stragglers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import asyncpg
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine.account_model import Account
from engine.pipeline import IngestPipeline
from engine.service import Engine
from engine.settings import DatabaseSettings, Dc09Settings, HttpSettings, MqttSettings, Settings
from engine.store.accounts import AccountStore
from tests.engine.test_ingest_e2e import running_engine
from tests.support.dc09_module import Dc09TcpModule
from tests.support.tcp_proxy import proxied_database

MAX_PENDING = 10  # reads pause at 8 waiting signals, resume at 5
BURST = 8


def _settings(database_url: str) -> Settings:
    return Settings(
        database=DatabaseSettings(url=database_url, commit_window_ms=1000.0, commit_writers=1),
        dc09=Dc09Settings(port=0, max_pending_commits=MAX_PENDING),
        http=HttpSettings(port=0),
        mqtt=MqttSettings(enabled=False),
    )


def _read_pauses() -> float:
    return REGISTRY.get_sample_value("alarmrelay_read_pauses_total") or 0.0


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it holds (AssertionError past ``timeout_s``)."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def _parts(engine: Engine) -> tuple[IngestPipeline, int]:
    assert engine.pipeline is not None and engine.dc09 is not None
    return engine.pipeline, engine.dc09.port


def _alarm(zone: int) -> str:
    return f"1130 01 {zone:03d}"


def _acked(module: Dc09TcpModule, reply: bytes | None) -> bool:
    return reply is not None and module.decode_reply(reply).token == "ACK"


async def _module(port: int, account: str) -> Dc09TcpModule:
    module = Dc09TcpModule("127.0.0.1", port, account=account)
    await module.connect()
    return module


def _not_committed(
    logs: Sequence[MutableMapping[str, Any]], account: str
) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "signal_not_committed" and e["account"] == account]


HELD, BUSY = "4321", "1234"


async def test_a_held_accounts_commit_meeting_an_outage_resumes_the_paused_connections(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """A held account's commit apart is the one that finds the database gone, while the
    writer waits out its window: the queue it empties was saturated and a connection paused
    on it. That connection is read again (before, it stayed paused after the database came
    back: no commit of the writer ran to resume it, and the module got no ACK until the idle
    timeout closed its connection)."""
    await AccountStore(db_pool).upsert_many([Account(account=HELD), Account(account=BUSY)])
    async with (
        proxied_database(database_url) as (proxy, url),
        running_engine(_settings(url)) as engine,
    ):
        pipeline, port = _parts(engine)
        held = await _module(port, HELD)
        assert _acked(held, await held.send("ADM-CID", f"#{HELD}|{_alarm(1)}", seq="0001"))
        busy = await _module(port, BUSY)
        with capture_logs() as logs:
            async with db_pool.acquire() as holder, holder.transaction():
                # its supervision deadline, which every contact moves (as psql could hold it)
                await holder.execute(
                    "SELECT 1 FROM supervision WHERE account = $1 FOR UPDATE", HELD
                )
                await held.write(held.frame("ADM-CID", f"#{HELD}|{_alarm(2)}", seq="0002"))
                await _until(lambda: any(e["event"] == "ingest_account_locked" for e in logs))

                pauses = _read_pauses()
                burst = [
                    busy.frame("ADM-CID", f"#{BUSY}|{_alarm(n)}", seq=f"{n:04d}")
                    for n in range(1, BURST + 1)
                ]
                await busy.write(b"".join(burst))
                await _until(lambda: _read_pauses() > pauses)  # the queue is saturated

                proxy.cut()
                await _until(lambda: len(_not_committed(logs, BUSY)) == BURST)
                # The burst was failed still queued, as the held commit found the database
                # gone (a batch failed in its own commit names the error it met).
                assert {e["reason"] for e in _not_committed(logs, BUSY)} == {"database unavailable"}
                assert not pipeline.available
                proxy.restore()
                await _until(lambda: pipeline.available)

        # The module resends its first signal on the same connection: read, committed, ACKed.
        reply = await busy.send("ADM-CID", f"#{BUSY}|{_alarm(1)}", seq="0001", timeout=5.0)
        assert _acked(busy, reply), "the paused connection was never read again"
        await busy.close()
        await held.close()
    rows = await db_pool.fetch("SELECT seq FROM signals WHERE account = $1", BUSY)
    assert [r["seq"] for r in rows] == ["0001"]
