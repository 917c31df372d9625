"""Which accounts' rows another transaction holds now: asked without waiting (``SKIP LOCKED``).

A group commit that ran into the lock timeout (``INGEST_LOCK_TIMEOUT``) asks this about its
accounts, so that the pipeline commits the others at once and retries the held ones apart; the
pipeline asks it again of the accounts set aside, and tries only those found free. The
rows are those a batch writes per account, each probed in the mode the batch takes: the account
(its first and last contact), its supervision deadline, its phone-line state (``FOR UPDATE``, as
:meth:`engine.forwarding_stage.ForwardingStage.lock_states`) and its Crash & Smash entries. A row
is held when it exists and cannot be locked now. The probe's own locks last one statement.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

_HELD = """
WITH free_accounts AS MATERIALIZED (
    SELECT account FROM accounts WHERE account = ANY ($1::text[])
    FOR NO KEY UPDATE SKIP LOCKED
), free_supervision AS MATERIALIZED (
    SELECT account FROM supervision WHERE account = ANY ($1::text[])
    FOR NO KEY UPDATE SKIP LOCKED
), free_states AS MATERIALIZED (
    SELECT account FROM account_state WHERE account = ANY ($1::text[])
    FOR UPDATE SKIP LOCKED
), free_entries AS MATERIALIZED (
    SELECT account, partition FROM pending_entries WHERE account = ANY ($1::text[])
    FOR NO KEY UPDATE SKIP LOCKED
)
SELECT a.account FROM accounts a
WHERE a.account = ANY ($1::text[]) AND a.account NOT IN (SELECT account FROM free_accounts)
UNION
SELECT s.account FROM supervision s
WHERE s.account = ANY ($1::text[]) AND s.account NOT IN (SELECT account FROM free_supervision)
UNION
SELECT t.account FROM account_state t
WHERE t.account = ANY ($1::text[]) AND t.account NOT IN (SELECT account FROM free_states)
UNION
SELECT e.account FROM pending_entries e
WHERE e.account = ANY ($1::text[])
  AND (e.account, e.partition) NOT IN (SELECT account, partition FROM free_entries)
"""


async def held_accounts(conn: asyncpg.Connection, accounts: Iterable[str]) -> frozenset[str]:
    """The accounts of ``accounts`` one of whose rows another transaction holds right now."""
    names = sorted(set(accounts))
    if not names:
        return frozenset()
    return frozenset(r["account"] for r in await conn.fetch(_HELD, names))
