"""Delivery survives kill -9, and two engines on one database deliver everything once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.station_model import ReceiverConfig, Station
from engine.station_sim import Received, StationSimulator
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from protocols.dc09_frame import decode_frame, encode_frame
from tests.support.engine_process import EngineProcess, write_config

pytestmark = pytest.mark.slow

ACCOUNTS = ["A01", "A02", "A03"]


async def provision(pool: asyncpg.Pool, station_port: int) -> None:
    await StationStore(pool).upsert(
        [
            Station(
                name="central",
                receivers=(
                    ReceiverConfig(
                        name="rx", host="127.0.0.1", port=station_port, ack_timeout_s=1.0
                    ),
                ),
            )
        ]
    )
    await AccountStore(pool).upsert_many(
        [
            Account(
                account=a,
                forwarding=ForwardingSettings(
                    mode=ForwardingMode.ALWAYS, station_account=f"77{i}", primary_receiver="rx"
                ),
            )
            for i, a in enumerate(ACCOUNTS)
        ]
    )


async def send_all(port: int, account: str, count: int, acked: list[int]) -> None:
    """Stop-and-wait burglary alarms with zones 1..count; records the ACKed zones."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        for zone in range(1, count + 1):
            writer.write(
                encode_frame(
                    token="ADM-CID",
                    seq=f"{zone:04d}",
                    account=account,
                    data=f"#{account}|1130 01 {zone:03d}",
                )
            )
            await writer.drain()
            try:
                reply = await asyncio.wait_for(reader.readuntil(b"\r"), 2)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            if decode_frame(reply).token == "ACK":
                acked.append(zone)
    finally:
        writer.close()


