"""API keys and the caller they identify.

A key is ``ar_`` + 43 URL-safe characters from :func:`secrets.token_urlsafe` (256 random bits).
Only ``sha256(key)`` is stored. A slow password hash (bcrypt, argon2) protects low-entropy
secrets chosen by people; a 256-bit random token cannot be guessed or brute-forced from its
hash, so one fast hash is enough and lets the lookup be a single indexed equality.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Literal

import asyncpg
import msgspec
from litestar import Request
from litestar.datastructures import State

from engine.api.problems import ProblemError

Role = Literal["admin", "dealer", "read-only"]
KEY_PREFIX = "ar_"


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who is calling: the key's id, role and dealer (for dealer and scoped read-only keys)."""

    key_id: int
    role: Role
    dealer_id: int | None

    @property
    def can_write(self) -> bool:
        """Admin and dealer keys change things; read-only keys never do."""
        return self.role != "read-only"


def new_key() -> str:
    """A fresh API key (shown once to whoever creates it)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key or set-up token."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    role: Role,
    dealer_id: int | None,
    label: str | None = None,
) -> tuple[int, str]:
    """Store a new key; returns (id, key). The key itself is not kept anywhere."""
    key = new_key()
    key_id = await conn.fetchval(
        "INSERT INTO api_keys (key_hash, prefix, role, dealer_id, label) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        hash_key(key),
        key[:8],
        role,
        dealer_id,
        label,
    )
    return int(key_id), key


def presented_key(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


async def provide_caller(request: Request[Any, Any, Any], state: State) -> Caller:
    """Dependency: the caller of this request, or 401."""
    key = presented_key(request)
    if key is None:
        raise ProblemError(401, "Unauthorized", "send an API key: Authorization: Bearer <key>")
    row = await state.pool.fetchrow(
        "SELECT id, role, dealer_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(key),
    )
    if row is None:
        raise ProblemError(401, "Unauthorized", "unknown or revoked API key")
    return Caller(key_id=row["id"], role=row["role"], dealer_id=row["dealer_id"])


def require_write(caller: Caller) -> None:
    """403 for read-only keys on a change."""
    if not caller.can_write:
        raise ProblemError(403, "Forbidden", "this API key is read-only")


def require_admin(caller: Caller) -> None:
    """403 unless the key is an admin key."""
    if caller.role != "admin":
        raise ProblemError(403, "Forbidden", "this operation needs an admin key")
