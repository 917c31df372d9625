"""The station receiver simulator: replies per mode, records and JSON lines, control, CLI."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.station_sim import StationSimulator
from protocols.dc09_crypto import AesKey
from protocols.dc09_transmitter import Dc09Transmitter, ReplyReceived

WAIT_S = 10  # upper bound for anything awaited; never a pass/fail timing criterion
KEY_HEX = "00112233445566778899AABBCCDDEEFF"


class Wire:
    """A panel-like TCP sender built on our sans-I/O transmitter."""

    def __init__(self, port: int, key: AesKey | None = None) -> None:
        self.port = port
        self.tx = Dc09Transmitter(receiver="3", line="7", key=key)
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def __aenter__(self) -> Wire:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    def send(self, *, seq: str, token: str = "ADM-CID", data: str = "#1234|1130 01 004") -> None:
        out = self.tx.build(token=token, account="1234", data=data, seq=seq, now=datetime.now(UTC))
        self.writer.write(out.bytes)

    async def reply(self) -> tuple[str, str]:
        """(token, seq) of the next reply frame."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for event in self.tx.receive_data(await self.reader.read(4096)):
                    assert isinstance(event, ReplyReceived), event
                    return event.frame.token, event.frame.seq


@pytest.fixture
async def sim() -> AsyncIterator[StationSimulator]:
    station = StationSimulator(log=io.StringIO())
    await station.start()
    yield station
    await station.stop()


class TestReplies:
    @pytest.mark.parametrize(
        ("mode", "token"), [("ack", "ACK"), ("nak", "NAK"), ("duh", "DUH"), ("delay", "ACK")]
    )
    async def test_mode_sets_reply(self, sim: StationSimulator, mode: str, token: str) -> None:
        """Each mode answers with its reply token (delay: an ACK, later), and the record says so."""
        sim.set_mode(mode, delay_ms=10)  # type: ignore[arg-type]  # parametrized valid modes
        async with Wire(sim.port) as wire:
            wire.send(seq="0005")
            got = await wire.reply()
        assert got == (token, "0000" if token == "NAK" else "0005")
        [record] = await sim.wait_for(1, WAIT_S)
        assert record.reply == token.lower()

    async def test_drop_sends_nothing(self, sim: StationSimulator) -> None:
        """In drop mode nothing is sent back: the first reply on the connection is the next frame's ACK."""
        sim.set_mode("drop")
        async with Wire(sim.port) as wire:
            wire.send(seq="0001")
            await sim.wait_for(1, WAIT_S)
            sim.set_mode("ack")
            wire.send(seq="0002")
            assert await wire.reply() == ("ACK", "0002")
        assert [(r.seq, r.reply) for r in sim.received] == [("0001", "drop"), ("0002", "ack")]

    async def test_udp_on_the_same_port(self, sim: StationSimulator) -> None:
        """A datagram to the TCP port is answered by datagram (one port for both, §1.13)."""
        tx = Dc09Transmitter(receiver=None, line="0")
        out = tx.build(
            token="SIA-DCS", account="55", data="#55|Nri1/BA04", seq="0009", now=datetime.now(UTC)
        )
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                replies.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(
            Proto, remote_addr=("127.0.0.1", sim.port)
        )
        try:
            transport.sendto(out.bytes)
            raw = await asyncio.wait_for(replies.get(), WAIT_S)
        finally:
            transport.close()
        [event] = tx.receive_datagram(raw)
        assert isinstance(event, ReplyReceived)
        assert (event.frame.token, event.frame.seq, event.frame.account) == ("ACK", "0009", "55")
        [record] = await sim.wait_for(1, WAIT_S)
        assert (record.transport, record.token) == ("udp", "SIA-DCS")
        assert [(e.family, e.code, e.zone) for e in record.events] == [("sia", "BA", 4)]

    async def test_encrypted_frames_with_key(self) -> None:
        """With a key the station decrypts, records 'encrypted' and answers *ACK."""
        key = AesKey.parse(KEY_HEX, "hex")
        station = StationSimulator(key=key)
        port = await station.start()
        try:
            async with Wire(port, key=key) as wire:
                wire.send(seq="0010")
                reply = await wire.reply()
            [record] = await station.wait_for(1, WAIT_S)
        finally:
            await station.stop()
        assert reply == ("ACK", "0010")
        assert record.encrypted
        assert [(e.code, e.zone) for e in record.events] == [("130", 4)]

    async def test_skewed_clock_naks_and_counts_rejection(self) -> None:
        """A station clock an hour off NAKs our timestamp with its own time and counts a rejection."""
        station = StationSimulator(clock_skew_s=3600)
        port = await station.start()
        try:
            async with Wire(port) as wire:
                wire.send(seq="0011")
                assert await wire.reply() == ("NAK", "0000")
        finally:
            await station.stop()
        assert station.rejected == 1
        assert station.received == []

    async def test_nulls_counted_not_recorded(self, sim: StationSimulator) -> None:
        """NULL polls are ACKed and counted, not recorded as events."""
        async with Wire(sim.port) as wire:
            wire.send(seq="0000", token="NULL", data="")
            assert await wire.reply() == ("ACK", "0000")
        assert await sim.wait_for_polls(1, WAIT_S) == 1
        assert sim.received == []


