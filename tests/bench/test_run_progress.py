"""bench/run.py's progress lines on stderr: each repeat's own runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import bench.run as bench_run
from bench.load import Result
from bench.run import Measured


def test_ingest_aes_progress_shows_only_this_repeats_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With AES a repeat has two runs (no minimal receiver): the progress of the second repeat
    listed the first repeat's alarmrelay run as well."""
    rates = iter([100.0, 200.0, 300.0, 400.0])

    @contextlib.contextmanager
    def process(*_: Any, **__: Any) -> Iterator[tuple[Any, Any]]:
        yield object(), "READY 1"

    def measure(name: str, proc: Any, run: Any, **_: Any) -> Measured:
        summary = {**Result(started=0.0, ended=1.0).summary(), "signals_per_s": next(rates)}
        return Measured(name, summary, {}, 1.0)

    monkeypatch.setattr(bench_run, "child", process)
    monkeypatch.setattr(bench_run, "serve_engine", lambda url: process())
    monkeypatch.setattr(bench_run, "_create_database", lambda: "postgresql://x/db")
    monkeypatch.setattr(bench_run, "_provision", lambda *_, **__: None)
    monkeypatch.setattr(bench_run, "_drop_database", lambda url: None)
    monkeypatch.setattr(bench_run, "measure", measure)
    bench_run.scenario_ingest(2, 0.1, 2, aes=True)
    second = capsys.readouterr().err.split("run 2/2")[1]
    assert [line.split(": ")[1].split("/s")[0] for line in second.strip().splitlines()] == [
        "300",
        "400",
    ]
