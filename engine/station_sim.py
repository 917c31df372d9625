"""A monitoring-station receiver simulator (DC-09 over TCP and UDP on one port).

ACKs by default; on command NAKs, DUHs, delays or drops. Its clock can be skewed to make a real
timestamp-window NAK. Every frame received is recorded (and printed as one JSON line). Used by
tests, the demo and the benchmark; ``alarmrelay station-sim`` runs it from the command line, with
an optional line-based control port (``mode nak``, ``delay 200``, ``stats``; see
docs/station-sim.md).
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

Mode = Literal["ack", "nak", "duh", "drop", "delay"]
MODES: tuple[Mode, ...] = ("ack", "nak", "duh", "drop", "delay")
DEFAULT_DELAY_MS = 1000  # "mode delay" without a delay set


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
    timestamp: datetime | None  # as written by the sender (after any NAK clock correction)
    events: list[ReceivedEvent]
    reply: str  # "ack" | "nak" | "duh" | "drop" (nothing sent)


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
        self.rejected = 0  # frames refused by the DC-09 layer (bad CRC, clock NAK, bad key, …)
        self._control: asyncio.Server | None = None
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
        """Switch what the station answers from now on (``delay``: ACK after ``delay_ms``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self.mode = mode
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if mode == "delay" and not self.delay_ms:
            self.delay_ms = DEFAULT_DELAY_MS

    def stats(self) -> dict[str, object]:
        """Mode and counters, as the control port's ``stats`` answers them."""
        return {
            "mode": self.mode,
            "delay_ms": self.delay_ms,
            "clock_skew_s": self.clock_skew.total_seconds(),
            "received": len(self.received),
            "polls": self.polls,
            "rejected": self.rejected,
        }

    def control(self, line: str) -> dict[str, object]:
        """Run one control command: ``mode ack|nak|duh|drop|delay``, ``delay MS``, ``skew S``,
        ``stats``. Returns ``{"ok": true, <stats>}`` or ``{"ok": false, "error": ...}``."""
        words = line.split()
        try:
            match words:
                case ["mode", mode]:
                    self.set_mode(mode)  # type: ignore[arg-type]  # set_mode checks the value
                case ["delay", ms] if int(ms) >= 0:
                    self.delay_ms = int(ms)
                case ["skew", seconds]:
                    self.clock_skew = timedelta(seconds=float(seconds))
                case ["stats"]:
                    pass
                case _:
                    raise ValueError(line)  # noqa: TRY301 - one answer for every bad command
        except ValueError:
            return {
                "ok": False,
                "error": f"bad command {line!r}: mode ack|nak|duh|drop|delay, delay MS, skew S, stats",
            }
        return {"ok": True, **self.stats()}

    async def start_control(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for control commands (one per line, one JSON answer per line); returns the port."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := (await reader.readline()).decode(errors="replace").strip():
                    writer.write(msgspec.json.encode(self.control(line)) + b"\n")
                    await writer.drain()
            except (ConnectionError, ValueError):
                pass  # client went away, or a line longer than the stream limit
            finally:
                writer.close()

        self._control = await asyncio.start_server(serve, host, port)
        return int(self._control.sockets[0].getsockname()[1])

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
        """Close the listeners and every connection (a station going down)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        for task in list(self._tasks):
            task.cancel()
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

    async def wait_for_polls(self, count: int, timeout_s: float = 10.0) -> int:
        """Wait until ``count`` NULL polls were received (answered or dropped); return the count."""
        async with asyncio.timeout(timeout_s):
            while self.polls < count:
                self._changed.clear()
                await self._changed.wait()
        return self.polls

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
            self.rejected += 1
            return event.error.reply_bytes  # a real NAK (clock) or DUH, or silence
        frame = event.frame
        if frame.token == "NULL":
            self.polls += 1
            self._changed.set()
            if not self._include_nulls:
                return conn.ack(frame, now=self.now()) if self.mode != "drop" else b""
        mode = self.mode
        if self.delay_ms:
            await asyncio.sleep(self.delay_ms / 1000)
        reply = b""
        if mode in ("ack", "delay"):
            mode = "ack"
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
            timestamp=frame.timestamp,
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
    """Run until cancelled, announcing the ports on stderr; ``control_port`` (0: any free one)
    enables the line-based control interface."""
    port = await sim.start()
    print(
        msgspec.json.encode({"event": "station_sim_ready", "port": port}).decode(),
        file=sys.stderr,
        flush=True,
    )
    try:
        if control_port is not None:
            control = await sim.start_control(port=control_port)
            print(
                msgspec.json.encode({"event": "station_sim_control", "port": control}).decode(),
                file=sys.stderr,
                flush=True,
            )
        await asyncio.Event().wait()
    finally:
        await sim.stop()
