"""The DC-09 load generator: its frames, stop-and-wait, reply pairing, timeouts, rate, UDP."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from bench.load import (
    BENCH_KEY_ASCII,
    KEY_PERIOD,
    SIGNAL_PERIOD,
    Result,
    _Fleet,
    _Module,
    account_name,
    fresh_first_signal,
    percentile_ms,
    run_tcp,
    signal_data,
    signal_seq,
    summary_json,
)
from bench.peer_minimal import MinimalProtocol
from engine.dc09_listener import dedupe_key
from engine.station_sim import StationSimulator
from protocols.crc import crc16_arc
from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import decode_frame, encode_frame, encode_reply
from protocols.dc09_payload import parse_payload
from protocols.dc09_receiver import (
    AccountCrypto,
    Dc09ReceiverConnection,
    FrameReceived,
    ReceiverConfig,
)
from protocols.dc09_timestamp import TimestampWindow

KEY = AesKey.from_ascii(BENCH_KEY_ASCII)


def _frames(key: AesKey | None, family: str, count: int, first_signal: int = 0) -> list[bytes]:
    """The first ``count`` frames module 3 builds, without a network."""

    async def build() -> list[bytes]:
        fleet = _Fleet(
            modules=10,
            key=key,
            family=family,
            duration=1000,
            interval=None,
            timeout=5,
            retries=0,
            max_signals=None,
            spread=None,
            first_signal=first_signal,
        )
        module = _Module(fleet, 3)
        sent: list[bytes] = []
        module.start(sent.append)
        for _ in range(count - 1):
            frame = decode_frame(sent[-1], key=key)
            reply = encode_reply(token="ACK", seq=frame.seq, account=frame.account)
            module.reply(reply[:-1])
        module.finish()
        return sent

    return asyncio.run(build())


class TestFrames:
    @pytest.mark.parametrize("family", ["cid", "sia", "both"])
    def test_plain_frames_are_encode_frame_bytes(self, family: str) -> None:
        """Plain frames are exactly encode_frame's, with signal_data's data and a real timestamp."""
        for n, raw in enumerate(_frames(None, family, 12), start=1):
            frame = decode_frame(raw)
            fam = family if family != "both" else ("sia" if (3 + n) % 2 else "cid")
            token, data = signal_data(account_name(3), n, fam)
            assert frame.timestamp is not None
            assert raw == encode_frame(
                token=token,
                seq=signal_seq(n),
                account=account_name(3),
                data=data,
                timestamp=frame.timestamp,
            )
            assert abs((datetime.now(UTC) - frame.timestamp).total_seconds()) < 3

    def test_aes_frames_decrypt_to_the_same_signal(self) -> None:
        """AES frames decode with the key to signal_data's data, a current timestamp, '*' token."""
        for n, raw in enumerate(_frames(KEY, "cid", 6), start=1):
            frame = decode_frame(raw, key=KEY)
            assert frame.encrypted
            assert (frame.token, frame.seq, frame.account, frame.data) == (
                "ADM-CID",
                signal_seq(n),
                account_name(3),
                signal_data(account_name(3), n, "cid")[1],
            )
            assert frame.timestamp is not None

    @pytest.mark.parametrize("key", [None, KEY])
    def test_a_receiver_accepts_them_in_its_window(self, key: AesKey | None) -> None:
        """The engine's receiver (timestamps checked in plain mode too, -40/+20 s) accepts them."""
        conn = Dc09ReceiverConnection(
            ReceiverConfig(window=TimestampWindow(past_s=40, future_s=20)),
            type("Dir", (), {"lookup": lambda self, account: AccountCrypto(key=key)})(),
        )
        for raw in _frames(key, "both", 8):
            [event] = conn.receive_data(raw, now=datetime.now(UTC))
            assert isinstance(event, FrameReceived), event
            assert len(event.events) == 1

    def test_runs_with_other_first_signals_are_not_duplicates(self) -> None:
        """The engine's duplicate keys of a run from another first signal are all new; the same
        first signal repeats them (what made reruns on one database measure the copy path)."""

        def keys(first: int) -> list[str]:
            return [dedupe_key(decode_frame(raw)) for raw in _frames(None, "both", 300, first)]

        run1, rerun, later = keys(0), keys(0), keys(1_000_000)
        assert len(set(run1)) == 300
        assert rerun == run1
        assert not set(later) & set(run1)
        assert decode_frame(_frames(None, "cid", 1, 1_000_000)[0]).seq == signal_seq(1_000_001)

    def test_fresh_first_signal_moves_past_a_run_and_wraps_after_an_hour(self) -> None:
        base = fresh_first_signal(1_800_000_000)
        assert fresh_first_signal(1_800_000_001.9) - base == 10_000
        assert 0 <= base < KEY_PERIOD
        assert KEY_PERIOD == 35_516_448 and KEY_PERIOD / 10_000 > 3_500  # > 58 min > 600 s
        seen = {fresh_first_signal(1_800_000_000 + s) for s in range(3_551)}
        assert len(seen) == 3_551  # no two starts within ~59 minutes coincide

    def test_signals_distinct_per_module(self) -> None:
        """(code, zone, partition) of a module's signals do not repeat within 8 periods."""
        for family in ("cid", "sia"):
            seen = set()
            for n in range(1, SIGNAL_PERIOD * 8 + 1, 7):
                [event] = parse_payload(*signal_data("100000", n, family))
                seen.add((event.code, event.zone, event.user, event.partition))
            assert len(seen) == len(range(1, SIGNAL_PERIOD * 8 + 1, 7))


