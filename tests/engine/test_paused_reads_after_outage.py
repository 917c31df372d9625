"""DC-09 connections paused because the commit queue was saturated, and a database outage: once
the queue is emptied, however it is, the paused connections are read again; once the database
is back their modules' resent signals are committed and ACKed, none before its commit, none lost.

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
    """Poll ``condition`` until it holds (TimeoutError past ``timeout_s``)."""
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


class _Panel:
    """A module that sends its ``BURST`` alarms at once, then resends every one not ACKed yet,
    every half second (as a panel with a buffer does), on one kept-open connection. Each ACK is
    checked against the database the moment it arrives: the signal must be committed by then."""

    def __init__(self, module: Dc09TcpModule, db_pool: asyncpg.Pool) -> None:
        self.module = module
        self.db_pool = db_pool
        self.acked: dict[str, int] = {}  # seq → its rows in the database when its ACK came
        self._tasks: list[asyncio.Task[None]] = []

    def frames(self, seqs: list[str]) -> bytes:
        account = self.module.account
        return b"".join(
            self.module.frame("ADM-CID", f"#{account}|{_alarm(int(seq))}", seq=seq) for seq in seqs
        )

    @property
    def unacked(self) -> list[str]:
        return [s for s in (f"{n:04d}" for n in range(1, BURST + 1)) if s not in self.acked]

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._resend())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.module.close()

    async def _read(self) -> None:
        while True:
            reply = await self.module.reply(timeout=60.0)
            if reply is None:
                continue
            frame = self.module.decode_reply(reply)
            assert frame.token == "ACK", frame
            stored = await self.db_pool.fetchval(
                "SELECT count(*) FROM signals WHERE account = $1 AND seq = $2",
                self.module.account,
                frame.seq,
            )
            self.acked.setdefault(frame.seq, stored)

    async def _resend(self) -> None:
        while self.unacked:
            await asyncio.sleep(0.5)  # the panel's resend interval
            await self.module.write(self.frames(self.unacked))


PANELS = ["2001", "2002", "2003", "2004"]


async def test_paused_modules_sending_through_an_outage_are_acked_once_it_ends(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """Four modules paused on a saturated queue as the database goes, resending all along:
    each connection is read again while the database is away (its signals refused, not
    queued, so none pauses again), and once it is back every signal is ACKed, each ACK after
    its commit (its row is there when the ACK arrives), none lost, none stored twice."""
    await AccountStore(db_pool).upsert_many([Account(account=a) for a in PANELS])
    async with (
        proxied_database(database_url) as (proxy, url),
        running_engine(_settings(url)) as engine,
    ):
        pipeline, port = _parts(engine)
        panels = [_Panel(await _module(port, a), db_pool) for a in PANELS]
        with capture_logs() as logs:
            pauses = _read_pauses()
            for panel in panels:
                await panel.module.write(panel.frames(panel.unacked))
            await _until(lambda: _read_pauses() >= pauses + len(panels))  # every one paused

            proxy.cut()
            await _until(lambda: not pipeline.available)
            for panel in panels:
                panel.start()

            def read_while_away(panel: _Panel) -> bool:
                """More of its signals refused for the outage than its burst held: resends,
                read from its connection while the database is away."""
                refused = [
                    e
                    for e in _not_committed(logs, panel.module.account)
                    if e["reason"].startswith("database unavailable")
                ]
                return len(refused) > BURST

            await _until(lambda: all(read_while_away(panel) for panel in panels))
            assert not pipeline.available
            proxy.restore()
            await _until(lambda: pipeline.available)

            await _until(lambda: not any(panel.unacked for panel in panels), timeout_s=20.0)
            for panel in panels:
                await panel.stop()

    for panel in panels:
        # Each ACK came once its signal was committed (its row was there already).
        assert all(n == 1 for n in panel.acked.values()), panel.acked
    rows = await db_pool.fetch("SELECT account, seq FROM signals ORDER BY account, seq")
    assert [(r["account"], r["seq"]) for r in rows] == [
        (a, f"{n:04d}") for a in PANELS for n in range(1, BURST + 1)
    ]
