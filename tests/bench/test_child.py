"""bench/run.py's child(): a peer or engine that fails is one clear stop, never a number."""

from __future__ import annotations

import sys

import pytest

from bench.run import child


def test_a_child_that_exits_before_it_is_ready_stops_the_benchmark_with_its_output() -> None:
    cmd = [sys.executable, "-c", "import sys; print('cannot bind the port'); sys.exit(3)"]
    with pytest.raises(SystemExit) as stopped, child(cmd):
        pytest.fail("a child that exited is never yielded")
    message = str(stopped.value)
    assert message.startswith("bench: -c ")
    assert "exited with code 3 before it was ready" in message
    assert message.endswith("cannot bind the port")


def test_a_child_that_exits_during_the_run_gives_no_result() -> None:
    """The generator's run against a target that died is cut short: its rate is not a result."""
    cmd = [sys.executable, "-c", "import sys; print('READY 1', flush=True); sys.exit(4)"]

    def run_against_it() -> None:
        with child(cmd) as (proc, line):
            assert line.startswith("READY 1")
            proc.wait(30)  # the target dies while the load runs

    with pytest.raises(SystemExit) as stopped:
        run_against_it()
    assert "exited with code 4 during the run (no result from it)" in str(stopped.value)


def test_a_child_in_use_is_terminated_afterwards() -> None:
    cmd = [sys.executable, "-c", "import time; print('READY 1', flush=True); time.sleep(60)"]
    with child(cmd) as (proc, _):
        assert proc.poll() is None
    assert proc.poll() is not None
