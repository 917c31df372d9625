"""bench.run and bench.end_to_end refuse settings that give no run with one usage line."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

import bench.end_to_end
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
