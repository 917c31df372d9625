"""Which dealers a caller may see: its own and all of its sub-dealers (any depth).

Anything outside that set answers 404, exactly like something that does not exist, so a dealer
cannot probe for other dealers' customers.
"""

from __future__ import annotations

import asyncpg

from engine.api.auth import Caller

_DESCENDANTS = """
WITH RECURSIVE tree(id) AS (
    SELECT id FROM dealers WHERE id = $1
    UNION
    SELECT d.id FROM dealers d JOIN tree t ON d.parent_id = t.id
)
SELECT id FROM tree
"""
_ANCESTORS = """
WITH RECURSIVE up(id, parent_id) AS (
    SELECT id, parent_id FROM dealers WHERE id = $1
    UNION
    SELECT d.id, d.parent_id FROM dealers d JOIN up u ON d.id = u.parent_id
)
SELECT id FROM up
"""


async def visible_dealers(
    conn: asyncpg.Connection | asyncpg.Pool, caller: Caller
) -> list[int] | None:
    """The dealer ids the caller may see, or None for "all" (admin, unscoped read-only)."""
    if caller.dealer_id is None:
        return None
    rows = await conn.fetch(_DESCENDANTS, caller.dealer_id)
    return [int(r["id"]) for r in rows]


async def dealer_ancestors(conn: asyncpg.Connection | asyncpg.Pool, dealer_id: int) -> list[int]:
    """The dealer and every dealer above it."""
    rows = await conn.fetch(_ANCESTORS, dealer_id)
    return [int(r["id"]) for r in rows]


def sees(visible: list[int] | None, *dealer_ids: int | None) -> bool:
    """True when any of ``dealer_ids`` is in the visible set (None set: sees everything)."""
    if visible is None:
        return True
    return any(d in visible for d in dealer_ids if d is not None)