class TestPerFramePath:
    async def test_received_at_is_when_the_bytes_were_read(self, sim: StationSimulator) -> None:
        """received_at is the read time (wall clock), before any delay: send → receipt latency."""
        sim.set_mode("delay", delay_ms=200)
        async with Wire(sim.port) as wire:
            sent = datetime.now(UTC)
            wire.send(seq="0031")
            assert await wire.reply() == ("ACK", "0031")
            answered = datetime.now(UTC)
        [record] = await sim.wait_for(1, WAIT_S)
        assert sent <= record.received_at
        assert (answered - record.received_at).total_seconds() >= 0.2

    async def test_delay_keeps_the_order_of_a_connection(self, sim: StationSimulator) -> None:
        """Frames read together while delaying are answered one after the other, in order."""
        sim.set_mode("delay", delay_ms=20)
        async with Wire(sim.port) as wire:
            wire.send(seq="0041")
            wire.send(seq="0042")
            wire.send(seq="0043", token="NULL", data="")
            got: list[tuple[str, str]] = []
            async with asyncio.timeout(WAIT_S):
                while len(got) < 3:  # two replies may come in one read
                    for event in wire.tx.receive_data(await wire.reader.read(4096)):
                        assert isinstance(event, ReplyReceived), event
                        got.append((event.frame.token, event.frame.seq))
        assert got == [("ACK", "0041"), ("ACK", "0042"), ("ACK", "0043")]
        assert [r.seq for r in sim.received] == ["0041", "0042"]

    async def test_udp_delay(self, sim: StationSimulator) -> None:
        """A delayed datagram is answered after the delay, by datagram."""
        sim.set_mode("delay", delay_ms=30)
        tx = Dc09Transmitter(receiver=None, line="0")
        out = tx.build(
            token="SIA-DCS", account="56", data="#56|Nri1/BA05", seq="0051", now=datetime.now(UTC)
        )
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                replies.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(
            Proto, remote_addr=("127.0.0.1", sim.port)
        )
        try:
            transport.sendto(out.bytes)
            raw = await asyncio.wait_for(replies.get(), WAIT_S)
        finally:
            transport.close()
        [event] = tx.receive_datagram(raw)
        assert isinstance(event, ReplyReceived)
        assert (event.frame.token, event.frame.seq) == ("ACK", "0051")
        [record] = await sim.wait_for(1, WAIT_S)
        assert (record.transport, record.reply) == ("udp", "ack")

    async def test_without_records_only_counters(self) -> None:
        """keep_records=False (the command line): counted, logged, not kept in memory."""
        log = io.StringIO()
        station = StationSimulator(log=log, keep_records=False)
        port = await station.start()
        try:
            async with Wire(port) as wire:
                wire.send(seq="0061")
                await wire.reply()
            assert await station.wait_for(1, WAIT_S) == []
            assert station.stats()["received"] == 1
        finally:
            await station.stop()
        assert [json.loads(line)["seq"] for line in log.getvalue().splitlines()] == ["0061"]

    async def test_lines_reach_the_log_while_running(self, sim: StationSimulator) -> None:
        """Lines are written in batches shortly after their frames, not only at stop."""
        log = sim._log
        assert isinstance(log, io.StringIO)
        async with Wire(sim.port) as wire:
            wire.send(seq="0071")
            await wire.reply()
        async with asyncio.timeout(WAIT_S):
            while not log.getvalue():
                await asyncio.sleep(0.01)
        assert json.loads(log.getvalue())["seq"] == "0071"


