"""DC-09 modules that misbehave, over real sockets: they get what they are owed and cannot take
the engine's time or memory from the others."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import REGISTRY

from protocols.dc09_frame import encode_frame
from tests.engine.test_ingest_e2e import running_engine
from tests.engine.test_listener_limits import with_dc09

ROOT = Path(__file__).resolve().parents[2]


def _shed() -> float:
    value = REGISTRY.get_sample_value(
        "alarmrelay_signals_shed_total", {"transport": "tcp", "reason": "rate_limited"}
    )
    return value or 0.0


def _stale(seq: int) -> bytes:
    """A plain frame an hour old: NAK (the engine's time), nothing stored."""
    return encode_frame(
        token="ADM-CID", seq=f"{seq % 10000:04d}", account="1234", data="#1234|1130 01 001",
        timestamp=datetime.now(UTC) - timedelta(hours=1),
    )  # fmt: skip


async def test_a_half_closed_connection_still_gets_its_ack(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """Send, shut the sending side, read: the ACK comes after the commit, then the close."""
    await db_pool.execute("INSERT INTO accounts (account) VALUES ('1234')")
    async with running_engine(with_dc09(database_url, port=0)) as engine:
        assert engine.dc09 is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.dc09.port)
        writer.write(
            encode_frame(token="ADM-CID", seq="0001", account="1234", data="#1234|1130 01 003")
        )
        writer.write_eof()
        reply = await asyncio.wait_for(reader.read(), 5)  # up to the engine's close
        writer.close()
    assert b'"ACK"0001' in reply
    assert await db_pool.fetchval("SELECT count(*) FROM signals") == 1


async def test_rejected_frames_count_against_the_rate_limit(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """200 frames that all get NAK, in one write: only the burst is answered, the rest dropped
    (counted); a well-behaved module on its own connection is answered meanwhile."""
    await db_pool.execute("INSERT INTO accounts (account) VALUES ('1234')")
    settings = with_dc09(database_url, port=0, rate_limit_per_s=5.0)  # burst 10
    async with running_engine(settings) as engine:
        assert engine.dc09 is not None
        before = _shed()
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.dc09.port)
        writer.write(b"".join(_stale(i) for i in range(200)))
        await writer.drain()
        replies = b""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                replies += await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
        writer.close()
    naks = replies.count(b'"NAK"')
    assert 10 <= naks <= 16  # the burst, plus what the rate refilled meanwhile
    assert _shed() - before == 200 - naks


async def test_a_module_that_never_reads_is_paused_not_buffered(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """Frames that are answered, sent without ever reading the answers: once the replies fill the
    socket buffers the engine stops reading that connection (its memory does not grow), and the
    module's own sends block."""
    await db_pool.execute("INSERT INTO accounts (account) VALUES ('1234')")
    settings = with_dc09(database_url, port=0, rate_limit_per_s=1_000_000.0)
    async with running_engine(settings) as engine:
        assert engine.dc09 is not None
        sock = socket.create_connection(("127.0.0.1", engine.dc09.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        chunk = b"".join(_stale(i) for i in range(100))
        sent, blocked_since = 0, None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                sent += sock.send(chunk)
                blocked_since = None
            except BlockingIOError:
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > 1.5:
                    break  # the engine has not read for 1.5 s
            await asyncio.sleep(0.001)
        sock.close()
    assert blocked_since is not None, f"the engine kept reading: {sent} bytes taken"
    assert sent < 50_000_000


async def test_a_frame_sent_a_byte_at_a_time_does_not_hold_the_connection(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """Bytes that never complete a frame are not activity: the idle timeout closes it."""
    async with running_engine(with_dc09(database_url, port=0, idle_timeout_s=1.0)) as engine:
        assert engine.dc09 is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.dc09.port)
        writer.write(b"\n")
        closed_after = None
        started = time.monotonic()
        for _ in range(40):
            writer.write(b"X")
            try:
                if await asyncio.wait_for(reader.read(10), 0.2) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
        writer.close()
    assert closed_after is not None and closed_after < 6


FIT = """
import resource
from engine.open_files import fit_max_connections
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 1280))
print(fit_max_connections(500), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
print(fit_max_connections(10000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_the_open_file_limit_is_raised_or_the_connections_fitted() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FIT], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "500 756"  # raised to what 500 need (under the hard limit)
    assert lines[-1] == "1024 1280"  # up to the hard limit, and the connections fitted to it
    assert "dc09_max_connections_lowered" in done.stdout


async def test_a_module_gone_before_its_commit_is_not_counted_as_acked(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """The module's connection is reset while its signal waits for the commit: the signal is
    stored and counted as received, but no ACK is built or timed for a connection that is gone
    (logged instead)."""
    await db_pool.execute("INSERT INTO accounts (account) VALUES ('1234')")

    def acks() -> float:
        value = REGISTRY.get_sample_value(
            "alarmrelay_ack_latency_seconds_count", {"transport": "tcp"}
        )
        return value or 0.0

    def accepted() -> float:
        value = REGISTRY.get_sample_value(
            "alarmrelay_signals_received_total",
            {"transport": "tcp", "family": "cid", "result": "accepted"},
        )
        return value or 0.0

    async with running_engine(with_dc09(database_url, port=0)) as engine:
        assert engine.dc09 is not None
        acks_before, accepted_before = acks(), accepted()
        async with db_pool.acquire() as blocker:
            blocked = blocker.transaction()
            await blocked.start()
            await blocker.execute("LOCK TABLE signals IN ACCESS EXCLUSIVE MODE")  # the commit waits
            reader, writer = await asyncio.open_connection("127.0.0.1", engine.dc09.port)
            writer.write(
                encode_frame(token="ADM-CID", seq="0001", account="1234", data="#1234|1130 01 003")
            )
            await writer.drain()
            async with asyncio.timeout(5):  # until the batch waits on the lock
                while not await db_pool.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"):
                    await asyncio.sleep(0.01)
            # An abortive close (RST), as a module that resets or loses its link: the engine's
            # side of the connection is gone (a plain close would read as a half-close, which
            # is still owed its ACK).
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            await asyncio.sleep(0.2)  # the engine sees the reset before the commit returns
            await blocked.rollback()
        async with asyncio.timeout(5):
            while await db_pool.fetchval("SELECT count(*) FROM signals") == 0:
                await asyncio.sleep(0.02)
            while accepted() == accepted_before:
                await asyncio.sleep(0.02)
        assert acks() == acks_before
    assert await db_pool.fetchval("SELECT count(*) FROM signals") == 1


async def test_an_idle_module_that_never_reads_gives_its_connection_back(
    db_pool: asyncpg.Pool, database_url: str
) -> None:
    """A module that sends frames and never reads their replies, then goes quiet: the idle
    timeout frees its connection slot. Before, the idle close waited for its unread replies to
    be written, which never happened: the slot was held for good (dc09.max_connections of them
    and no module could connect), and the sweep logged the same close every few seconds."""
    await db_pool.execute("INSERT INTO accounts (account) VALUES ('1234')")
    settings = with_dc09(
        database_url, port=0, max_connections=1, idle_timeout_s=1.0, rate_limit_per_s=1_000_000.0
    )
    async with running_engine(settings) as engine:
        assert engine.dc09 is not None
        port = engine.dc09.port
        pauses = REGISTRY.get_sample_value("alarmrelay_read_pauses_total")
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        stuck.connect(("127.0.0.1", port))
        stuck.setblocking(False)
        async with asyncio.timeout(5):
            while not engine.dc09._connections:
                await asyncio.sleep(0.01)
        # The engine's side kept small too: the replies fill the socket buffers in a moment.
        (accepted,) = engine.dc09._connections
        accepted._transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        chunk = b"".join(_stale(i) for i in range(100))
        async with asyncio.timeout(20):  # until its unread NAKs make the engine stop reading it
            while REGISTRY.get_sample_value("alarmrelay_read_pauses_total") == pauses:
                with contextlib.suppress(BlockingIOError):
                    stuck.send(chunk)
                await asyncio.sleep(0.001)
        null = encode_frame(token="NULL", seq="0001", account="1234", data="")
        reply = b""
        try:
            async with asyncio.timeout(10):  # the idle timeout (1 s) and a sweep or two
                while b'"ACK"' not in reply:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(null)
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        reply = await asyncio.wait_for(reader.read(200), 0.5)
                    writer.close()
        finally:
            stuck.close()
    assert b'"ACK"0001' in reply
