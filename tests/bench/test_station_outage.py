"""bench/station_outage.py: a real engine with its station down keeps every ACKed signal queued."""

from __future__ import annotations

from collections import Counter

from bench.load import AckedSignal
from bench.station_outage import Outage, run_once, table, unqueued


def test_every_acked_signal_waits_in_the_outbox() -> None:
    run = run_once(modules=5, duration=1.5, rate=20)
    assert run.acked >= 10
    assert run.pending == run.acked  # nothing delivered, nothing lost: one pending row each
    assert run.unqueued == 0  # and each ACKed signal's row is its own
    assert run.cpu_s["target"] > 0 and run.cpu_s["postgres"] > 0


def test_the_table_reports_the_median_run_by_p99() -> None:
    def outage(p99: float) -> Outage:
        summary = {
            "signals_per_s": 500.0,
            "p50_ms": 1.0,
            "p90_ms": 2.0,
            "p99_ms": p99,
            "max_ms": 40.0,
        }
        return Outage(summary, {"target": 7.0, "postgres": 10.5}, 31.0, 15000, 15000)

    header, _, row = table([outage(30.0), outage(7.5), outage(12.0)], 500).splitlines()
    assert "pending deliveries" in header
    assert row.startswith("| 500/s | 3 (30.0, 7.5, 12.0) | 500 | 1.0 / 2.0 / **12.0** / 40.0 |")
    assert row.endswith("| 7.0 | 10.5 | 31 | 15000 | 15000 |")


def test_an_acked_signal_is_queued_only_by_its_own_delivery() -> None:
    """Two ACKs and two pending rows, but one row is a signal whose ACK was never seen."""
    acked = [
        AckedSignal("100000", "0001", 0, "cid", 0.0, 0.1),
        AckedSignal("100001", "0001", 0, "sia", 0.0, 0.1),
    ]
    assert unqueued(acked, Counter({("100000", "0001"): 1, ("100000", "0002"): 1})) == 1
    assert unqueued(acked, Counter({("100000", "0001"): 1, ("100001", "0001"): 1})) == 0
    assert unqueued(acked * 2, Counter({("100000", "0001"): 2, ("100001", "0001"): 1})) == 1
