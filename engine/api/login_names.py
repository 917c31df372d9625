"""Login names: letters and digits only, under 100 characters, unique (case-insensitive)."""

from __future__ import annotations

import re

import asyncpg

MAX_LENGTH = 99  # "under 100 characters"
_ALLOWED = re.compile(r"[A-Za-z0-9]+")


def login_problem(name: str) -> tuple[str, str] | None:
    """(rule, message) when the login name breaks a format rule, else None."""
    if not name:
        return "required", "a login name is required"
    if len(name) > MAX_LENGTH:
        return "length", "a login name must be under 100 characters"
    if not _ALLOWED.fullmatch(name) or not name.isascii():
        return "letters_digits", "a login name has letters and digits only"
    return None


async def login_taken(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> bool:
    """True when a customer already has this login name (any case)."""
    return bool(
        await conn.fetchval("SELECT true FROM customers WHERE lower(login_name) = lower($1)", name)
    )


def _base(first_name: str, last_name: str) -> str:
    raw = re.sub(
        r"[^A-Za-z0-9]", "", (first_name[:1] + last_name).encode("ascii", "ignore").decode()
    )
    return (raw.lower() or "customer")[: MAX_LENGTH - 6]


async def suggest_login(
    conn: asyncpg.Connection | asyncpg.Pool, first_name: str, last_name: str
) -> str:
    """The default login: first initial + last name, with the lowest free number appended if taken."""
    base = _base(first_name, last_name)
    rows = await conn.fetch(
        "SELECT lower(login_name) AS l FROM customers WHERE lower(login_name) LIKE $1 || '%'", base
    )
    taken = {r["l"] for r in rows}
    if base not in taken:
        return base
    n = 2
    while f"{base}{n}" in taken:
        n += 1
    return f"{base}{n}"