def lanes(received: list[Received]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for r in received:
        zone = r.events[0].zone
        assert zone is not None
        out.setdefault(r.account or "", []).append((r.seq, zone))
    return out


def assert_ordered_once(
    per_lane: dict[str, list[tuple[str, int]]], expected: dict[str, list[int]], max_repeats: int
) -> None:
    for lane, items in per_lane.items():
        zones = [zone for _, zone in items]
        unique = list(dict.fromkeys(zones))
        assert unique == sorted(unique), f"lane {lane} out of order: {zones}"
        repeats = len(zones) - len(unique)
        assert repeats <= max_repeats, f"lane {lane} repeated {repeats} deliveries: {zones}"
        # a repeat is a retransmission of the same delivery: same seq
        seqs = {zone: seq for seq, zone in items}
        assert all(seqs[zone] == seq for seq, zone in items)
    for lane, zones in expected.items():
        got = {zone for _, zone in per_lane.get(lane, [])}
        assert set(zones) <= got, f"lane {lane} missing {sorted(set(zones) - got)[:5]}"


class TestKillNineWithSlowStation:
    async def test_nothing_lost_order_kept(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """kill -9 mid-stream with a slow station; after restart every ACKed signal is delivered in order."""
        station = StationSimulator(delay_ms=40)
        await station.start()
        try:
            await provision(db_pool, station.port)
            config = write_config(
                tmp_path / "e.toml",
                database_url=database_url,
                data_dir=tmp_path / "v",
                extra="[mqtt]\nenabled = false\n",
            )
            engine = EngineProcess(config)
            await asyncio.to_thread(engine.start)
            acked: dict[str, list[int]] = {a: [] for a in ACCOUNTS}
            senders = [
                asyncio.create_task(send_all(engine.dc09_port, a, 40, acked[a])) for a in ACCOUNTS
            ]
            while len(station.received) < 15:
                await asyncio.sleep(0.02)
            engine.kill9()
            await asyncio.gather(*senders)
            pending = await db_pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE state = 'pending'"
            )
            assert pending > 0, "the kill should leave deliveries pending"
            restarted = EngineProcess(config)
            await asyncio.to_thread(restarted.start)
            try:
                total = sum(len(v) for v in acked.values())
                await station.wait_for(total, timeout_s=60)
                for _ in range(100):
                    if (
                        await db_pool.fetchval(
                            "SELECT count(*) FROM deliveries WHERE state = 'pending'"
                        )
                        == 0
                    ):
                        break
                    await asyncio.sleep(0.1)
            finally:
                restarted.terminate()
        finally:
            await station.stop()
        expected = {f"77{i}": acked[a] for i, a in enumerate(ACCOUNTS)}
        # At most the one delivery per lane that was on the wire when the engine died is repeated.
        assert_ordered_once(lanes(station.received), expected, max_repeats=1)


@asynccontextmanager
async def two_engines_on_one_database(
    pool: asyncpg.Pool, database_url: str, tmp_path: Path, *, station_delay_ms: int
) -> AsyncIterator[tuple[StationSimulator, list[EngineProcess]]]:
    """A station answering after ``station_delay_ms``, the accounts' lanes forwarded to it, and
    two engine processes (DC-09 only, a config and data directory each) on the one database;
    on the way out every engine still running is stopped (SIGTERM), then the station."""
    station = StationSimulator(delay_ms=station_delay_ms)
    await station.start()
    engines: list[EngineProcess] = []
    try:
        await provision(pool, station.port)
        for n in range(2):
            config = write_config(
                tmp_path / f"e{n}.toml",
                database_url=database_url,
                data_dir=tmp_path / f"v{n}",
                extra="[mqtt]\nenabled = false\n",
            )
            engine = EngineProcess(config)
            await asyncio.to_thread(engine.start)
            engines.append(engine)
        yield station, engines
    finally:
        for engine in engines:
            engine.terminate()
        await station.stop()


class TestTwoEngines:
    async def test_deliver_once_in_order(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """Two engine processes on one database: every signal delivered exactly once, in order per lane."""
        async with two_engines_on_one_database(
            db_pool, database_url, tmp_path, station_delay_ms=5
        ) as (station, engines):
            acked: dict[str, list[int]] = {a: [] for a in ACCOUNTS}
            # Each account talks to one engine; both engines' dispatchers compete for every lane.
            await asyncio.gather(
                *(
                    send_all(engines[i % 2].dc09_port, a, 30, acked[a])
                    for i, a in enumerate(ACCOUNTS)
                )
            )
            await station.wait_for(sum(len(v) for v in acked.values()), timeout_s=60)
            await asyncio.sleep(1.0)  # nothing more may arrive
        expected = {f"77{i}": acked[a] for i, a in enumerate(ACCOUNTS)}
        assert sum(len(v) for v in acked.values()) == 90
        assert len(station.received) == 90
        assert_ordered_once(lanes(station.received), expected, max_repeats=0)


async def send_alternating(
    ports: list[int], account: str, zones: range, acked: list[int], *, tries: int = 6
) -> None:
    """Stop-and-wait burglary alarms with the given zones, each to the engine after the one the
    previous went to (a module behind a load balancer); a frame without an answer is sent
    again, same seq, to the other engine. Records the ACKed zones."""
    links: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def send(port: int, raw: bytes) -> str | None:
        try:
            if port not in links:
                links[port] = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
            reader, writer = links[port]
            writer.write(raw)
            await writer.drain()
            return decode_frame(await asyncio.wait_for(reader.readuntil(b"\r"), 2)).token
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            links.pop(port, None)
            return None

    try:
        for zone in zones:
            raw = encode_frame(
                token="ADM-CID",
                seq=f"{zone:04d}",
                account=account,
                data=f"#{account}|1130 01 {zone:03d}",
            )
            for attempt in range(tries):
                token = await send(ports[(zone + attempt) % len(ports)], raw)
                if token is not None:
                    if token == "ACK":
                        acked.append(zone)
                    break
                await asyncio.sleep(0.05)
            else:
                return
    finally:
        for _, writer in links.values():
            writer.close()


class TestTakeover:
    async def test_the_survivor_delivers_what_the_dead_engine_held(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """Two engines commit the same lanes (each module's frames alternate between them);
        one is killed -9 mid-stream and stays dead. The survivor takes over the deliveries
        leased to the dead one once their leases lapse, and every ACKed signal reaches the
        station in order per lane, stored once (the frames the dead engine left unanswered
        are sent again to the survivor and recognised as duplicates when committed)."""
        async with two_engines_on_one_database(
            db_pool, database_url, tmp_path, station_delay_ms=50
        ) as (station, engines):
            acked: dict[str, list[int]] = {a: [] for a in ACCOUNTS}
            # The first ten signals of each lane go to the engine about to die: committed on
            # clear lanes, they are leased to it and wait in its memory behind a slow station.
            await asyncio.gather(
                *(
                    send_alternating([engines[0].dc09_port], a, range(1, 11), acked[a])
                    for a in ACCOUNTS
                )
            )
            # The modules go on through both engines while it dies.
            ports = [engine.dc09_port for engine in engines]
            senders = [
                asyncio.create_task(send_alternating(ports, a, range(11, 61), acked[a]))
                for a in ACCOUNTS
            ]
            assert engines[0].proc is not None
            held = await db_pool.fetchval(
                "SELECT count(*) FROM deliveries WHERE state = 'pending' AND lease_owner LIKE $1",
                f"%:{engines[0].proc.pid}:%",  # its lease owner: host:pid:random
            )
            engines[0].kill9()
            assert held > 0, "the dead engine held deliveries"
            await asyncio.gather(*senders)
            total = sum(len(v) for v in acked.values())
            assert total == 60 * len(ACCOUNTS), "the survivor answers every frame"
            await station.wait_for(total, timeout_s=60)
            for _ in range(200):
                pending = await db_pool.fetchval(
                    "SELECT count(*) FROM deliveries WHERE state <> 'delivered'"
                )
                if pending == 0:
                    break
                await asyncio.sleep(0.1)
            assert pending == 0
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == total
        expected = {f"77{i}": acked[a] for i, a in enumerate(ACCOUNTS)}
        # At most the one delivery per lane on the wire when the engine died is repeated.
        assert_ordered_once(lanes(station.received), expected, max_repeats=1)
