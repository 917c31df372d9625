"""The median run the tables report: one run, the same in the table and the medians after it."""

from __future__ import annotations

from bench.end_to_end import Verification, e2e_table
from bench.run import Measured, median_run, medians, table

_SUMMARY = {
    "signals_per_s": 1000.0, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0,
    "timeouts": 0, "sent": 8000, "naks": 0, "duhs": 0, "errors": 0,
}  # fmt: skip


def _run(rate: float, name: str = "alarmrelay") -> Measured:
    return Measured(name, {**_SUMMARY, "signals_per_s": rate}, {}, 60.0)


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip("|").split("|")]


def test_an_even_number_of_runs_reports_the_same_run_in_the_table_and_the_medians() -> None:
    """Two runs: the table showed the faster one and the medians the mean of both (1,200,
    1,100); both now give the slower of the two middle runs."""
    runs = [_run(1200.0), _run(1000.0), _run(900.0, "peer"), _run(1500.0, "peer")]
    rows = table(runs).splitlines()[2:]
    assert [_cells(r)[2] for r in rows] == ["**1000**", "**900**"]
    assert medians(runs) == {"alarmrelay": 1000.0, "peer": 900.0}


def test_odd_counts_take_the_middle_run_and_latency_the_worse_of_two() -> None:
    assert median_run([3.0, 1.0, 2.0], float) == 2.0
    assert median_run([1.0, 4.0, 2.0, 3.0], float) == 2.0  # throughput: the lower
    assert median_run([1.0, 4.0, 2.0, 3.0], float, higher_is_better=False) == 3.0  # p99: higher
    assert median_run([5.0], float) == 5.0


def test_end_to_end_reports_the_slower_middle_run_of_two() -> None:
    runs = [
        (_run(rate), Verification(latencies=[0.002]), {"delivered_per_s": rate})
        for rate in (700.0, 600.0)
    ]
    row = e2e_table(runs).splitlines()[2]
    assert _cells(row)[1:3] == ["2 (700, 600)", "**600**"]
