"""Side-by-side benchmark: alarmrelay against its peers, in the same run, on this machine.

Scenarios (each run ``--repeats`` times; the table reports the median run by throughput):
- ``ingest``: DC-09 TCP plain, N stop-and-wait modules; alarmrelay (durable ACK after commit)
  vs pysiaalarm's asyncio receiver vs the minimal uvloop receiver (bench/peer_minimal.py).
- ``ingest-aes``: the same with AES-128 (pysiaalarm with the same ASCII key).
- ``mqtt``: MQTT ingest through Mosquitto, durable ack published.
- ``accounts``: alarmrelay with 1,000 vs 1,000,000 provisioned accounts (RSS and throughput).
- ``supervision``: 1,000 vs 1,000,000 supervised modules (a deadline each; the load's frames are
  spread over every account, each one a module's contact moving its deadline).

Run: ``python -m bench.run --scenario ingest --duration 10 --repeats 3`` (prints progress on
stderr, then the Markdown table and the medians; ``--json FILE`` also writes every run's raw
results; nothing is written to bench/RESULTS.md by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import uvloop

from bench.load import BENCH_KEY_ASCII, Result, account_name, run_tcp
from bench.load_mqtt import MQTT_SCENARIO, BrokerCpu, lean_module_fleet, mqtt_engine_config
from protocols.dc09_crypto import AesKey

ROOT = Path(__file__).resolve().parents[1]
_Run = TypeVar("_Run")
ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Measured:
    name: str
    summary: dict[str, float]
    cpu_s: dict[str, float]
    peak_rss_mb: float
    idle_pct: float | None = None  # both cores' time that nothing used during the load


class MachineIdle:
    """The share of all cores' time that no process used between :meth:`start` and :meth:`stop`
    (``idle`` + ``iowait`` of /proc/stat's first line): what the processes under test, the peer or
    alarmrelay with PostgreSQL and the generator, left unused. None where there is no /proc/stat."""

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self._stat = stat
        self._start: tuple[int, int] | None = None

    def _read(self) -> tuple[int, int] | None:
        try:
            first = self._stat.read_text(encoding="ascii").split("\n", 1)[0].split()
        except OSError:
            return None
        # cpu user nice system idle iowait irq softirq steal [guest guest_nice: inside user]
        ticks = [int(v) for v in first[1:9]]
        return ticks[3] + ticks[4], sum(ticks)

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float | None:
        end = self._read()
        if self._start is None or end is None or end[1] <= self._start[1]:
            return None
        return 100.0 * (end[0] - self._start[0]) / (end[1] - self._start[1])


def idle_cell(m: Measured) -> str:
    """The table's "cores idle %" cell."""
    return "—" if m.idle_pct is None else f"{m.idle_pct:.0f}"


class ProcessWatch:
    """CPU seconds and peak RSS of a process tree (and of the PostgreSQL server processes).

    With ``database``, PostgreSQL's CPU is that of the client backends serving that database,
    their parallel workers and its autovacuum workers, plus the server's background processes
    (WAL writer, checkpointer, background writer: shared with any other database's work,
    small). Without it, every ``postgres`` process on the machine counts, which on a server
    other sessions use includes their work. Either way each process counts from the start of
    the watch or from when it started; one that ended before the stop counts nothing (its CPU
    cannot be read any more).
    """

    def __init__(self, pid: int, *, include_postgres: bool, database: str | None = None) -> None:
        self.proc = psutil.Process(pid)
        self.include_postgres = include_postgres
        self.database = database
        self.peak_rss = 0
        self._stop = threading.Event()
        self._start_cpu: dict[str, float] = {}
        self._start_pg: dict[int, float] = {}
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _total(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def _postgres(self) -> dict[int, float]:
        """CPU seconds per PostgreSQL process counted for ``database`` (see the class doc)."""
        titled: list[tuple[psutil.Process, list[str]]] = []
        for p in psutil.process_iter(["name", "cmdline"]):
            if (p.info["name"] or "").startswith("postgres"):
                # "postgres: 15/main: <user> <database> <host>(<port>) <state>" for a client
                # backend, "postgres: 15/main: walwriter" for a background process
                title = " ".join(p.info["cmdline"] or []).rsplit(": ", 1)[-1]
                titled.append((p, title.split()))
        database = self.database
        if database is None:
            return {p.pid: self._total(p) for p, _ in titled}
        clients = {p.pid for p, words in titled if client_database(words) == database}
        return {
            p.pid: self._total(p)
            for p, words in titled
            if works_for(words, database, clients=clients)
        }

    def _cpu(self) -> dict[str, float]:
        total = self._total
        out = {
            "target": total(self.proc) + sum(total(c) for c in self.proc.children(recursive=True))
        }
        out["loadgen"] = total(psutil.Process(os.getpid()))
        return out

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.proc.memory_info().rss
                self.peak_rss = max(self.peak_rss, rss)
            except psutil.Error:
                return
            self._stop.wait(0.2)

    def start(self) -> None:
        self._start_cpu = self._cpu()
        if self.include_postgres:
            self._start_pg = self._postgres()
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        end = self._cpu()
        out = {k: end[k] - self._start_cpu.get(k, 0.0) for k in end}
        if self.include_postgres:
            out["postgres"] = sum(
                cpu - self._start_pg.get(pid, 0.0) for pid, cpu in self._postgres().items()
            )
        return out


def client_database(words: list[str]) -> str | None:
    """The database of a PostgreSQL client backend from its title's words (``<user> <database>
    <host>(<port>) <state>``); None for any other process."""
    if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
        return words[1]
    return None


def works_for(words: list[str], database: str, *, clients: set[int]) -> bool:
    """Whether the PostgreSQL process with these title words works for ``database``: its client
    backends, the parallel workers of those (``parallel worker for PID <leader>``), its
    autovacuum workers (``autovacuum worker <database>``), and the server's own background
    processes (WAL writer, checkpointer, background writer, …); not another database's."""
    if (named := client_database(words)) is not None:
        return named == database
    if words[:4] == ["parallel", "worker", "for", "PID"] and len(words) > 4:
        return words[4].isdigit() and int(words[4]) in clients
    if words[:2] == ["autovacuum", "worker"]:
        return words[2:3] == [database]
    return True


@contextmanager
def child(
    cmd: list[str], *, ready_word: str = "READY", env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start a child and wait until it prints a line containing ``ready_word``; yield (proc, line).

    A child that exits before it is ready (or is not ready within 120 s) stops the benchmark at
    once with one line and the end of its output, and so does a child that exits while in use:
    the run measured a target that was gone, so it gives no number.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    line = ""
    ready = threading.Event()
    lines: list[str] = []

    def reader() -> None:
        nonlocal line
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace")
            lines.append(text)
            if ready_word in text and not ready.is_set():
                line = text
                ready.set()

    output = threading.Thread(target=reader, daemon=True)
    output.start()
    name = " ".join(cmd[1:4])

    def stop(what: str) -> SystemExit:
        output.join(5)  # the rest of its output
        tail = "".join(lines[-20:]).rstrip() or "(no output)"
        return SystemExit(f"bench: {name} {what}; its last output:\n{tail}")

    deadline = time.monotonic() + 120
    while not ready.wait(0.1):
        if proc.poll() is not None:
            raise stop(f"exited with code {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise stop("was not ready after 120 s")
    try:
        yield proc, line
        if proc.poll() is not None:
            raise stop(f"exited with code {proc.returncode} during the run (no result from it)")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _create_database() -> str:
    """A new database for one run; exits with one clear line when the server cannot be reached."""
    import asyncpg

    from engine.database import describe_server

    name = f"alarmrelay_bench_{secrets.token_hex(3)}"

    async def create() -> None:
        conn = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    try:
        asyncio.run(create())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise SystemExit(
            f"bench: cannot create a database on PostgreSQL at {describe_server(ADMIN_URL)}: "
            f"{exc or type(exc).__name__} (set BENCH_ADMIN_URL to an admin URL, or "
            "start the local server: bash scripts/services.sh)"
        ) from None
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _drop_database(url: str) -> None:
    import asyncpg

    name = url.rsplit("/", 1)[1]

    async def drop() -> None:
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


def _provision(url: str, count: int, *, key: str | None) -> None:
    """Bulk-load ``count`` accounts straight into the table (COPY; the CLI import is for people)."""
    import asyncpg

    from engine.migrate import apply_migrations

    async def load() -> None:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
            records = [(account_name(i), key, "ascii" if key else "hex") for i in range(count)]
            await conn.copy_records_to_table(
                "accounts", records=records, columns=["account", "key", "key_format"]
            )
        finally:
            await conn.close()

    asyncio.run(load())


def _engine_config(folder: Path, url: str, *, mqtt_prefix: str | None) -> Path:
    config = folder / "engine.toml"
    mqtt = (
        f'[mqtt]\nenabled = true\ntopic_prefix = "{mqtt_prefix}"\nclient_id = "bench-{secrets.token_hex(3)}"\n'
        if mqtt_prefix
        else "[mqtt]\nenabled = false\n"
    )
    # One group-commit writer: PostgreSQL shares these 2 cores, and one writer's larger batches
    # cost it less CPU per signal than two writers' (measured side by side 2026-12-03: ingest
    # +10 %, end to end +4 %, lower latency at 1,000/s; see RESULTS.md). The default (2) suits a
    # PostgreSQL server with cores of its own.
    config.write_text(
        f'data_dir = "{folder / "var"}"\n[database]\nurl = "{url}"\npool_max = 8\ncommit_writers = 1\n'
        f"[dc09]\nport = 0\nrate_limit_per_s = 1000000.0\nmax_pending_commits = 50000\n[http]\nport = 0\n"
        f'[logging]\nlevel = "info"\n{mqtt}',
        encoding="utf-8",
    )
    return config


def _ports(line: str) -> tuple[int, int]:
    record = json.loads(line)
    return int(record["dc09_port"]), int(record["http_port"])


@contextmanager
def serve_engine(url: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``alarmrelay serve`` on database ``url`` with the benchmarks' settings
    (:func:`_engine_config`, MQTT off), until ready; yield (process, DC-09 port)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = _engine_config(Path(tmp), url, mqtt_prefix=None)
        with child(
            [sys.executable, "-m", "engine", "serve", "--config", str(config)],
            ready_word="engine_ready",
        ) as (proc, line):
            yield proc, _ports(line)[0]


def measure(
    name: str,
    proc: subprocess.Popen[bytes],
    run: Any,
    *,
    postgres: bool,
    database: str | None = None,
) -> Measured:
    watch = ProcessWatch(proc.pid, include_postgres=postgres, database=database)
    idle = MachineIdle()
    watch.start()
    idle.start()
    result: Result = run()
    idle_pct = idle.stop()
    cpu = watch.stop()
    return Measured(name, result.summary(), cpu, watch.peak_rss / 2**20, idle_pct)


def scenario_ingest(modules: int, duration: float, repeats: int, *, aes: bool) -> list[Measured]:
    key = AesKey.from_ascii(BENCH_KEY_ASCII) if aes else None
    out: list[Measured] = []
    # One generator setting for every target of the run: only the port differs.
    settings: dict[str, Any] = {
        "modules": modules,
        "duration": duration,
        "key": key,
        "family": "both",
        "rate": None,
        "udp": False,
        "timeout": 5.0,
        "retries": 2,
    }
    print(
        f"[ingest{'-aes' if aes else ''}] the same load for every target: {modules} DC-09 TCP modules, "
        f"stop-and-wait, as fast as possible, {duration:g} s, CID and SIA alternating, "
        f"{'AES-128' if aes else 'plain'} with timestamps, reply timeout 5 s, 2 retries",
        file=sys.stderr,
        flush=True,
    )

    def load(port: int) -> Result:
        return uvloop.run(run_tcp("127.0.0.1", port, **settings))

    for rep in range(repeats):
        print(
            f"[ingest{'-aes' if aes else ''}] run {rep + 1}/{repeats}", file=sys.stderr, flush=True
        )
        first = len(out)  # this repeat's runs: three, or two with AES (no minimal receiver)
        if not aes:
            with child([sys.executable, "-m", "bench.peer_minimal", "--port", "0"]) as (proc, line):
                port = int(line.split()[1])
                out.append(
                    measure(
                        "minimal uvloop receiver (CRC + ACK only)",
                        proc,
                        lambda: load(port),
                        postgres=False,
                    )
                )
        pys = [
            sys.executable,
            "-m",
            "bench.peer_pysiaalarm",
            "--port",
            "0",
            "--accounts",
            str(modules),
        ]
        if aes:
            pys += ["--key", BENCH_KEY_ASCII]
        with child(pys) as (proc, line):
            port = int(line.split()[1])
            out.append(
                measure(
                    "pysiaalarm 3.2 asyncio receiver (receive + ACK)",
                    proc,
                    lambda: load(port),
                    postgres=False,
                )
            )
        url = _create_database()
        try:
            _provision(url, modules, key=BENCH_KEY_ASCII if aes else None)
            with serve_engine(url) as (proc, port):
                out.append(
                    measure(
                        "alarmrelay (durable ACK after commit)",
                        proc,
                        lambda: load(port),
                        postgres=True,
                        database=_database_name(url),
                    )
                )
        finally:
            _drop_database(url)
        for m in out[first:]:
            print(
                f"    {m.name}: {m.summary['signals_per_s']:.0f}/s p99 {m.summary['p99_ms']:.1f} ms",
                file=sys.stderr,
            )
    return out


def scenario_mqtt(modules: int, duration: float, repeats: int) -> list[Measured]:
    out: list[Measured] = []
    for rep in range(repeats):
        print(f"[mqtt] run {rep + 1}/{repeats}", file=sys.stderr, flush=True)
        url = _create_database()
        prefix = f"bench-{secrets.token_hex(3)}/v1"
        try:
            import asyncpg

            async def serials() -> None:
                conn = await asyncpg.connect(url)
                try:
                    from engine.migrate import apply_migrations

                    await apply_migrations(conn)
                    await conn.copy_records_to_table(
                        "accounts",
                        records=[(account_name(i), f"BENCH-{i:06d}") for i in range(modules)],
                        columns=["account", "module_serial"],
                    )
                finally:
                    await conn.close()

            asyncio.run(serials())
            with tempfile.TemporaryDirectory() as tmp:
                config = mqtt_engine_config(
                    Path(tmp),
                    url,
                    prefix=prefix,
                    mqtt=MQTT_SCENARIO["mqtt"],
                    database=MQTT_SCENARIO["database"],
                )
                with child(
                    [sys.executable, "-m", "engine", "serve", "--config", str(config)],
                    ready_word="engine_ready",
                ) as (proc, _):
                    time.sleep(1.0)  # the shared subscription is in place shortly after ready

                    def load() -> Result:
                        result = Result(started=time.perf_counter())
                        uvloop.run(
                            lean_module_fleet(
                                "127.0.0.1",
                                1883,
                                modules,
                                prefix=prefix,
                                duration=duration,
                                result=result,
                                inflight=MQTT_SCENARIO["inflight"],
                            )
                        )
                        result.ended = time.perf_counter()
                        return result

                    broker = BrokerCpu()
                    out.append(
                        measure(
                            "alarmrelay MQTT ingest (QoS 1, ack after commit)",
                            proc,
                            load,
                            postgres=True,
                            database=_database_name(url),
                        )
                    )
                    out[-1].cpu_s["mosquitto"] = broker.seconds()
        finally:
            _drop_database(url)
        cpu = out[-1].cpu_s
        print(
            f"    {out[-1].summary['signals_per_s']:.0f}/s; CPU s: engine {cpu['target']:.1f}, "
            f"postgres {cpu['postgres']:.1f}, generator {cpu['loadgen']:.1f}, "
            f"mosquitto {cpu['mosquitto']:.1f}",
            file=sys.stderr,
        )
    return out


def _supervise_all(url: str) -> None:
    """A supervision deadline for every account, as after each module's last contact: contacts
    every 5 minutes on average, so deadlines lie 24 h + grace ahead, spread over 5 minutes."""
    import asyncpg

    async def load() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO supervision (account, deadline) "
                "SELECT account, now() + interval '1 day' - random() * interval '5 minutes' "
                "FROM accounts"
            )
            await conn.execute("ANALYZE supervision")
        finally:
            await conn.close()

    asyncio.run(load())


def _supervision_outcome(url: str, since: float) -> dict[str, int]:
    """Deadlines moved by the run's contacts, and Panel Not Responding raised (must be 0)."""
    import asyncpg

    async def read() -> dict[str, int]:
        conn = await asyncpg.connect(url)
        try:
            moved = await conn.fetchval(
                "SELECT count(*) FROM supervision WHERE updated_at >= to_timestamp($1)", since
            )
            missed = await conn.fetchval("SELECT count(*) FROM supervision WHERE missed")
            return {"deadlines_moved": int(moved), "misses": int(missed)}
        finally:
            await conn.close()

    return asyncio.run(read())


def _vacuum(url: str) -> None:
    """VACUUM ANALYZE the benchmark database: what autovacuum keeps doing on a production server
    (this machine's server runs with autovacuum off), so each run starts from the same state
    instead of from the previous runs' dead rows."""
    import asyncpg

    async def vacuum() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    asyncio.run(vacuum())


def scenario_accounts(
    modules: int, duration: float, repeats: int, sizes: list[int], *, supervised: bool = False
) -> list[Measured]:
    """``supervised``: every account has a supervision deadline and the load spreads its frames
    over all accounts (each frame is one module's contact, moving its deadline).

    Every size is provisioned first; then each repeat runs every size in turn (interleaved, so
    the machine's load drift hits every size alike), each run on a freshly vacuumed database."""
    out: list[Measured] = []
    label = "supervision" if supervised else "accounts"
    urls: dict[int, str] = {}
    try:
        for size in sizes:
            urls[size] = _create_database()
            print(f"[{label}] provisioning {size} accounts", file=sys.stderr, flush=True)
            _provision(urls[size], size, key=None)
            if supervised:
                _supervise_all(urls[size])
        for rep in range(repeats):
            for size in sizes:
                url = urls[size]
                _vacuum(url)
                print(
                    f"[{label}] {size} accounts, run {rep + 1}/{repeats}",
                    file=sys.stderr,
                    flush=True,
                )
                started = time.time()
                with serve_engine(url) as (proc, port):
                    spread = size if supervised else None
                    out.append(
                        measure(
                            f"alarmrelay, {size:,} {'supervised modules' if supervised else 'accounts'}",
                            proc,
                            lambda: uvloop.run(
                                run_tcp("127.0.0.1", port, modules, duration, spread=spread)
                            ),
                            postgres=True,
                            database=_database_name(url),
                        )
                    )
                extra = ""
                if supervised:
                    outcome = _supervision_outcome(url, started)
                    out[-1].summary.update(outcome)
                    extra = f", deadlines moved {outcome['deadlines_moved']:,}, misses {outcome['misses']}"
                print(
                    f"    {out[-1].summary['signals_per_s']:.0f}/s, peak RSS {out[-1].peak_rss_mb:.0f} MiB{extra}",
                    file=sys.stderr,
                )
    finally:
        for url in urls.values():
            _drop_database(url)
    return out


def median_run(
    runs: Sequence[_Run], key: Callable[[_Run], float], *, higher_is_better: bool = True
) -> _Run:
    """The median run by ``key``; of an even number of runs, the worse of the two middle ones.

    Every number a table shows is one run's, so the median is a run, not the mean of two; the
    worse one, so that the choice never flatters the target. The same run everywhere a median
    is reported (the table and the medians printed after it)."""
    worst = -math.inf if higher_is_better else math.inf

    def rank(run: _Run) -> float:
        value = key(run)
        return worst if math.isnan(value) else value  # no number (e.g. no latency): the worst

    ordered = sorted(runs, key=rank, reverse=not higher_is_better)
    return ordered[(len(ordered) - 1) // 2]


def _throughput(m: Measured) -> float:
    return m.summary["signals_per_s"]


def table(results: list[Measured]) -> str:
    """Median run (by throughput, :func:`median_run`) per target as a Markdown table."""
    by_name: dict[str, list[Measured]] = {}
    for m in results:
        by_name.setdefault(m.name, []).append(m)
    lines = [
        "| target | runs | signals/s (median) | p50 ms | p90 ms | p99 ms | max ms | timeouts | NAK / DUH / errors | CPU s target | CPU s postgres | CPU s load gen (µs/signal) | cores idle % | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_name.items():
        med = median_run(runs, _throughput)
        s = med.summary
        each = ", ".join(f"{r.summary['signals_per_s']:.0f}" for r in runs)
        lines.append(
            f"| {name} | {len(runs)} ({each}) | **{s['signals_per_s']:.0f}** | "
            f"{s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} | {int(s['timeouts'])} | "
            f"{int(s.get('naks', 0))} / {int(s.get('duhs', 0))} / {int(s.get('errors', 0))} | "
            f"{med.cpu_s.get('target', 0):.1f} | {med.cpu_s.get('postgres', 0):.1f} | "
            f"{med.cpu_s.get('loadgen', 0):.1f} ({med.cpu_s.get('loadgen', 0) / max(1, s['sent']) * 1e6:.0f}) | "
            f"{idle_cell(med)} | {med.peak_rss_mb:.0f} |"
        )
    return "\n".join(lines)


def medians(results: list[Measured]) -> dict[str, float]:
    """Throughput of each target's median run: the run the table shows."""
    by_name: dict[str, list[Measured]] = {}
    for m in results:
        by_name.setdefault(m.name, []).append(m)
    return {k: _throughput(median_run(v, _throughput)) for k, v in by_name.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario",
        choices=["ingest", "ingest-aes", "mqtt", "accounts", "supervision"],
        required=True,
    )
    parser.add_argument("--modules", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sizes", default="1000,1000000", help="account counts for --scenario accounts"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    args = parser.parse_args()
    if min(args.modules, args.repeats) < 1 or args.duration <= 0:
        parser.error("--modules and --repeats at least 1, --duration above 0")
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: whole numbers separated by commas, not {args.sizes!r}")
    if min(sizes) < 1:
        parser.error("--sizes: every size must be at least 1")
    if args.scenario in ("ingest", "ingest-aes"):
        results = scenario_ingest(
            args.modules, args.duration, args.repeats, aes=args.scenario == "ingest-aes"
        )
    elif args.scenario == "mqtt":
        results = scenario_mqtt(args.modules, args.duration, args.repeats)
    else:
        results = scenario_accounts(
            args.modules,
            args.duration,
            args.repeats,
            sizes,
            supervised=args.scenario == "supervision",
        )
    print(table(results))
    print()
    print(json.dumps(medians(results), indent=2))
    if args.json:
        args.json.write_text(json.dumps([m.__dict__ for m in results], indent=2, default=str))


if __name__ == "__main__":
    main()
