"""End-to-end benchmark: modules → alarmrelay → station-sim, every ACKed signal checked at the station.

Run: ``python -m bench.end_to_end --duration 8 --repeats 3 [--aes] [--udp] [--rate 1000]``.

The station simulator runs as its own process (``alarmrelay station-sim --log FILE``), writing
one JSON line per frame with its receipt time (``received_at``, wall clock). After the load stops
the runner reads the log until every ACKed signal is there (or 60 s pass) and then checks
identities, not counts: each signal a module got an ACK for must reach the station exactly as
the engine forwards it — the customer's station account (``9000 + i`` for module i), the
event's family, code, qualifier, zone, partition and user. It reports:

- missing: ACKed signals the station never received;
- duplicates: a signal received again under another DC-09 seq (delivered twice: a failure);
- retransmissions: a signal received again with the same seq (the engine resent a frame whose
  ACK it did not see; allowed by DC-09, the station dedupes);
- unacked at station: frames for signals no module saw ACKed (committed, but the module's ACK
  was late or lost; not a failure, counted to be complete);
- not ACKed by the station: frames the station NAKed, DUHed or left unanswered; they deliver
  nothing (the engine must send the signal again, and that frame counts).

Latency is measured per signal from the module's first send of the frame to the station's
receipt of the forwarded frame (both processes stamp ``time.time()`` on the same machine),
beside the module's ACK latency (send → ACK).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil
import uvloop

from bench.load import (
    BENCH_KEY_ASCII,
    Result,
    account_name,
    percentile_ms,
    run_tcp,
    signal_data,
)
from bench.run import (
    ROOT,
    MachineIdle,
    Measured,
    ProcessWatch,
    _create_database,
    _database_name,
    _drop_database,
    idle_cell,
    median_run,
    serve_engine,
)
from engine.station_sim import Received
from protocols.dc09_crypto import AesKey
from protocols.dc09_payload import parse_payload

STATION_KEY_HEX = "00112233445566778899AABBCCDDEEFF"
STATION_ACCOUNT_BASE = 9000  # module i's customer forwards as station account 9000 + i
DRAIN_LIMIT_S = 60.0


def _provision(url: str, modules: int, station_port: int, *, aes: bool) -> None:
    import asyncpg

    from engine.migrate import apply_migrations

    forwarding = json.dumps(
        {"mode": "always", "station_account": "9000", "primary_receiver": "bench-rx"}
    )

    async def load() -> None:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
            await conn.execute("INSERT INTO stations (name) VALUES ('bench')")
            await conn.execute(
                # 16 connections: a busy central-station receiver taking 100 customers' signals
                "INSERT INTO receivers (name, station, host, port, key, key_format, ack_timeout_s, connections) "
                "VALUES ('bench-rx', 'bench', '127.0.0.1', $1, $2, 'hex', 5, 16)",
                station_port,
                STATION_KEY_HEX if aes else None,
            )
            records = [
                (
                    account_name(i),
                    BENCH_KEY_ASCII if aes else None,
                    "ascii" if aes else "hex",
                    forwarding.replace("9000", f"{STATION_ACCOUNT_BASE + i}"),
                )
                for i in range(modules)
            ]
            await conn.copy_records_to_table(
                "accounts", records=records, columns=["account", "key", "key_format", "forwarding"]
            )
        finally:
            await conn.close()

    asyncio.run(load())


class StationProcess:
    """``alarmrelay station-sim`` as a child writing its JSON lines to a file.

    The lines are read after the load (:meth:`read_new`), not while it runs: this process is
    also the load generator, and a thread reading a line per frame would slow it down.
    """

    def __init__(self, port: int, log: Path, *, aes: bool, profile: Path | None = None) -> None:
        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw"]
        cmd = [
            *([*spy, "--rate", "1000", "--output", str(profile), "--"] if profile else []),
            sys.executable,
            "-m",
            "engine",
            "station-sim",
            "--port",
            str(port),
            "--log",
            str(log),
        ]
        if aes:
            cmd += ["--key-hex", STATION_KEY_HEX]
        self.log = log
        self.profiled = profile is not None
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT
        )
        self.ready = threading.Event()
        self._offset = 0
        self._partial = b""
        self._decoder = msgspec.json.Decoder(Received)
        self._output: list[bytes] = []  # its stderr, for the message when it does not start
        self._reader = threading.Thread(target=self._stderr, daemon=True)
        self._reader.start()

    def _stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._output = [*self._output[-19:], line]
            if b"station_sim_ready" in line:
                self.ready.set()

    def wait_ready(self, limit_s: float = 30.0) -> None:
        """Until station-sim listens; one clear line (and its output) when it exits first or
        is not ready within ``limit_s``, instead of a traceback after the whole wait."""
        deadline = time.monotonic() + limit_s
        while not self.ready.wait(0.1):
            if self.proc.poll() is None and time.monotonic() <= deadline:
                continue
            what = (
                f"exited with code {self.proc.returncode}"
                if self.proc.poll() is not None
                else f"was not ready after {limit_s:g} s"
            )
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            tail = b"".join(self._output).decode("utf-8", "replace").rstrip() or "(no output)"
            raise SystemExit(f"bench: station-sim {what}; its last output:\n{tail}")

    def _sim(self) -> psutil.Process:
        """The station-sim process (py-spy's child when profiled)."""
        proc = psutil.Process(self.proc.pid)
        return proc.children()[0] if self.profiled and proc.children() else proc

    def cpu_s(self) -> float:
        times = self._sim().cpu_times()
        return float(times.user + times.system)

    def read_new(self) -> list[Received]:
        """The records appended to the log since the last call."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [self._decoder.decode(line) for line in lines if line]

    def stop(self) -> None:
        if self.profiled:  # SIGINT: station-sim ends cleanly and py-spy writes its profile
            self._sim().send_signal(signal.SIGINT)
            self.proc.wait(30)
            return
        self.proc.terminate()
        self.proc.wait(10)


_Key = tuple[str, str, str, str | None, int | None, int | None, int | None]
# (token, data after the account) → (family, code, qualifier, zone, partition, user)
_EVENT_FIELDS: dict[
    tuple[str, str], tuple[str, str, str | None, int | None, int | None, int | None]
]
_EVENT_FIELDS = {}


def expected_key(account: str, n: int, family: str) -> _Key:
    """What the station must receive for module ``account``'s signal ``n``: the station
    account, family, code, qualifier, zone, partition and user of its (one) event, as the
    DC-09 parser reads the module's data block."""
    token, data = signal_data(account, n, family)
    memo = (token, data.split("|", 1)[1])
    fields = _EVENT_FIELDS.get(memo)
    if fields is None:
        [event] = parse_payload(token, data)
        fields = _EVENT_FIELDS[memo] = (
            event.family.value,
            event.code,
            event.qualifier,
            event.zone,
            event.partition,
            event.user,
        )
    return (str(STATION_ACCOUNT_BASE + int(account, 16) - 0x100000), *fields)


def station_keys(record: Received) -> list[_Key]:
    """The identities of the signals a station frame delivered: none when the station did not
    ACK it (a NAKed, DUHed or unanswered frame is not a delivery; the engine sends it again)."""
    if record.reply != "ack":
        return []
    return [
        (record.account or "", e.family, e.code, e.qualifier, e.zone, e.partition, e.user)
        for e in record.events
    ]


@dataclass
class Verification:
    acked: int = 0
    at_station: int = 0  # frames the station recorded (retransmissions included)
    verified: int = 0  # ACKed signals found at the station exactly as forwarded
    missing: int = 0
    duplicates: int = 0  # received again under another seq
    retransmissions: int = 0  # received again with the same seq
    unacked_at_station: int = 0
    not_acked_by_station: int = 0  # records the station answered other than ACK
    latencies: list[float] = field(default_factory=list)  # module send → station receipt, s
    # wall clock of the last ACKed signal's delivery (its first ACKed receipt): where the drain
    # ends; a later same-seq retransmission or a frame for an unACKed signal delivers nothing new
    last_receipt: float = 0.0
    missing_examples: list[str] = field(default_factory=list)
    duplicate_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.duplicates == 0

    def latency_ms(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        return {
            p: percentile_ms(lat, q)
            for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        }


def verify(result: Result, records: list[Received]) -> Verification:
    """Match every ACKed signal to the station's records by identity (see the module doc)."""
    out = Verification(acked=len(result.acked_signals), at_station=len(records))
    expected: dict[_Key, list[float]] = defaultdict(list)  # key → wall-clock first sends
    for s in result.acked_signals:
        expected[expected_key(s.account, s.n, s.family)].append(s.sent + result.wall_offset)
    received: dict[_Key, list[tuple[str, float]]] = defaultdict(list)  # key → (seq, receipt)
    for record in records:
        if record.reply != "ack":
            out.not_acked_by_station += 1
        at = record.received_at.timestamp()
        for key in station_keys(record):
            received[key].append((record.seq, at))
    for key, sends in expected.items():
        # Two ACKed signals share an identity only when a module sends more signals than
        # signal_data keeps apart (SIGNAL_PERIOD x 8); they would be matched by count, in order.
        got = sorted(received.get(key, []), key=lambda item: item[1])
        firsts: list[float] = []
        seen_seqs: Counter[str] = Counter()
        for seq, at in got:
            if seen_seqs[seq]:
                out.retransmissions += 1
            else:
                firsts.append(at)
            seen_seqs[seq] += 1
        delivered = len(firsts)
        if delivered < len(sends):
            out.missing += len(sends) - delivered
            if len(out.missing_examples) < 5:
                out.missing_examples.append(repr(key))
        elif delivered > len(sends):
            out.duplicates += delivered - len(sends)
            if len(out.duplicate_examples) < 5:
                out.duplicate_examples.append(f"{key!r} seqs {sorted(seen_seqs)}")
        for sent, at in zip(sorted(sends), firsts, strict=False):
            out.verified += 1
            out.latencies.append(at - sent)
            out.last_receipt = max(out.last_receipt, at)
    out.unacked_at_station = sum(
        len({seq for seq, _ in got}) for key, got in received.items() if key not in expected
    )
    return out


def _free_port() -> int:
    # TCP and UDP on one number: the station simulator listens on both.
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = int(tcp.getsockname()[1])
        udp.bind(("127.0.0.1", port))
        return port


def run_once(
    modules: int,
    duration: float,
    *,
    aes: bool,
    udp: bool,
    rate: float | None,
    profile: Path | None = None,
    profile_station: Path | None = None,
) -> tuple[Measured, Verification, dict[str, Any]]:
    station_port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        station = StationProcess(
            station_port, Path(tmp) / "station.jsonl", aes=aes, profile=profile_station
        )
        station.wait_ready()
        try:
            url = _create_database()
        except BaseException:  # PostgreSQL unreachable: no station-sim left behind
            station.stop()
            raise
        try:
            _provision(url, modules, station_port, aes=aes)
            with serve_engine(url) as (proc, port):
                watch = ProcessWatch(proc.pid, include_postgres=True, database=_database_name(url))
                station_cpu = station.cpu_s()
                watch.start()
                idle = MachineIdle()
                idle.start()
                key = AesKey.from_ascii(BENCH_KEY_ASCII) if aes else None
                spy = None
                if profile is not None:
                    spy = subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "--pid",
                            str(proc.pid),
                            "--duration",
                            str(int(duration)),
                            "--format",
                            "raw",
                            "--output",
                            str(profile),
                            "--nonblocking",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                result = uvloop.run(
                    run_tcp("127.0.0.1", port, modules, duration, key=key, rate=rate, udp=udp)
                )
                idle_pct = idle.stop()  # the load only, not the drain that follows
                if spy is not None:
                    spy.wait()
                # Wait until the station has every ACKed signal (identities, not a count).
                wanted = Counter(
                    expected_key(s.account, s.n, s.family) for s in result.acked_signals
                )
                records: list[Received] = []
                deadline = time.monotonic() + DRAIN_LIMIT_S
                while True:
                    for record in station.read_new():
                        records.append(record)
                        for k in station_keys(record):
                            if wanted[k] > 0:
                                wanted[k] -= 1
                                if wanted[k] == 0:
                                    del wanted[k]
                    if not wanted or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                time.sleep(0.3)  # late retransmissions or duplicates still on their way
                records += station.read_new()
                cpu = watch.stop()
                cpu["station-sim"] = station.cpu_s() - station_cpu
                cpu["loadgen"] = result.cpu_s  # the generator itself, not the checking
        finally:
            station.stop()
            _drop_database(url)
    check = verify(result, records)
    load_end = result.ended + result.wall_offset
    drained_s = max(0.0, check.last_receipt - load_end)
    transport = "UDP" if udp else "TCP"
    name = (
        f"alarmrelay end to end, DC-09 {transport}{' AES-128 both legs' if aes else ''}"
        f"{f' at {rate:.0f}/s' if rate else ''}"
    )
    summary = result.summary()
    extra = {
        "drain_s": round(drained_s, 2),
        # what reached the station per second, from the first send to the last delivery
        "delivered_per_s": round(check.verified / (summary["seconds"] + drained_s)),
    }
    return Measured(name, summary, cpu, watch.peak_rss / 2**20, idle_pct), check, extra


def e2e_table(
    runs: list[tuple[Measured, Verification, dict[str, Any]]], *, fixed_rate: bool = False
) -> str:
    """The median run (:func:`bench.run.median_run`) by ACKed throughput (at a fixed rate, where
    every run has the same throughput: by send → station p99), with every run's throughput listed."""
    if fixed_rate:
        m, check, extra = median_run(
            runs, lambda r: r[1].latency_ms()["p99"], higher_is_better=False
        )
    else:
        m, check, extra = median_run(runs, lambda r: r[0].summary["signals_per_s"])
    s = m.summary
    st = check.latency_ms()
    each = ", ".join(f"{r[0].summary['signals_per_s']:.0f}" for r in runs)
    return "\n".join(
        [
            "| target | runs (ACKed/s each) | ACKed/s (median) | delivered/s | module ACK p50 / p90 / p99 / max ms | module send → station p50 / p90 / p99 / max ms | timeouts | NAK / DUH / errors | CPU s engine | CPU s postgres | CPU s station-sim | CPU s load gen | cores idle % | engine peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {m.name} | {len(runs)} ({each}) | **{s['signals_per_s']:.0f}** | {extra['delivered_per_s']} | "
            f"{s['p50_ms']:.1f} / {s['p90_ms']:.1f} / {s['p99_ms']:.1f} / {s['max_ms']:.1f} | "
            f"**{st['p50']:.1f} / {st['p90']:.1f} / {st['p99']:.1f}** / {st['max']:.1f} | {int(s['timeouts'])} | "
            f"{int(s['naks'])} / {int(s['duhs'])} / {int(s['errors'])} | "
            f"{m.cpu_s.get('target', 0):.1f} | {m.cpu_s.get('postgres', 0):.1f} | "
            f"{m.cpu_s.get('station-sim', 0):.1f} | {m.cpu_s.get('loadgen', 0):.1f} | {idle_cell(m)} | "
            f"{m.peak_rss_mb:.0f} |",
        ]
    )


def verification_lines(runs: list[tuple[Measured, Verification, dict[str, Any]]]) -> str:
    lines = []
    for i, (m, check, extra) in enumerate(runs, start=1):
        st = check.latency_ms()
        verdict = "**every ACKed signal delivered once**" if check.ok else "**FAILED**"
        lines.append(
            f"- run {i}: {verdict}: ACKed {check.acked}, verified at the station {check.verified}, "
            f"missing {check.missing}, duplicates {check.duplicates}, same-seq retransmissions "
            f"{check.retransmissions}, unACKed signals at the station {check.unacked_at_station}, "
            f"frames the station did not ACK {check.not_acked_by_station}; "
            f"{check.at_station} frames, the last ACKed signal delivered {extra['drain_s']} s "
            "after the load; "
            f"send → station p50 {st['p50']:.1f} / p99 {st['p99']:.1f} ms; "
            f"CPU s engine {m.cpu_s.get('target', 0):.1f}, postgres {m.cpu_s.get('postgres', 0):.1f}, "
            f"station-sim {m.cpu_s.get('station-sim', 0):.1f}, load gen {m.cpu_s.get('loadgen', 0):.1f}"
            + (f"; missing e.g. {check.missing_examples}" if check.missing_examples else "")
            + (f"; duplicated e.g. {check.duplicate_examples}" if check.duplicate_examples else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--aes", action="store_true", help="AES-128 on both legs")
    parser.add_argument("--udp", action="store_true", help="modules send over UDP")
    parser.add_argument("--rate", type=float, default=None, help="fixed total signals/s")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the engine during the load (raw collapsed stacks; last run's)",
    )
    parser.add_argument(
        "--profile-station",
        type=Path,
        default=None,
        help="run station-sim under py-spy (raw collapsed stacks of its whole life; last run's)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    args = parser.parse_args()
    if min(args.modules, args.repeats) < 1 or args.duration <= 0:
        parser.error("--modules and --repeats at least 1, --duration above 0")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate: signals per second above 0 (leave it out for as fast as possible)")
    runs = []
    for rep in range(args.repeats):
        print(f"[end-to-end] run {rep + 1}/{args.repeats}", file=sys.stderr, flush=True)
        measured, check, extra = run_once(
            args.modules,
            args.duration,
            aes=args.aes,
            udp=args.udp,
            rate=args.rate,
            profile=args.profile,
            profile_station=args.profile_station,
        )
        runs.append((measured, check, extra))
        st = check.latency_ms()
        print(
            f"    {measured.summary['signals_per_s']:.0f}/s ACKed, {extra['delivered_per_s']}/s delivered, "
            f"verified {check.verified}/{check.acked}, missing {check.missing}, duplicates "
            f"{check.duplicates}, send → station p50 {st['p50']:.1f} ms p99 {st['p99']:.1f} ms",
            file=sys.stderr,
            flush=True,
        )
    print(e2e_table(runs, fixed_rate=args.rate is not None))
    print()
    print(verification_lines(runs))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "summary": m.summary,
                        "cpu_s": m.cpu_s,
                        "cores_idle_pct": m.idle_pct,
                        "peak_rss_mb": m.peak_rss_mb,
                        "extra": extra,
                        "verification": {
                            k: v for k, v in check.__dict__.items() if k != "latencies"
                        }
                        | {"station_latency_ms": check.latency_ms()},
                    }
                    for m, check, extra in runs
                ],
                indent=2,
            )
        )
    if not all(check.ok for _, check, _ in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