class TestJsonLines:
    async def test_one_json_line_per_frame(self) -> None:
        """Every frame is one JSON line with header, events and the reply sent."""
        log = io.StringIO()
        station = StationSimulator(log=log)
        port = await station.start()
        try:
            async with Wire(port) as wire:
                wire.send(seq="0001")
                await wire.reply()
                wire.send(seq="0002", token="SIA-DCS", data="#1234|Nri2/FA01")
                await wire.reply()
            await station.wait_for(2, WAIT_S)
        finally:
            await station.stop()
        lines = [json.loads(line) for line in log.getvalue().splitlines()]
        assert [(x["token"], x["seq"], x["reply"], x["transport"]) for x in lines] == [
            ("ADM-CID", "0001", "ack", "tcp"),
            ("SIA-DCS", "0002", "ack", "tcp"),
        ]
        first = lines[0]
        assert (first["receiver"], first["line"], first["account"], first["encrypted"]) == (
            "3",
            "7",
            "1234",
            False,
        )
        assert first["events"] == [
            {
                "family": "cid",
                "code": "130",
                "qualifier": "1",
                "zone": 4,
                "partition": 1,
                "user": None,
                "text": None,
            }
        ]
        assert lines[1]["events"][0]["code"] == "FA"
        assert datetime.fromisoformat(first["received_at"]).tzinfo is not None  # read time
        assert datetime.fromisoformat(first["timestamp"]).tzinfo is not None
        assert first["peer"].startswith("127.0.0.1:")


class TestControl:
    @pytest.mark.parametrize(
        ("command", "field", "value"),
        [
            ("mode nak", "mode", "nak"),
            ("mode drop", "mode", "drop"),
            ("delay 250", "delay_ms", 250),
            ("skew -30", "clock_skew_s", -30.0),
            ("stats", "received", 0),
        ],
    )
    def test_commands(self, command: str, field: str, value: object) -> None:
        """Each control command takes effect and answers ok with the current stats."""
        station = StationSimulator()
        answer = station.control(command)
        assert answer["ok"] is True
        assert answer[field] == value
        assert station.stats()[field] == value

    @pytest.mark.parametrize(
        "command",
        [
            "mode bogus",
            "delay -5",
            "delay soon",
            "reboot",
            "mode",
            "skew inf",
            "skew nan",
            "skew 1e20",
            "skew 1e12",
        ],
    )
    def test_bad_commands(self, command: str) -> None:
        """A bad command answers ok=false with the usage and changes nothing."""
        station = StationSimulator()
        answer = station.control(command)
        assert answer["ok"] is False
        assert "mode ack|nak|duh|drop|delay" in str(answer["error"])
        assert (station.mode, station.delay_ms) == ("ack", 0)
        assert station.clock_skew.total_seconds() == 0

    async def test_a_refused_skew_leaves_frames_answered(self, sim: StationSimulator) -> None:
        """`skew 1e12` (the station's time past year 9999) used to be taken: every frame then
        failed in the read callback, unanswered and unrecorded. Refused, a frame is still ACKed;
        blank lines between commands are skipped, not the end of the session."""
        port = await sim.start_control()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"skew 1e12\n\nskew inf\nstats\n")
        answers = [json.loads(await reader.readline()) for _ in range(3)]
        writer.close()
        assert [a["ok"] for a in answers] == [False, False, True]
        async with Wire(sim.port) as wire:
            wire.send(seq="0001")
            assert await wire.reply() == ("ACK", "0001")

    def test_delay_mode_without_delay_gets_default(self) -> None:
        """'mode delay' with no delay set waits a default time rather than none."""
        station = StationSimulator()
        station.set_mode("delay")
        assert station.delay_ms > 0

    async def test_control_port(self, sim: StationSimulator) -> None:
        """The control port takes one command per line and answers one JSON line each."""
        port = await sim.start_control()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"mode duh\ndelay 5\nstats\nnonsense\n")
        answers = [json.loads(await reader.readline()) for _ in range(4)]
        writer.close()
        assert [a["ok"] for a in answers] == [True, True, True, False]
        assert (answers[2]["mode"], answers[2]["delay_ms"]) == ("duh", 5)
        assert sim.mode == "duh"


