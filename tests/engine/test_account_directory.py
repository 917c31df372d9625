"""The in-memory account directory: a bad stored time zone does not break the lookup."""

from __future__ import annotations

from structlog.testing import capture_logs

from engine.account_directory import AccountDirectory
from engine.account_model import Account


class TestTimeZone:
    def test_a_zone_that_is_a_directory_is_unknown_and_logged(self) -> None:
        """ "America" (a directory of tzdata: IsADirectoryError) is an unknown zone: the account
        is still found, read as UTC, and the problem is logged; the others are unaffected."""
        directory = AccountDirectory()
        directory.load(
            [
                Account(account="1234", local_time_zone="America"),
                Account(account="5678", local_time_zone="Europe/Berlin"),
            ]
        )
        with capture_logs() as logs:
            crypto = directory.lookup("1234")
        assert crypto is not None and crypto.local_time_zone is None
        assert [(e["event"], e["zone"]) for e in logs] == [("account_time_zone_invalid", "America")]
        other = directory.lookup("5678")
        assert other is not None and str(other.local_time_zone) == "Europe/Berlin"
