"""Errors the CLI and the service report to a person as one clear line (never a traceback)."""

from __future__ import annotations

import asyncpg

# What a statement raises when PostgreSQL, or the connection to it, failed under it. asyncpg's
# InternalClientError is among them: a FATAL (pg_terminate_backend, a server shutting down) that
# reaches an idle pooled connection leaves its protocol state broken until the close is read, and
# a query handed that connection meanwhile raises "cannot switch to state N; another operation
# (2) is in progress" (MagicStack/asyncpg#784, #1069). Retry loops catch all of these.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


# What Windows editors put at the start of a UTF-8 file. The files a person hands us (settings,
# accounts, stations) are read without it: refused, it showed as an error at line 1, column 1.
UTF8_BOM = b"\xef\xbb\xbf"


class UserFacingError(Exception):
    """A problem the user can fix: bad config, bad input file, unreachable database, …

    ``str(error)`` is the whole message shown to the user; ``exit_code`` is the process status.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


# SQLSTATEs that refuse every write whatever its data: insufficient resources (53: disk full,
# out of memory, too many connections), system errors (58: I/O error), a read-only transaction
# (25006: a standby, or default_transaction_read_only).
_WRITES_REFUSED_CLASSES = ("53", "58")
_WRITES_REFUSED_STATES = frozenset({"25006"})


def refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL refusing writes as such (disk full, read-only, I/O error),
    not this statement's data: retrying the signals one by one cannot help."""
    state = getattr(exc, "sqlstate", None)
    if not isinstance(state, str) or not type(exc).__module__.startswith("asyncpg"):
        return False
    return state[:2] in _WRITES_REFUSED_CLASSES or state in _WRITES_REFUSED_STATES


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
    # A connection a FATAL reached while idle (see DATABASE_ERRORS): gone, the pool replaces it.
    if name == "InternalClientError" and str(exc).startswith("cannot switch to state"):
        return True
    # asyncpg's InterfaceError for a pooled connection that closed under the caller.
    return name == "InterfaceError" and "closed" in str(exc)
