"""Plain SQL migrations in ``engine/migrations/NNNN_name.sql``, applied in name order, each once.

Each file runs in its own transaction and is recorded in ``schema_migrations`` with a SHA-256 of
its text. A session advisory lock serialises engines that start against one database at the same
time. A file changed after it was applied is refused: migrations are append-only (add a new file).
"""

from __future__ import annotations

import hashlib
from importlib import resources

import asyncpg
import structlog

from engine.errors import UserFacingError

log = structlog.get_logger("engine.migrate")

_LOCK_ID = 0x616C61726D  # "alarm": pg_advisory_lock key shared by every engine
# A migration (an index built on a production table) and the wait for another engine's may take
# far longer than database.command_timeout_s, which bounds the engine's own statements: cut
# short, it failed the start of every engine after an upgrade. A day stands for "no limit".
MIGRATION_TIMEOUT_S = 86_400.0


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) for every migration, in name order."""
    folder = resources.files("engine.migrations")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


def checksum(sql: str) -> str:
    """The recorded fingerprint of a migration's text."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations on ``conn`` (not inside a transaction); returns the names applied."""
    applied_now: list[str] = []
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_ID):
        log.info("migrations_waiting", reason="another engine is applying migrations")
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID, timeout=MIGRATION_TIMEOUT_S)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), checksum text)"
        )
        await conn.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text")
        done = {
            row["name"]: row["checksum"]
            for row in await conn.fetch("SELECT name, checksum FROM schema_migrations")
        }
        for name, sql in migration_files():
            digest = checksum(sql)
            if name in done:
                if done[name] != digest:
                    raise UserFacingError(
                        f"migration {name} differs from the one applied to this database "
                        "(a development database from an older build?): recreate the database "
                        "(embedded: delete <data_dir>/postgres)"
                    )
                continue
            async with conn.transaction():
                await conn.execute(sql, timeout=MIGRATION_TIMEOUT_S)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", name, digest
                )
            applied_now.append(name)
            log.info("migration_applied", name=name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied_now