@pytest.fixture
async def minimal() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MinimalProtocol, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


class TestRuns:
    async def test_stop_and_wait_against_the_minimal_receiver(self, minimal: int) -> None:
        """Every module sends max_signals frames, each ACKed; acked signals are recorded."""
        result = await run_tcp("127.0.0.1", minimal, 4, 30, max_signals=25)
        assert (result.sent, result.acked, result.errors, result.stale) == (100, 100, 0, 0)
        assert len(result.latencies) == len(result.acked_signals) == len(result.acked_ids) == 100
        assert sorted({s.account for s in result.acked_signals}) == [
            account_name(i) for i in range(4)
        ]
        first = result.acked_signals[0]
        assert result.acked_ids[0] == f"{first.account}:{first.seq}:{first.n % 999 + 1}"
        assert all(s.sent <= s.acked for s in result.acked_signals)
        assert result.wall_offset == pytest.approx(time.time() - time.perf_counter(), abs=0.01)
        assert result.cpu_s > 0
        summary = result.summary()
        assert summary["loadgen_us_per_signal"] > 0

    async def test_max_signals_counts_from_the_first_signal(self, minimal: int) -> None:
        result = await run_tcp("127.0.0.1", minimal, 2, 30, max_signals=3, first_signal=5_000)
        assert result.acked == 6
        assert sorted(s.n for s in result.acked_signals) == [5001, 5001, 5002, 5002, 5003, 5003]
        assert {s.seq for s in result.acked_signals} == {"5002", "5003", "5004"}

    async def test_fixed_rate_is_spread_over_modules(self, minimal: int) -> None:
        """At 100/s over 10 modules for 1 s: ~100 signals, sends spaced evenly (no bursts)."""
        result = await run_tcp("127.0.0.1", minimal, 10, 1.0, rate=100)
        assert 90 <= result.acked <= 101
        sends = sorted(s.sent for s in result.acked_signals)
        gaps = [b - a for a, b in itertools.pairwise(sends)]
        assert max(gaps) < 0.05  # 10 ms apart on average; all 10 modules at once would leave 100 ms
        assert sum(1 for g in gaps if g < 0.002) < len(gaps) / 2

    async def test_udp_against_the_station_simulator(self) -> None:
        """Modules over UDP: one datagram each, the reply paired; the station saw every frame."""
        sim = StationSimulator()
        port = await sim.start()
        try:
            result = await run_tcp("127.0.0.1", port, 3, 30, udp=True, max_signals=10)
        finally:
            await sim.stop()
        assert (result.acked, result.timeouts, result.errors) == (30, 0, 0)
        assert {r.transport for r in sim.received} == {"udp"}
        assert len(sim.received) == 30

    async def test_aes_against_the_station_simulator(self) -> None:
        """AES frames are decrypted by a receiver with the key and answered *ACK."""
        sim = StationSimulator(key=KEY)
        port = await sim.start()
        try:
            result = await run_tcp("127.0.0.1", port, 2, 30, key=KEY, max_signals=5)
        finally:
            await sim.stop()
        assert (result.acked, result.duhs, result.naks, result.errors) == (10, 0, 0, 0)
        assert all(r.encrypted for r in sim.received)


class _Scripted(asyncio.Protocol):
    """A receiver that answers frame k with ``script[k]`` (a function of the frame)."""

    def __init__(self, script: list[Callable[[bytes], list[bytes]]], seen: list[bytes]) -> None:
        self.script = script
        self.seen = seen
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.seen.append(data)
        step = self.script[len(self.seen) - 1] if len(self.seen) <= len(self.script) else _ack
        for reply in step(data):
            self.transport.write(reply)


def _ack(raw: bytes, seq: str | None = None) -> list[bytes]:
    frame = decode_frame(raw)
    return [encode_reply(token="ACK", seq=seq or frame.seq, account=frame.account)]


def _reply(token: str) -> Callable[[bytes], list[bytes]]:
    def answer(raw: bytes) -> list[bytes]:
        frame = decode_frame(raw)
        if token == "NAK":
            return [
                encode_reply(
                    token="NAK",
                    seq="0000",
                    account=None,
                    receiver="0",
                    extra_fields="A0",
                    timestamp=datetime.now(UTC),
                )
            ]
        return [encode_reply(token=token, seq=frame.seq, account=frame.account)]

    return answer


