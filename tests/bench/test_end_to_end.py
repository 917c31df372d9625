"""bench.end_to_end's check: ACKed signals matched to the station's frames by identity."""

from __future__ import annotations

import math
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

import bench.end_to_end
import bench.run
from bench.end_to_end import StationProcess, expected_key, verify
from bench.load import AckedSignal, Result, account_name, signal_data
from engine.station_sim import Received, ReceivedEvent
from protocols.contact_id import format_cid_block
from protocols.dc09_payload import parse_payload
from protocols.sia_dc03 import format_sia_block
from protocols.signal import Family

T0 = 1_800_000_000.0  # wall clock of the module sends (wall_offset 0)


def _acked(module: int, n: int, family: str = "cid", sent: float = T0) -> AckedSignal:
    account = account_name(module)
    return AckedSignal(account, f"{n % 9999 + 1:04d}", n, family, sent, sent + 0.01)


def _forwarded(
    module: int, n: int, *, family: str = "cid", seq: str = "0001", at: float = T0 + 0.05
) -> Received:
    """The station's record of what the engine forwards for module ``module``'s signal ``n``:
    the same event under the customer's station account, re-encoded by the engine's client."""
    token, data = signal_data(account_name(module), n, family)
    [event] = parse_payload(token, data)
    station_account = str(9000 + module)
    # as receivers.dc09_client encodes it for a receiver taking both families
    fmt = format_cid_block if event.family is Family.CID else format_sia_block
    [back] = parse_payload(token, fmt(event, station_account))
    return Received(
        received_at=datetime.fromtimestamp(at, UTC),
        transport="tcp",
        peer="127.0.0.1:1",
        token=token,
        encrypted=False,
        seq=seq,
        receiver=None,
        line="0",
        account=station_account,
        timestamp=None,
        events=[
            ReceivedEvent(
                family=back.family.value,
                code=back.code,
                qualifier=back.qualifier,
                zone=back.zone,
                partition=back.partition,
                user=back.user,
                text=back.text,
            )
        ],
        reply="ack",
    )


def _result(*signals: AckedSignal) -> Result:
    return Result(acked=len(signals), acked_signals=list(signals), wall_offset=0.0)


class TestExpectedKey:
    def test_station_account_and_event(self) -> None:
        """Module i's signal goes to station account 9000 + i with its event's fields."""
        assert expected_key(account_name(7), 1, "cid") == ("9007", "cid", "602", "1", 2, 1, None)
        # CID 401 (opening) carries a user, not a zone; SIA OP likewise
        assert expected_key(account_name(7), 2, "cid") == ("9007", "cid", "401", "1", None, 1, 3)
        assert expected_key(account_name(0), 4, "sia")[:3] == ("9000", "sia", "BA")


class TestVerify:
    def test_every_signal_once(self) -> None:
        """Each ACKed signal found once: verified, nothing missing; latency send → receipt."""
        pairs = [(m, n) for m in range(3) for n in range(1, 5)]
        signals = [_acked(m, n) for m, n in pairs]
        records = [
            _forwarded(m, n, seq=f"{i:04d}", at=T0 + 0.02 * (i + 1))
            for i, (m, n) in enumerate(pairs)
        ]
        check = verify(_result(*signals), records)
        assert (check.verified, check.missing, check.duplicates, check.retransmissions) == (
            12,
            0,
            0,
            0,
        )
        assert check.ok
        assert check.latency_ms()["max"] == pytest.approx(240.0, abs=0.01)
        # nearest rank: the 6th of the 12 latencies (20, 40, … 240 ms), not the 7th
        assert check.latency_ms()["p50"] == pytest.approx(120.0, abs=0.01)

    def test_missing_duplicate_retransmission_unacked(self) -> None:
        """Missing and delivered-twice (another seq) fail; a same-seq copy and a frame for a
        signal no module saw ACKed are counted apart."""
        signals = [_acked(1, 1), _acked(1, 2), _acked(1, 3), _acked(2, 1, "sia")]
        records = [
            _forwarded(1, 1, seq="0001"),
            _forwarded(1, 1, seq="0001"),  # the engine resent it: same seq
            _forwarded(1, 2, seq="0002"),
            _forwarded(1, 2, seq="0009"),  # delivered twice
            # (1, 3) missing
            _forwarded(2, 1, family="sia", seq="0003"),
            _forwarded(2, 5, family="sia", seq="0004"),  # committed, its ACK never seen
        ]
        check = verify(_result(*signals), records)
        assert (check.verified, check.missing, check.duplicates) == (3, 1, 1)
        assert (check.retransmissions, check.unacked_at_station) == (1, 1)
        assert not check.ok
        assert check.missing_examples == [repr(expected_key(account_name(1), 3, "cid"))]

    def test_wrong_account_or_zone_is_missing(self) -> None:
        """A frame under the module's own account, or with another zone, does not count."""
        record = _forwarded(1, 1)
        wrong_account = msgspec.structs.replace(record, account=account_name(1))
        events = [msgspec.structs.replace(record.events[0], zone=99)]
        wrong_zone = msgspec.structs.replace(record, events=events)
        check = verify(_result(_acked(1, 1)), [wrong_account, wrong_zone])
        assert (check.verified, check.missing, check.unacked_at_station) == (0, 1, 2)


