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


def is_database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says PostgreSQL is out of reach (connection refused, lost, timed out, the
    server shutting down or refusing connections), as opposed to a bad statement or bad data."""
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    module = type(exc).__module__
    if not module.startswith("asyncpg"):
        return False
    name = type(exc).__name__
    if any(word in name for word in ("Connection", "CannotConnectNow", "AdminShutdown")):
        return True
    # asyncpg's InterfaceError for a pooled connection that closed under the caller.
    return name == "InterfaceError" and "closed" in str(exc)