class TestReplies:
    async def test_nak_duh_stale_garbled_and_timeout(self) -> None:
        """NAK and DUH end a signal unACKed; an ACK for another seq and a reply with a bad CRC
        are ignored while the frame stays outstanding; no reply → the same bytes again."""
        seen: list[bytes] = []

        def stale_then_garbled_then_ack(raw: bytes) -> list[bytes]:
            good = _ack(raw)[0]
            bad_crc = good[:1] + b"%04X" % (crc16_arc(good[9:-1]) ^ 1) + good[5:]
            return [_ack(raw, seq="9999")[0], bad_crc, good]

        script = [
            _reply("NAK"),
            _reply("DUH"),
            stale_then_garbled_then_ack,
            lambda raw: [],  # dropped: timeout, retransmission
            _ack,
        ]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Scripted(script, seen), "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            result = await run_tcp(
                "127.0.0.1", port, 1, 30, max_signals=5, timeout=0.3, first_signal=0
            )
        finally:
            server.close()
        assert (result.naks, result.duhs, result.stale, result.errors) == (1, 1, 1, 1)
        assert (result.timeouts, result.retransmits) == (1, 1)
        assert seen[3] == seen[4]  # the retransmission: same seq, same bytes
        assert result.sent == 6
        assert [s.n for s in result.acked_signals] == [3, 4, 5]
        assert result.acked == 3

    async def test_gives_up_after_retries(self) -> None:
        """A receiver that never answers: each frame is sent 1 + retries times, then the next."""
        seen: list[bytes] = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Scripted([lambda raw: []] * 100, seen), "127.0.0.1", 0
        )
        try:
            port = server.sockets[0].getsockname()[1]
            result = await run_tcp(
                "127.0.0.1", port, 1, 30, max_signals=2, timeout=0.1, retries=2, first_signal=0
            )
        finally:
            server.close()
        assert (result.sent, result.timeouts, result.retransmits, result.acked) == (6, 6, 4, 0)
        assert seen[0] == seen[1] == seen[2] != seen[3]


class TestSummary:
    def test_percentiles_by_nearest_rank(self) -> None:
        """p99 of 100 latencies is the 99th (the largest came out), p50 of two the first."""
        hundred = Result(acked=100, latencies=[i / 1000 for i in range(100, 0, -1)], ended=1.0)
        summary = hundred.summary()
        assert (summary["p50_ms"], summary["p90_ms"], summary["p99_ms"]) == (50.0, 90.0, 99.0)
        assert summary["max_ms"] == 100.0 and summary["mean_ms"] == pytest.approx(50.5)
        assert Result(acked=2, latencies=[0.002, 0.001], ended=1.0).summary()["p50_ms"] == 1.0
        assert percentile_ms([0.005], 99) == 5.0

    def test_no_acks_have_no_latency_not_zero(self) -> None:
        summary = Result(sent=10, naks=10, ended=1.0).summary()
        assert summary["signals_per_s"] == 0.0
        assert all(math.isnan(summary[k]) for k in ("p50_ms", "p99_ms", "max_ms", "mean_ms"))
        printed = json.loads(summary_json(summary), parse_constant=pytest.fail)  # strict JSON
        assert printed["p99_ms"] is None and printed["naks"] == 10


class _SlowFirstReply(asyncio.Protocol):
    """ACKs every frame, the first one only after ``delay_s``."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.frames = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.frames += 1
        reply = _ack(data)[0]
        if self.frames == 1:
            asyncio.get_running_loop().call_later(self.delay_s, self.transport.write, reply)
        else:
            self.transport.write(reply)


class TestFixedRateLateness:
    async def test_a_send_delayed_by_a_slow_reply_counts_from_when_it_was_due(self) -> None:
        """At 10/s one module's next signal is due 100 ms after the first; the first reply
        takes 350 ms, so it goes out 250 ms late. Its latency counted from the delayed send
        (about 0 ms), hiding the wait a panel's queued event has (coordinated omission); it
        now counts from when it was due, and the late send is counted."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _SlowFirstReply(0.35), "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            result = await run_tcp("127.0.0.1", port, 1, 0.6, rate=10)
        finally:
            server.close()
        assert result.late_sends >= 1
        by_n = sorted(
            zip(result.acked_signals, result.latencies, strict=True), key=lambda p: p[0].n
        )
        first_latency, second_latency = by_n[0][1], by_n[1][1]
        assert first_latency >= 0.35
        # due 100 ms after the first signal, ACKed after the first reply (350 ms): >= 250 ms
        assert second_latency >= 0.25
        assert result.summary()["late_sends"] == result.late_sends
