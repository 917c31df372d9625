"""Which accounts' rows another transaction holds now: asked without waiting (``SKIP LOCKED``).

A group commit that ran into the lock timeout (``INGEST_LOCK_TIMEOUT``) asks this about its
accounts, so that the pipeline commits the others at once and retries the held ones apart; the
pipeline asks it again of the accounts set aside, and tries only those found free. The
rows are those a batch writes per account, each probed in the mode the batch takes: the account
(its first and last contact), its supervision deadline, its phone-line state (``FOR UPDATE``, as
:meth:`engine.forwarding_stage.ForwardingStage.lock_states`) and its Crash & Smash entries. A row
is held when it exists and cannot be locked now. The probe's own locks last one statement.

:func:`held_lanes` asks the same of delivery lanes, whose lock is an advisory lock (a commit takes
it for each lane it writes an outbox row to, after its row locks): a lane held elsewhere (a
dispatcher recording a failure while it waits for a row) keeps every commit to it waiting.
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


_LANES_HELD = """
SELECT l.lane FROM (SELECT DISTINCT unnest($1::text[]) AS lane) l
WHERE NOT pg_try_advisory_xact_lock(hashtextextended(l.lane, 0))
"""


async def held_lanes(conn: asyncpg.Connection, lanes: Iterable[str]) -> frozenset[str]:
    """Those of ``lanes`` whose lock another transaction holds right now (not waited for). The
    others' locks are taken: until the end of the caller's transaction (a commit of their rows
    then does not wait for them), or of this statement outside one."""
    names = sorted(set(lanes))
    if not names:
        return frozenset()
    return frozenset(r["lane"] for r in await conn.fetch(_LANES_HELD, names))


async def held_accounts(conn: asyncpg.Connection, accounts: Iterable[str]) -> frozenset[str]:
    """The accounts of ``accounts`` one of whose rows another transaction holds right now."""
    names = sorted(set(accounts))
    if not names:
        return frozenset()
    return frozenset(r["account"] for r in await conn.fetch(_HELD, names))
