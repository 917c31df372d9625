"""Errors the CLI and the service report to a person as one clear line (never a traceback)."""

from __future__ import annotations


class UserFacingError(Exception):
    """A problem the user can fix: bad config, bad input file, unreachable database, …

    ``str(error)`` is the whole message shown to the user; ``exit_code`` is the process status.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