class TestCommand:
    @pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
    async def test_cli_runs_logs_and_obeys_control(
        self, tmp_path: Path, stop: signal.Signals
    ) -> None:
        """`alarmrelay station-sim` announces its ports, logs frames to --log and stops on SIGINT,
        or SIGTERM (`kill`, `timeout`, a service manager), with every line written and status 0
        (SIGTERM ended it at once, losing the lines not yet flushed)."""
        log_path = tmp_path / "frames.jsonl"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            "station-sim",
            "--port",
            "0",
            "--control-port",
            "0",
            "--mode",
            "duh",
            "--key-hex",
            KEY_HEX,
            "--log",
            str(log_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(WAIT_S * 3):
                ports: dict[str, int] = {}
                while len(ports) < 2:
                    line = await proc.stderr.readline()
                    assert line, "station-sim exited before announcing its ports"
                    if line.startswith(b"{"):
                        note = json.loads(line)
                        ports[note["event"]] = note["port"]
                async with Wire(ports["station_sim_ready"], key=AesKey.parse(KEY_HEX, "hex")) as w:
                    w.send(seq="0021")
                    assert await w.reply() == ("DUH", "0021")
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", ports["station_sim_control"]
                    )
                    writer.write(b"mode ack\n")
                    assert json.loads(await reader.readline())["mode"] == "ack"
                    writer.close()
                    w.send(seq="0022")
                    assert await w.reply() == ("ACK", "0022")
                proc.send_signal(stop)
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0
        assert out == b""  # frames go to --log, not stdout
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [(r["seq"], r["reply"], r["encrypted"]) for r in records] == [
            ("0021", "duh", True),
            ("0022", "ack", True),
        ]

    async def test_cli_stops_on_sigint_when_started_with_it_ignored(self) -> None:
        """A process started in the background by a non-interactive shell (`station-sim &` in a
        script, a CI job) inherits SIGINT ignored. `kill -INT` stopped it only through Python's
        KeyboardInterrupt, which Python does not arm when SIGINT is ignored at start: it ran on
        for good. It stops, status 0, as on SIGTERM."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            "station-sim",
            "--port",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(WAIT_S * 3):
                while True:
                    line = await proc.stderr.readline()
                    assert line, "station-sim exited before announcing its port"
                    if line.startswith(b'{"event":"station_sim_ready"'):
                        break
                proc.send_signal(signal.SIGINT)
                await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0

    async def test_cli_bad_key_is_a_user_error(self) -> None:
        """A malformed key is refused with a message, not a traceback."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            "station-sim",
            "--key-hex",
            "XYZ",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), WAIT_S * 3)
        assert proc.returncode != 0
        assert b"bad key" in err
        assert b"Traceback" not in err
