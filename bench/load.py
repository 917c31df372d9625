"""Load generator: simulated modules sending DC-09 (TCP stop-and-wait, UDP); MQTT: bench/load_mqtt.py.

Each DC-09 module owns one account (one TCP connection or UDP socket) and waits for the reply to
each frame before sending the next, as panels do: one frame outstanding per module, the reply
paired by its seq, one timer per module for the reply timeout (then the same frame is sent again
with the same seq, ``retries`` times) and for the fixed-rate schedule. Modes: as fast as
possible for a duration, or a fixed total rate spread evenly over the modules (module i starts
``i / modules`` of an interval after module 0, so the fleet does not send in bursts).

The DC-09 side is built on ``asyncio.Protocol`` / ``DatagramProtocol`` callbacks (no task,
future or stream per signal): frames are formatted directly (CRC-16/ARC from protocols.crc,
the same bytes as ``encode_frame``; AES through ``AesKey.encrypt_region``) and carry the current
second's timestamp, formatted once per second, in plain mode too. A reply is checked (CRC,
length) and classified by its ID token and seq: ACK/``*ACK`` for the outstanding seq, NAK, DUH;
an ACK for another seq is a stale reply (to a frame already answered or given up) and ignored.

Records the send and reply time of every signal and reports throughput, latency percentiles,
NAK/DUH/timeouts and the generator's own CPU time.

Run: ``python -m bench.load --port 10009 --modules 100 --duration 10 [--aes] [--udp]
[--rate 1000] [--mix cid|sia|both]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import uvloop

from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_timestamp import format_timestamp

BENCH_KEY_ASCII = "BenchKey16chars!"  # AES-128 as ASCII bytes: what pysiaalarm understands too

_CID_CODES = ("130", "602", "401", "301")  # burglary, periodic test, opening (user), AC loss
_SIA_CODES = ("BA", "RP", "OP", "AT")
SIGNAL_PERIOD = 3996  # lcm(999 zones, 4 codes): (code, zone) of a module's signals repeat after it
_PARTITIONS = 8  # the partition steps every SIGNAL_PERIOD signals: (code, zone, partition) of a
# module's signals are unique for its first SIGNAL_PERIOD * _PARTITIONS signals
# (seq, code, zone, partition) of a module's signal n, what a receiver's duplicate check looks at,
# repeat only after this many signals (35,516,448).
KEY_PERIOD = math.lcm(9999, SIGNAL_PERIOD * _PARTITIONS)


def account_name(index: int) -> str:
    """The DC-09 account of module ``index`` (hex digits, 6 characters)."""
    return f"{0x100000 + index:06X}"


def signal_data(account: str, n: int, family: str) -> tuple[str, str]:
    """(ID token, data block) of signal ``n`` of a module sending as ``account``.

    Zone ``n % 999 + 1``, code ``n % 4`` of the family's four, partition 1 (2, 3, … after
    every SIGNAL_PERIOD signals), so a module's signals stay distinguishable at the station.
    """
    zone = n % 999 + 1
    partition = n // SIGNAL_PERIOD % _PARTITIONS + 1
    if family == "cid":
        return "ADM-CID", f"#{account}|1{_CID_CODES[n % 4]} {partition:02d} {zone:03d}"
    return "SIA-DCS", f"#{account}|Nri{partition}/{_SIA_CODES[n % 4]}{zone:03d}"


# The same data blocks as %-formats for the generator's hot path.
_CID_FORMAT = ("ADM-CID", "#%s|1%s %02d %03d")
_SIA_FORMAT = ("SIA-DCS", "#%s|Nri%d/%s%03d")


def signal_seq(n: int) -> str:
    """The DC-09 sequence number of a module's signal ``n`` (0001-9999, then around again)."""
    return "%04d" % (n % 9999 + 1)  # noqa: UP031  # %-format: the cheapest on the hot path


