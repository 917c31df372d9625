"""engine/station_model.py: what a receiver must be to be stored (admin API and `stations import`)."""

from __future__ import annotations

import msgspec
import pytest

from engine.station_model import ReceiverConfig, receiver_problem

GOOD = ReceiverConfig(name="rx", host="station.example.com", port=9000)


class TestReceiverProblem:
    @pytest.mark.parametrize(
        "host",
        ["station.example.com", "station.example.com.", "10.0.0.7", "::1", "rx_1.internal", "a"],
    )
    def test_addresses_and_host_names_are_taken(self, host: str) -> None:
        assert receiver_problem(msgspec.structs.replace(GOOD, host=host)) is None

    @pytest.mark.parametrize(
        "host",
        [" station.example.com", "station..example.com", "station example.com", "-rx.example.com",
         f"{'a' * 64}.example.com", "."],
    )  # fmt: skip
    def test_a_host_no_resolver_takes_is_refused(self, host: str) -> None:
        """A pasted space or a doubled dot was stored, then failed every delivery to the
        receiver (and, before, raised out of the client on each retry)."""
        problem = receiver_problem(msgspec.structs.replace(GOOD, host=host))
        assert problem is not None
        assert problem.startswith(f"host {host!r} is neither an IP address nor a host name")

    @pytest.mark.parametrize("account", ["", "12-34", "1" * 17, "0000 ", "١٢٣٤"])
    def test_a_poll_account_dc09_cannot_carry_is_refused(self, account: str) -> None:
        problem = receiver_problem(msgspec.structs.replace(GOOD, poll_account=account))
        assert problem == "poll_account must be 1-16 characters 0-9, A-Z (a DC-09 account)"

    @pytest.mark.parametrize("account", ["0000", "A1B2", "a1b2", "1" * 16])
    def test_a_poll_account_is_taken(self, account: str) -> None:
        assert receiver_problem(msgspec.structs.replace(GOOD, poll_account=account)) is None

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("ack_timeout_s", 0.0, "ack_timeout_s must be above 0 and at most 300 seconds"),
            ("ack_timeout_s", 1e308, "ack_timeout_s must be above 0 and at most 300 seconds"),
            ("null_poll_interval_s", 1e9, "null_poll_interval_s must be above 0 and at most 86400"),
        ],
    )
    def test_timeouts_are_bounded(self, field: str, value: float, message: str) -> None:
        """An ACK timeout of 1e308 s: a receiver that never answered was never failed over."""
        problem = receiver_problem(msgspec.structs.replace(GOOD, **{field: value}))
        assert problem is not None
        assert problem.startswith(message)
        assert receiver_problem(msgspec.structs.replace(GOOD, ack_timeout_s=300.0)) is None