def test_a_station_sim_that_cannot_start_is_one_clear_line(tmp_path: Path) -> None:
    """Its port taken: station-sim exits, and the benchmark says so with its output at once."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        station = StationProcess(taken.getsockname()[1], tmp_path / "station.jsonl", aes=False)
        try:
            with pytest.raises(SystemExit) as stopped:
                station.wait_ready()
        finally:
            station.proc.kill()  # whatever happened, none left running
            station.proc.wait()
    message = str(stopped.value)
    assert message.startswith("bench: station-sim exited with code ")
    assert "its last output:\n" in message and "(no output)" not in message


def test_no_signal_at_the_station_has_no_latency_not_zero() -> None:
    check = verify(_result(_acked(1, 1)), [])
    assert check.missing == 1
    assert all(math.isnan(v) for v in check.latency_ms().values())


def test_a_frame_the_station_did_not_ack_delivers_nothing() -> None:
    """A NAKed frame alone leaves the signal missing; the ACKed resend after it is the delivery
    (its receipt the latency), the NAKed one counted apart."""
    naked = msgspec.structs.replace(_forwarded(1, 1, seq="0001", at=T0 + 0.05), reply="nak")
    check = verify(_result(_acked(1, 1)), [naked])
    assert (check.verified, check.missing, check.not_acked_by_station) == (0, 1, 1)
    assert not check.ok
    acked_again = _forwarded(1, 1, seq="0001", at=T0 + 0.25)
    check = verify(_result(_acked(1, 1)), [naked, acked_again])
    assert (check.verified, check.missing, check.retransmissions) == (1, 0, 0)
    assert check.latency_ms()["max"] == pytest.approx(250.0, abs=0.01)


def test_the_drain_ends_at_the_last_acked_signals_delivery() -> None:
    """delivered/s runs to the last delivery of an ACKed signal: a late same-seq resend of it
    and a frame for a signal no module saw ACKed deliver nothing the rate counts."""
    records = [
        _forwarded(1, 1, seq="0001", at=T0 + 0.05),
        _forwarded(1, 1, seq="0001", at=T0 + 5.0),  # the engine missed the ACK: resent
        _forwarded(1, 2, seq="0002", at=T0 + 6.0),  # committed, the module's ACK never seen
    ]
    check = verify(_result(_acked(1, 1)), records)
    assert (check.verified, check.retransmissions, check.unacked_at_station) == (1, 1, 1)
    assert check.last_receipt - T0 == pytest.approx(0.05, abs=1e-6)


def test_postgresql_unreachable_leaves_no_station_sim_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-line stop when PostgreSQL cannot be reached left station-sim listening."""
    started: list[StationProcess] = []

    class Recorded(StationProcess):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(bench.run, "ADMIN_URL", f"postgresql://postgres@127.0.0.1:{port}/postgres")
    monkeypatch.setattr(bench.end_to_end, "StationProcess", Recorded)
    try:
        with pytest.raises(SystemExit, match="cannot create a database"):
            bench.end_to_end.run_once(2, 1.0, aes=False, udp=False, rate=None)
        [station] = started
        assert station.proc.poll() is not None
    finally:
        for left in started:
            left.proc.kill()
            left.proc.wait()
