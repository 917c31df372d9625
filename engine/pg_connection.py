"""The asyncpg connection class of the engine's pool: no reset query on release.

asyncpg runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;`` every time a
connection goes back to the pool: one more server round trip for each ``pool.execute``, about 7 %
of the engine's CPU in the end-to-end benchmark (py-spy). The engine leaves no session state
behind on a pooled connection: it never uses SET; cursors live inside their transaction; the one
advisory lock (migrations) is released in a ``finally``; LISTEN is only used on connections held
for the engine's lifetime, whose listeners are removed (UNLISTEN) before release. asyncpg still
rolls back any open transaction and drops listener callbacks on release.
"""

from __future__ import annotations

import asyncpg


class EngineConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """A pooled connection released without the session reset query."""

    def get_reset_query(self) -> str:
        return ""
