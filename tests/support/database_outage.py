"""A one-connection pool on the test database that a test can put out of the database's reach."""

from __future__ import annotations

from types import TracebackType

import asyncpg


class DatabaseOutage:
    """``async with DatabaseOutage(url) as outage``: ``outage.pool`` has one connection to the
    database; ``cut`` ends it and refuses new ones, as a server out of reach does, until
    ``restore``."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.out_of_reach = False
        self._pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> DatabaseOutage:
        self._pool = await asyncpg.create_pool(
            self.database_url, min_size=1, max_size=1, init=self._connect
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the pool opens when the block is entered"
        return self._pool

    async def _connect(self, conn: asyncpg.Connection) -> None:
        # While "out of reach", a new connection fails as a refused one does: the pool cannot
        # quietly replace the cut connection (whether it noticed the cut first is a race).
        if self.out_of_reach:
            raise ConnectionRefusedError("test: the database is out of reach")

    async def cut(self, admin: asyncpg.Pool) -> None:
        """End the pool's connection (through ``admin``, another pool on the same database)
        and refuse the pool new ones."""
        pid = await self.pool.fetchval("SELECT pg_backend_pid()")
        self.out_of_reach = True
        await admin.execute("SELECT pg_terminate_backend($1)", pid)

    def restore(self) -> None:
        """The database answers the pool again."""
        self.out_of_reach = False
