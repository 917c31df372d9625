"""bench.run, bench.end_to_end and bench.plots refuse settings that give no run with one usage line."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

import bench.end_to_end
import bench.plots
import bench.run


@pytest.mark.parametrize(
    ("main", "argv", "says"),
    [
        (bench.end_to_end.main, ["--repeats", "0"], "--repeats at least 1"),
        (bench.end_to_end.main, ["--rate", "0"], "--rate: signals per second above 0"),
        (bench.run.main, ["--scenario", "ingest", "--repeats", "0"], "--repeats at least 1"),
        (bench.run.main, ["--scenario", "ingest", "--modules", "0"], "--modules and --repeats"),
        (
            bench.run.main,
            ["--scenario", "accounts", "--sizes", "1000,abc"],
            "--sizes: whole numbers",
        ),
        (bench.plots.main, ["--duration", "0"], "--duration must be more than 0"),
    ],
)
def test_no_run_is_a_usage_error_not_a_traceback_or_an_empty_table(
    main: Callable[[], None],
    argv: list[str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 2
    assert says in capsys.readouterr().err


def test_plots_help_is_help_not_a_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m bench.plots --help`` ignored --help and started a full plot run (several
    minutes of benchmarks); it prints its usage and stops."""
    monkeypatch.setattr(sys, "argv", ["bench.plots", "--help"])
    with pytest.raises(SystemExit) as stopped:
        bench.plots.main()
    assert stopped.value.code == 0
    assert "--duration" in capsys.readouterr().out
