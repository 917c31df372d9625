"""A monitoring-station receiver simulator (DC-09 over TCP and UDP on one port).

ACKs by default; on command NAKs, DUHs, delays or drops. Its clock can be skewed to make a real
timestamp-window NAK. Every frame received is recorded (and printed as one JSON line). Used by
tests, the demo and the benchmark; ``alarmrelay station-sim`` runs it from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Literal

import msgspec

from protocols.dc09_crypto import AesKey
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    FrameRejected,
    ReceiverConfig,
)
from protocols.dc09_timestamp import TimestampWindow

Mode = Literal["ack", "nak", "duh", "drop"]


class ReceivedEvent(msgspec.Struct, kw_only=True):
    family: str
    code: str
    qualifier: str | None
    zone: int | None
    partition: int | None
    user: int | None
    text: str | None


class Received(msgspec.Struct, kw_only=True):
    """One frame as the station saw it (a JSON line)."""

    received_at: datetime
    transport: str
    peer: str
    token: str
    encrypted: bool
    seq: str
    receiver: str | None
    line: str | None
    account: str | None
    events: list[ReceivedEvent]
    reply: str


class _AnyAccount:
    def __init__(self, key: AesKey | None) -> None:
        self.crypto = AccountCrypto(key=key)

    def lookup(self, account: str) -> AccountCrypto | None:
        return self.crypto


class StationSimulator:
    """In-process station receiver: ``await start()`` returns the port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        key: AesKey | None = None,
        mode: Mode = "ack",
        delay_ms: int = 0,
        clock_skew_s: float = 0.0,
        log: IO[str] | None = None,
        include_nulls: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.mode: Mode = mode
        self.delay_ms = delay_ms
        self.clock_skew = timedelta(seconds=clock_skew_s)
        self.received: list[Received] = []
        self.polls = 0
        self._log = log
        self._include_nulls = include_nulls
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._changed = asyncio.Event()
        self._config = ReceiverConfig(
            window=TimestampWindow(past_s=40, future_s=20), check_plain_timestamps=True
        )
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.disconnects: list[str] = []

    def set_mode(self, mode: Mode, *, delay_ms: int | None = None) -> None:
        """Switch what the station answers from now on."""
        self.mode = mode
        if delay_ms is not None:
            self.delay_ms = delay_ms

    def now(self) -> datetime:
        return datetime.now(UTC) + self.clock_skew

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._handle_tcp, self.host, self.port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        sim = self

        class _Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
                conn = Dc09ReceiverConnection(sim._config, _AnyAccount(sim.key))
                for event in conn.receive_datagram(data, now=sim.now()):
                    task = loop.create_task(sim._reply_udp(conn, event, addr))
                    sim._tasks.add(task)
                    task.add_done_callback(sim._tasks.discard)

        transport, _ = await loop.create_datagram_endpoint(_Udp, local_addr=(self.host, self.port))
        self._udp = transport
        return self.port

    async def stop(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
        if self._udp is not None:
            self._udp.close()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until ``count`` event frames were received (not NULLs); return them."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.received

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Dc09ReceiverConnection(self._config, _AnyAccount(self.key))
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        self._writers.add(writer)
        try:
            while data := await reader.read(4096):
                for event in conn.receive_data(data, now=self.now()):
                    reply = await self._answer(conn, event, "tcp", peer)
                    if reply:
                        writer.write(reply)
        except (ConnectionError, OSError) as exc:
            self.disconnects.append(repr(exc))  # a module or engine went away mid-frame
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _reply_udp(
        self,
        conn: Dc09ReceiverConnection,
        event: FrameReceived | FrameRejected,
        addr: tuple[str | Any, int],
    ) -> None:
        reply = await self._answer(conn, event, "udp", f"{addr[0]}:{addr[1]}")
        if reply and self._udp is not None:
            self._udp.sendto(reply, addr)

    async def _answer(
        self,
        conn: Dc09ReceiverConnection,
        event: FrameReceived | FrameRejected,
        transport: str,
        peer: str,
    ) -> bytes:
        if isinstance(event, FrameRejected):
            return event.error.reply_bytes  # a real NAK (clock) or DUH, or silence
        frame = event.frame
        if frame.token == "NULL":
            self.polls += 1
            if not self._include_nulls:
                return conn.ack(frame, now=self.now()) if self.mode != "drop" else b""
        mode = self.mode
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        reply = b""
        if mode == "ack":
            reply = conn.ack(frame, now=self.now())
        elif mode == "nak":
            reply = conn.nak(now=self.now())
        elif mode == "duh":
            reply = conn.duh(frame)
        record = Received(
            received_at=datetime.now(UTC),
            transport=transport,
            peer=peer,
            token=frame.token,
            encrypted=frame.encrypted,
            seq=frame.seq,
            receiver=frame.receiver,
            line=frame.line,
            account=frame.account,
            events=[
                ReceivedEvent(
                    family=e.family.value,
                    code=e.code,
                    qualifier=e.qualifier,
                    zone=e.zone,
                    partition=e.partition,
                    user=e.user,
                    text=e.text,
                )
                for e in event.events
            ],
            reply=mode,
        )
        self.received.append(record)
        self._changed.set()
        if self._log is not None:
            self._log.write(msgspec.json.encode(record).decode() + "\n")
            self._log.flush()
        return reply


async def run_cli(sim: StationSimulator, control_port: int | None) -> None:
    """Run until cancelled; an optional line-based control port accepts ``mode ack|nak|duh|drop``,
    ``delay MS``, ``skew SECONDS`` and ``stats``."""
    port = await sim.start()
    print(
        msgspec.json.encode({"event": "station_sim_ready", "port": port}).decode(),
        file=sys.stderr,
        flush=True,
    )
    servers = []
    if control_port is not None:

        async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := (await reader.readline()).decode().strip():
                words = line.split()
                try:
                    if words[0] == "mode" and words[1] in ("ack", "nak", "duh", "drop"):
                        sim.set_mode(words[1])  # type: ignore[arg-type]  # checked just above
                    elif words[0] == "delay":
                        sim.delay_ms = int(words[1])
                    elif words[0] == "skew":
                        sim.clock_skew = timedelta(seconds=float(words[1]))
                    elif words[0] != "stats":
                        raise ValueError(line)  # noqa: TRY301 - one except for every bad command
                    answer: dict[str, object] = {
                        "ok": True,
                        "mode": sim.mode,
                        "delay_ms": sim.delay_ms,
                        "received": len(sim.received),
                        "polls": sim.polls,
                    }
                except (IndexError, ValueError):
                    answer = {
                        "ok": False,
                        "error": f"unknown command {line!r}: mode ack|nak|duh|drop, delay MS, skew S, stats",
                    }
                writer.write(msgspec.json.encode(answer) + b"\n")
                await writer.drain()
            writer.close()

        servers.append(await asyncio.start_server(control, "127.0.0.1", control_port))
        print(
            msgspec.json.encode(
                {"event": "station_sim_control", "port": servers[0].sockets[0].getsockname()[1]}
            ).decode(),
            file=sys.stderr,
            flush=True,
        )
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()
        await sim.stop()
