"""A monitoring-station receiver simulator (DC-09 over TCP and UDP on one port).

ACKs by default; on command NAKs, DUHs, delays or drops. Its clock can be skewed to make a real
timestamp-window NAK. Every frame received is recorded (and printed as one JSON line). Used by
tests, the demo and the benchmark; ``alarmrelay station-sim`` runs it from the command line, with
an optional line-based control port (``mode nak``, ``delay 200``, ``stats``; see
docs/station-sim.md).

The per-frame path is kept lean because the benchmark runs it as a fourth Python process on the
same cores as the engine: ``asyncio.Protocol`` callbacks answer each frame synchronously (no task,
stream or coroutine per frame; a delay queues the connection's frames behind one task), one
receiver state for the whole UDP socket, and the JSON lines are buffered and written together
every few milliseconds (and on :meth:`StationSimulator.stop`) instead of a write and flush per
frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
from collections import deque
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
MAX_SKEW_S = 10 * 365.25 * 86_400  # ten years either way: a clock far off, still a date


def clock_skew(seconds: float) -> timedelta:
    """The station clock's offset; ValueError when not finite or beyond MAX_SKEW_S (a larger one
    made every frame's time overflow: each connection failed and nothing was answered)."""
    if not math.isfinite(seconds) or abs(seconds) > MAX_SKEW_S:
        raise ValueError(f"clock skew must be within ±{MAX_SKEW_S:.0f} s, got {seconds}")
    return timedelta(seconds=seconds)


LOG_FLUSH_S = 0.02  # JSON lines reach the log at most this long after their frame


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

    received_at: datetime  # wall clock (UTC, not skewed) when the station read the frame's bytes
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


_Pending = tuple[FrameReceived | FrameRejected, datetime, "Mode"]  # event, read at, mode then


