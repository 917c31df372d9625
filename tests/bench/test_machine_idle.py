"""bench/run.py: the share of the cores left idle during a load, from /proc/stat, and its column."""

from __future__ import annotations

from pathlib import Path

from bench.run import MachineIdle, Measured, table

_SUMMARY = {
    "signals_per_s": 1000.0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0,
    "timeouts": 0, "sent": 8000,
}  # fmt: skip


def _stat(path: Path, user: int, system: int, idle: int, iowait: int, softirq: int) -> None:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice, then per-core lines
    path.write_text(
        f"cpu  {user} 0 {system} {idle} {iowait} 0 {softirq} 0 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\n",
        encoding="ascii",
    )


def test_idle_and_iowait_over_every_state_between_start_and_stop(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _stat(stat, user=1000, system=200, idle=5000, iowait=10, softirq=30)
    watch = MachineIdle(stat)
    watch.start()
    # 1,600 ticks later (2 cores, 8 s): 950 user, 160 system, 60 softirq, 20 iowait, 410 idle
    _stat(stat, user=1950, system=360, idle=5410, iowait=30, softirq=90)
    assert watch.stop() == 100.0 * (410 + 20) / 1600


def test_no_proc_stat_gives_no_number(tmp_path: Path) -> None:
    watch = MachineIdle(tmp_path / "missing")
    watch.start()
    assert watch.stop() is None


def test_the_table_shows_the_median_runs_idle_share() -> None:
    runs = [
        Measured("alarmrelay", {**_SUMMARY, "signals_per_s": 900.0}, {}, 60.0, 31.2),
        Measured("alarmrelay", _SUMMARY, {"target": 5.0, "postgres": 5.1}, 66.0, 25.4),
        Measured("alarmrelay", {**_SUMMARY, "signals_per_s": 1100.0}, {}, 61.0, None),
    ]
    header, _, row = table(runs).splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert header.split("|")[13].strip() == "cores idle %"
    assert cells[12] == "25"  # the median run by throughput (1,000/s), not the others
    assert cells[2] == "**1000**"
    no_number = table([Measured("peer", _SUMMARY, {}, 10.0)]).splitlines()[2]
    assert [c.strip() for c in no_number.strip("|").split("|")][12] == "—"