def percentile_ms(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile of ``ordered`` (seconds, ascending) in ms, by nearest rank: the
    smallest value with at least ``p`` % of the values at or below it (p99 of 100 latencies is
    the 99th, not the largest). NaN when there is none: no latency is not a latency of 0."""
    if not ordered:
        return math.nan
    rank = math.ceil(p / 100 * len(ordered) - 1e-9)  # 1-based; the epsilon absorbs float error
    return ordered[min(len(ordered), max(1, rank)) - 1] * 1000


class AckedSignal(NamedTuple):
    """One ACKed signal: who sent it, what it was, and when (``time.perf_counter()``)."""

    account: str
    seq: str
    n: int  # the module's signal number (see signal_data)
    family: str  # "cid" | "sia"
    sent: float  # first transmission
    acked: float  # reply received


@dataclass(repr=False)
class Result:
    sent: int = 0  # frames written, retransmissions included
    acked: int = 0
    naks: int = 0
    duhs: int = 0
    timeouts: int = 0  # reply timeouts (each is followed by a retransmission, or gives up)
    errors: int = 0  # connect failures, lost connections, replies that fail CRC/length or parse
    latencies: list[float] = field(default_factory=list)  # first send → ACK, seconds
    acked_ids: list[str] = field(default_factory=list)  # "account:seq:zone" of every ACKed signal
    started: float = 0.0
    ended: float = 0.0
    retransmits: int = 0  # frames sent again with the same seq after a timeout
    late_sends: int = 0  # fixed rate: signals sent over 1 ms after they were due
    stale: int = 0  # valid replies for a seq not outstanding (late, after a retransmission)
    cpu_s: float = 0.0  # the generator process's CPU time during the run
    wall_offset: float = 0.0  # time.time() - time.perf_counter(): perf_counter stamps as wall clock
    acked_signals: list[AckedSignal] = field(default_factory=list)  # parallel to latencies

    def __repr__(self) -> str:
        # Short: asyncio formats the finished run's task (and so its result) when the loop ends,
        # and the dataclass repr of every latency and ACKed signal took seconds of CPU.
        return (
            f"Result(sent={self.sent}, acked={self.acked}, seconds={self.ended - self.started:.2f})"
        )

    def merge(self, other: Result) -> None:
        self.sent += other.sent
        self.acked += other.acked
        self.naks += other.naks
        self.duhs += other.duhs
        self.timeouts += other.timeouts
        self.errors += other.errors
        self.latencies += other.latencies
        self.acked_ids += other.acked_ids
        self.retransmits += other.retransmits
        self.late_sends += other.late_sends
        self.stale += other.stale
        self.cpu_s += other.cpu_s
        self.acked_signals += other.acked_signals

    def summary(self) -> dict[str, float]:
        elapsed = max(1e-9, self.ended - self.started)
        lat = sorted(self.latencies)
        return {
            "signals_per_s": self.acked / elapsed,
            "sent": self.sent,
            "acked": self.acked,
            "naks": self.naks,
            "duhs": self.duhs,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "retransmits": self.retransmits,
            "late_sends": self.late_sends,
            "stale": self.stale,
            "p50_ms": percentile_ms(lat, 50),
            "p90_ms": percentile_ms(lat, 90),
            "p99_ms": percentile_ms(lat, 99),
            "max_ms": percentile_ms(lat, 100),
            "mean_ms": statistics.fmean(lat) * 1000 if lat else math.nan,
            "seconds": elapsed,
            "loadgen_cpu_s": self.cpu_s,
            "loadgen_us_per_signal": self.cpu_s / max(1, self.sent) * 1e6,
        }


class _Stamp:
    """The DC-09 timestamp (``_HH:MM:SS,MM-DD-YYYY``, UTC) of the current second, formatted once
    per second: at most a second behind the clock, well inside a receiver's -40/+20 s window."""

    __slots__ = ("_from", "_text", "_until")

    def __init__(self) -> None:
        self._from = self._until = 0.0
        self._text = ""

    def __call__(self) -> str:
        now = time.time()
        if not self._from <= now < self._until:
            second = int(now)
            self._text = format_timestamp(datetime.fromtimestamp(second, UTC))
            self._from, self._until = second, second + 1.0
        return self._text


class _Fleet:
    """What the modules of one run share: settings, the Result, the clock, the end."""

    def __init__(
        self,
        *,
        modules: int,
        key: AesKey | None,
        family: str,
        duration: float,
        interval: float | None,
        timeout: float,
        retries: int,
        max_signals: int | None,
        spread: int | None,
        first_signal: int = 0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.result = Result(started=time.perf_counter())
        self.result.wall_offset = time.time() - self.result.started
        self.deadline = self.result.started + duration
        self.modules = modules
        self.key = key
        self.family = family
        self.interval = interval
        self.timeout = timeout
        self.retries = retries
        self.max_signals = max_signals
        self.spread = spread
        self.first_signal = first_signal  # each module's signals are n = first_signal + 1, + 2, …
        self.stamp = _Stamp()
        self.acked: list[tuple[str, int, str, float, float]] = []  # AckedSignal fields but seq
        self.remaining = modules
        self.done: asyncio.Future[None] = self.loop.create_future()

    def finished(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self.done.done():
            self.done.set_result(None)


LATE_S = 0.001  # the event loop's timers are 1 ms coarse: a send within it is on time


class _Module:
    """One simulated module's DC-09 state machine: stop-and-wait over ``_write``.

    ``_write`` sends one frame (TCP transport ``write`` or a connected UDP socket's ``sendto``);
    replies arrive through :meth:`reply`.

    One timer per module, re-armed lazily: :attr:`_wake_at` says when the module wants to act
    next (the outstanding frame's reply deadline, or in fixed-rate mode the next send), and the
    armed ``loop.call_later`` handle fires at or before it. A reply only clears ``_wake_at``; the
    next frame's later deadline keeps the handle already armed, which on firing early re-arms for
    what is left. So as fast as possible a module arms a timer once per timeout period, not once
    per frame (creating and cancelling a handle per frame was ~1.5 µs of the generator's CPU).
    """

    __slots__ = (
        "_attempt",
        "_family",
        "_first_sent",
        "_frame",
        "_index",
        "_n",
        "_next_at",
        "_outstanding",
        "_sent_family",
        "_timer",
        "_timer_at",
        "_wake_at",
        "_write",
        "account",
        "closed",
        "fleet",
    )

    def __init__(self, fleet: _Fleet, index: int) -> None:
        self.fleet = fleet
        self._index = index
        self.account = account_name(index)
        self._family = fleet.family
        self._sent_family = "cid"  # the family of the frame outstanding
        self._n = fleet.first_signal
        self._frame = b""
        self._outstanding: bytes | None = None  # seq of the frame awaiting its reply
        self._attempt = 0
        self._first_sent = 0.0
        self._next_at = 0.0  # fixed rate: when the next signal is due (perf_counter)
        self._wake_at: float | None = None  # when to act next; None: waiting for nothing
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the armed handle fires (perf_counter)
        self._write: Any = None
        self.closed = False

    # -- the timer -------------------------------------------------------------------------

    def _wake(self, at: float) -> None:
        """Act at ``at`` (perf_counter): a reply timeout or the next send."""
        self._wake_at = at
        if self._timer is not None:
            if self._timer_at <= at:
                return  # fires first; re-arms then for the rest
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.fleet.loop.call_later(max(0.0, at - time.perf_counter()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        at = self._wake_at
        if at is None or self.closed:
            return
        now = time.perf_counter()
        if now < at - 0.001:  # armed for an earlier wish (the loop's timers are 1 ms coarse)
            self._timer_at = at
            self._timer = self.fleet.loop.call_later(at - now, self._fire)
            return
        self._wake_at = None
        if self._outstanding is not None:
            self._timed_out()
        else:
            self._send_new()

    # -- sending ---------------------------------------------------------------------------

    def start(self, write: Any) -> None:
        self._write = write
        fleet = self.fleet
        if fleet.interval is None:
            self._send_new()
            return
        # Evenly phased over the interval: the fleet sends at a steady rate, not in bursts.
        self._next_at = fleet.result.started + fleet.interval * self._index / fleet.modules
        self._wake(self._next_at)

    def _send_new(self, *, behind: bool = False) -> None:
        fleet = self.fleet
        if time.perf_counter() >= fleet.deadline or (
            fleet.max_signals is not None and self._n - fleet.first_signal >= fleet.max_signals
        ):
            self.finish()
            return
        self._n = n = self._n + 1
        account = self.account
        if fleet.spread is not None:
            account = self.account = account_name((self._index + n * fleet.modules) % fleet.spread)
        family = self._family
        if family == "both":
            family = "sia" if (self._index + n) % 2 else "cid"
        self._sent_family = family
        # signal_data() and signal_seq() fused into one %-format (a test holds them equal).
        seq = "%04d" % (n % 9999 + 1)  # noqa: UP031
        zone = n % 999 + 1
        partition = n // SIGNAL_PERIOD % _PARTITIONS + 1
        if family == "cid":
            token, body = _CID_FORMAT
            data = body % (account, _CID_CODES[n % 4], partition, zone)
        else:
            token, body = _SIA_FORMAT
            data = body % (account, partition, _SIA_CODES[n % 4], zone)
        key = fleet.key
        if key is None:
            region = ('"%s"%sL0#%s[%s]%s' % (token, seq, account, data, fleet.stamp())).encode()  # noqa: UP031
        else:
            cipher = key.encrypt_region(
                f"{data}]{fleet.stamp()}".encode(), random_bytes=random.randbytes
            )
            region = f'"*{token}"{seq}L0#{account}[{cipher}'.encode()
        self._frame = b"\n%04X0%03X" % (crc16_arc(region), len(region)) + region + b"\r"
        self._outstanding = seq.encode()
        self._attempt = 0
        now = time.perf_counter()
        self._first_sent = now
        if behind and now - self._next_at > LATE_S:
            # Behind schedule because the previous reply came after this signal was due: a
            # panel's event waits in its queue meanwhile, so its latency counts from when it was
            # due, not from the delayed send (measuring from the send would hide the delay:
            # coordinated omission). A timer that fires late is the generator's own lag, not the
            # system's: that send counts from when it went.
            self._first_sent = self._next_at
            fleet.result.late_sends += 1
        self._transmit(now)

    def _transmit(self, now: float) -> None:
        fleet = self.fleet
        fleet.result.sent += 1
        self._write(self._frame)
        self._wake(now + fleet.timeout)

    def _timed_out(self) -> None:
        result = self.fleet.result
        result.timeouts += 1
        if self._attempt < self.fleet.retries:
            self._attempt += 1
            result.retransmits += 1
            # The same bytes: same seq (§1.5), so the receiver can tell the copy.
            self._transmit(time.perf_counter())
            return
        self._outstanding = None  # given up: a late reply to it is stale
        self._after_reply()

    def _after_reply(self) -> None:
        fleet = self.fleet
        if fleet.interval is None:
            self._send_new()
            return
        self._next_at += fleet.interval
        if self._next_at >= fleet.deadline:
            self.finish()
        elif self._next_at <= time.perf_counter():
            self._send_new(behind=True)  # behind schedule: catch up at once (rate is the target)
        else:
            self._wake(self._next_at)

    # -- replies ---------------------------------------------------------------------------

    def reply(self, frame: bytes) -> None:
        """One reply frame: its bytes up to (not including) the CR, LF and anything before it
        included. Checks CRC and length, pairs it with the outstanding frame by seq."""
        result = self.fleet.result
        lf = frame.rfind(b"\n")
        if lf != -1:
            frame = frame[lf + 1 :]
        region = frame[8:]
        try:
            valid = (
                frame[4] == 0x30  # '0' of 0LLL
                and int(frame[:4], 16) == crc16_arc(region)
                and int(frame[5:8], 16) == len(region)
                and region[:1] == b'"'
            )
        except (ValueError, IndexError):
            valid = False
        if not valid:
            result.errors += 1  # a garbled reply: ignored, the timer decides (as a panel does)
            return
        quote = region.find(b'"', 1)
        token = region[1:quote]
        seq = region[quote + 1 : quote + 5]
        outstanding = self._outstanding
        if token in (b"ACK", b"*ACK"):
            if seq != outstanding:
                result.stale += 1
                return
            now = time.perf_counter()
            result.acked += 1
            result.latencies.append(now - self._first_sent)
            self.fleet.acked.append(
                (self.account, self._n, self._sent_family, self._first_sent, now)
            )
        elif token == b"NAK":  # NAK carries seq 0000 and the receiver's time (§1.10)
            if outstanding is None:
                result.stale += 1
                return
            result.naks += 1
        elif token == b"DUH":
            if outstanding is None or seq not in (outstanding, b"0000"):
                result.stale += 1
                return
            result.duhs += 1
        else:
            result.errors += 1
            return
        self._outstanding = None
        self._wake_at = None
        if not self.closed:
            self._after_reply()

    # -- the end ---------------------------------------------------------------------------

    def finish(self) -> None:
        """No more signals from this module (deadline, max_signals, or its link went away)."""
        if self.closed:
            return
        self.closed = True
        self._wake_at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.fleet.finished()

    def lost(self) -> None:
        """The connection went away while the module still had signals to send."""
        if not self.closed:
            self.fleet.result.errors += 1
            self.finish()


class _TcpModule(asyncio.Protocol):
    __slots__ = ("_buffer", "module", "transport")

    def __init__(self, module: _Module) -> None:
        self.module = module
        self._buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        self.module.start(transport.write)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        cr = data.find(b"\r")
        while cr != -1:
            self.module.reply(data[:cr])
            data = data[cr + 1 :]
            cr = data.find(b"\r")
        if len(data) > 4096:  # no CR in 4 KiB: not a DC-09 reply stream
            self.module.fleet.result.errors += 1
            data = b""
        self._buffer = data

    def connection_lost(self, exc: Exception | None) -> None:
        self.module.lost()


class _UdpModule(asyncio.DatagramProtocol):
    __slots__ = ("module",)

    def __init__(self, module: _Module) -> None:
        self.module = module

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.module.start(transport.sendto)  # type: ignore[attr-defined]  # connected socket

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.module.reply(data.strip(b"\x00\r"))

    def error_received(self, exc: Exception) -> None:
        self.module.fleet.result.errors += 1  # ICMP port unreachable: the timer retransmits

    def connection_lost(self, exc: Exception | None) -> None:
        self.module.lost()


def fresh_first_signal(now: float) -> int:
    """A first signal number for a run starting at wall-clock ``now`` (seconds).

    10,000 numbers per second, more than a module waiting for durable ACKs sends in a second: a
    run does not reach the numbers of a run started after it, and the numbers come round only after
    KEY_PERIOD / 10,000 s (~59 minutes), beyond any receiver's duplicate window. So runs of the
    generator against the same receiver (and database) send new signals, as real modules do.
    """
    return int(now) * 10_000 % KEY_PERIOD


async def run_tcp(
    host: str,
    port: int,
    modules: int,
    duration: float,
    *,
    key: AesKey | None = None,
    family: str = "both",
    rate: float | None = None,
    udp: bool = False,
    max_signals: int | None = None,
    spread: int | None = None,
    timeout: float | None = None,
    retries: int = 2,
    first_signal: int | None = None,
) -> Result:
    """Run ``modules`` modules for ``duration`` seconds; ``rate`` is a total signals/s target.

    DC-09 over TCP (one connection per module) or ``udp`` (one socket per module). ``timeout``
    is the reply timeout (default 5 s over TCP, 1 s over UDP), after which the frame is sent
    again with the same seq up to ``retries`` times. With ``spread``, frame n of module i goes
    out for account ``(i + n * modules) % spread``: the connection stands for many modules, so
    the load touches every provisioned account in turn (as 1,000,000 modules each contacting now
    and then would). After the duration each module waits for its outstanding reply.

    Each module's signals are n = ``first_signal`` + 1, + 2, … (seq, code, zone and partition
    follow from n). A receiver remembers what it stored for its duplicate window (alarmrelay: 10
    minutes) and takes a signal with the same account, seq and content as a copy, so by default
    the numbers come from the clock (:func:`fresh_first_signal`): every run sends new signals, as
    real modules do, also against a database an earlier run used.
    """
    cpu_started = time.process_time()
    if timeout is None:
        timeout = 1.0 if udp else 5.0
    fleet = _Fleet(
        modules=modules,
        key=key,
        family=family,
        duration=duration,
        interval=(modules / rate) if rate else None,
        timeout=timeout,
        retries=retries,
        max_signals=max_signals,
        spread=spread,
        first_signal=fresh_first_signal(time.time()) if first_signal is None else first_signal,
    )
    loop = fleet.loop
    members = [_Module(fleet, i) for i in range(modules)]
    transports: list[asyncio.BaseTransport] = []

    async def connect(module: _Module) -> None:
        transport: asyncio.BaseTransport
        try:
            if udp:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpModule(module), remote_addr=(host, port)
                )
            else:
                transport, _ = await loop.create_connection(lambda: _TcpModule(module), host, port)
        except OSError:
            fleet.result.errors += 1
            module.finish()
            return
        transports.append(transport)

    await asyncio.gather(*(connect(m) for m in members))
    try:
        await asyncio.wait_for(
            asyncio.shield(fleet.done),
            max(0.0, fleet.deadline - time.perf_counter()) + timeout * (retries + 1) + 5,
        )
    except TimeoutError:
        fleet.result.errors += fleet.remaining  # modules that never finished (cannot happen)
    result = fleet.result
    result.ended = time.perf_counter()
    for member in members:
        member.finish()
    for transport in transports:
        transport.close()
    result.acked_signals = [
        AckedSignal(account, signal_seq(n), n, fam, sent, acked)
        for account, n, fam, sent, acked in fleet.acked
    ]
    result.acked_ids = [f"{s.account}:{s.seq}:{s.n % 999 + 1}" for s in result.acked_signals]
    result.cpu_s = time.process_time() - cpu_started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="fixed total signals/s (default: as fast as possible)",
    )
    parser.add_argument(
        "--aes", action="store_true", help=f"AES-128 with the ASCII key {BENCH_KEY_ASCII!r}"
    )
    parser.add_argument("--udp", action="store_true")
    parser.add_argument("--mix", choices=["cid", "sia", "both"], default="both")
    parser.add_argument(
        "--timeout", type=float, default=None, help="reply timeout, s (default 5 TCP, 1 UDP)"
    )
    parser.add_argument("--retries", type=int, default=2, help="resends of a frame after timeouts")
    parser.add_argument(
        "--first-signal",
        type=int,
        default=None,
        help="each module's signals are n = this + 1, + 2, … (default: from the clock, so a run "
        "within the receiver's duplicate window does not repeat an earlier run's signals)",
    )
    args = parser.parse_args()
    key = AesKey.from_ascii(BENCH_KEY_ASCII) if args.aes else None
    result = uvloop.run(
        run_tcp(
            args.host,
            args.port,
            args.modules,
            args.duration,
            key=key,
            family=args.mix,
            rate=args.rate,
            udp=args.udp,
            timeout=args.timeout,
            retries=args.retries,
            first_signal=args.first_signal,
        )
    )
    print(summary_json(result.summary()))


def summary_json(summary: dict[str, float]) -> str:
    """The summary as strict JSON: a latency there is none of (nan) is null."""
    return json.dumps(
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()},
        indent=2,
    )


if __name__ == "__main__":
    main()