class StationSimulator:
    """In-process station receiver: ``await start()`` returns the port.

    ``keep_records=False`` (the command line) keeps only the counters, not :attr:`received`:
    the JSON lines are the record there, and memory stays flat however long it runs.
    """

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
        keep_records: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.mode: Mode = mode
        self.delay_ms = delay_ms
        self.clock_skew = clock_skew(clock_skew_s)
        self.received: list[Received] = []
        self.frames = 0  # event frames recorded (len(received) when records are kept)
        self.polls = 0
        self.rejected = 0  # frames refused by the DC-09 layer (bad CRC, clock NAK, bad key, …)
        self._keep = keep_records
        self._control: asyncio.Server | None = None
        self._log = log
        self._log_buffer = bytearray()
        self._log_flush: asyncio.TimerHandle | None = None
        self._encoder = msgspec.json.Encoder()
        self._include_nulls = include_nulls
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._config = ReceiverConfig(
            window=TimestampWindow(past_s=40, future_s=20), check_plain_timestamps=True
        )
        self._directory = _AnyAccount(key)
        self._transports: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.disconnects: deque[str] = deque(maxlen=1000)  # the latest ones (memory stays flat)

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
            "received": self.frames,
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
                    self.clock_skew = clock_skew(float(seconds))
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
                while raw := await reader.readline():  # until the client closes
                    line = raw.decode(errors="replace").strip()
                    if not line:
                        continue  # a blank line is no command
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
        loop = self._loop = asyncio.get_running_loop()
        self._tcp = await loop.create_server(lambda: _TcpConnection(self), self.host, self.port)
        self.port = self._tcp.sockets[0].getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpSocket(self), local_addr=(self.host, self.port)
        )
        self._udp = transport
        return self.port

    async def stop(self) -> None:
        """Close the listeners and every connection (a station going down); flush the log."""
        if self._control is not None:
            self._control.close()
            self._control = None
        for task in list(self._tasks):
            task.cancel()
        if self._tcp is not None:
            self._tcp.close()
        for transport in list(self._transports):
            transport.abort()
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
        if self._udp is not None:
            self._udp.close()
        self.flush_log()

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """Wait until ``count`` event frames were received (not NULLs); return them."""
        async with asyncio.timeout(timeout_s):
            while self.frames < count:
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

    # -- the per-frame path -------------------------------------------------------------------

    def _delayed(self, event: FrameReceived | FrameRejected) -> bool:
        """Whether ``event`` waits for the delay: event frames (and NULLs when recorded)."""
        return (
            self.delay_ms > 0
            and isinstance(event, FrameReceived)
            and (self._include_nulls or event.frame.token != "NULL")
        )

    def _answer(
        self,
        conn: Dc09ReceiverConnection,
        event: FrameReceived | FrameRejected,
        transport: str,
        peer: str,
        received_at: datetime,
        now: datetime,
        mode: Mode,
    ) -> bytes:
        """Record ``event`` and return the reply bytes (empty: send nothing)."""
        if isinstance(event, FrameRejected):
            self.rejected += 1
            return event.error.reply_bytes  # a real NAK (clock) or DUH, or silence
        frame = event.frame
        if frame.token == "NULL":
            self.polls += 1
            self._changed.set()
            if not self._include_nulls:
                return conn.ack(frame, now=now) if mode != "drop" else b""
        reply = b""
        if mode in ("ack", "delay"):
            mode = "ack"
            reply = conn.ack(frame, now=now)
        elif mode == "nak":
            reply = conn.nak(now=now)
        elif mode == "duh":
            reply = conn.duh(frame)
        record = Received(
            received_at=received_at,
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
        self.frames += 1
        if self._keep:
            self.received.append(record)
        self._changed.set()
        if self._log is not None:
            buffer = self._log_buffer
            self._encoder.encode_into(record, buffer, -1)
            buffer.append(0x0A)
            if self._log_flush is None and self._loop is not None:
                self._log_flush = self._loop.call_later(LOG_FLUSH_S, self.flush_log)
        return reply

    def flush_log(self) -> None:
        """Write the buffered JSON lines to the log now."""
        if self._log_flush is not None:
            self._log_flush.cancel()
            self._log_flush = None
        if self._log is not None and self._log_buffer:
            self._log.write(self._log_buffer.decode())
            self._log_buffer.clear()
            self._log.flush()


class _TcpConnection(asyncio.Protocol):
    """One sender's TCP connection: frames answered as they are read."""

    def __init__(self, sim: StationSimulator) -> None:
        self.sim = sim
        self.conn = Dc09ReceiverConnection(sim._config, sim._directory)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._pending: deque[_Pending] | None = None  # answers waiting behind a delay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.sim._transports.add(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        sim = self.sim
        received_at = datetime.now(UTC)
        now = received_at + sim.clock_skew if sim.clock_skew else received_at
        events = self.conn.receive_data(data, now=now)
        mode = sim.mode
        pending = self._pending
        if pending is None and not sim.delay_ms:
            assert self.transport is not None
            write = self.transport.write
            for event in events:
                reply = sim._answer(self.conn, event, "tcp", self.peer, received_at, now, mode)
                if reply:
                    write(reply)
            return
        if pending is None:
            pending = self._pending = deque()
            sim_task = asyncio.get_running_loop().create_task(self._drain(pending))
            sim._tasks.add(sim_task)
            sim_task.add_done_callback(sim._tasks.discard)
        pending.extend((event, received_at, mode) for event in events)

    async def _drain(self, pending: deque[_Pending]) -> None:
        """Answer ``pending`` in order, each event frame after the delay (one task at a time
        per delaying connection; frames read meanwhile queue behind it)."""
        sim = self.sim
        try:
            while pending:
                event, received_at, mode = pending[0]
                if sim._delayed(event):
                    await asyncio.sleep(sim.delay_ms / 1000)
                pending.popleft()
                reply = sim._answer(
                    self.conn, event, "tcp", self.peer, received_at, sim.now(), mode
                )
                if reply and self.transport is not None:
                    self.transport.write(reply)
        finally:
            self._pending = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim._transports.discard(self.transport)
        if exc is not None:
            self.sim.disconnects.append(repr(exc))  # a module or engine went away mid-frame


class _UdpSocket(asyncio.DatagramProtocol):
    """The UDP side: one frame per datagram, the reply to its sender."""

    def __init__(self, sim: StationSimulator) -> None:
        self.sim = sim
        self.conn = Dc09ReceiverConnection(sim._config, sim._directory)  # no stream state
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's UDPTransport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        sim = self.sim
        received_at = datetime.now(UTC)
        now = received_at + sim.clock_skew if sim.clock_skew else received_at
        peer = f"{addr[0]}:{addr[1]}"
        mode = sim.mode
        for event in self.conn.receive_datagram(data, now=now):
            if sim._delayed(event):
                task = asyncio.get_running_loop().create_task(
                    self._later(event, addr, peer, received_at, mode)
                )
                sim._tasks.add(task)
                task.add_done_callback(sim._tasks.discard)
                continue
            reply = sim._answer(self.conn, event, "udp", peer, received_at, now, mode)
            if reply and self.transport is not None:
                self.transport.sendto(reply, addr)

    async def _later(
        self,
        event: FrameReceived | FrameRejected,
        addr: tuple[str | Any, int],
        peer: str,
        received_at: datetime,
        mode: Mode,
    ) -> None:
        sim = self.sim
        await asyncio.sleep(sim.delay_ms / 1000)
        reply = sim._answer(self.conn, event, "udp", peer, received_at, sim.now(), mode)
        if reply and self.transport is not None:
            self.transport.sendto(reply, addr)


async def run_cli(sim: StationSimulator, control_port: int | None) -> None:
    """Run until cancelled, SIGINT or SIGTERM, announcing the ports on stderr; ``control_port``
    (0: any free one) enables the line-based control interface. SIGINT (Ctrl-C) and SIGTERM
    (``kill``, ``timeout``, a service manager) stop it alike: every JSON line written, status 0.
    Both are handled here, as ``serve`` does: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and would not stop on it otherwise."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
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
        await stopped.wait()
    finally:
        await sim.stop()
