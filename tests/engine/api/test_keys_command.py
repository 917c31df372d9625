"""``alarmrelay keys create``: bootstraps an API key, printed once, stored hashed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg

from engine.api.auth import hash_key


def _keys_create(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ALARMRELAY_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "engine", "keys", "create", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


class TestKeysCreate:
    def test_admin_key_printed_once_and_stored_hashed(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The printed key's SHA-256 is what the table holds, with the admin role."""
        result = _keys_create(database_url, "--role", "admin")
        assert result.returncode == 0, result.stderr
        key = result.stdout.splitlines()[0]
        assert key.startswith("ar_")
        # stdout is the key alone, so KEY=$(alarmrelay keys create ...) is the key (it also
        # held the note, a second line, and "Bearer $KEY" was refused); the note is on stderr
        assert result.stdout == f"{key}\n"
        assert "store it now, it is not shown again" in result.stderr

        async def stored() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(database_url)
            try:
                return await conn.fetch("SELECT key_hash, role FROM api_keys")
            finally:
                await conn.close()

        rows = asyncio.run(stored())
        assert [(r["key_hash"], r["role"]) for r in rows] == [(hash_key(key), "admin")]

    def test_dealer_key_needs_existing_dealer(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """--role dealer without --dealer, or with an unknown dealer, is a clear error."""
        missing = _keys_create(database_url, "--role", "dealer")
        assert missing.returncode != 0 and "--dealer" in missing.stderr
        unknown = _keys_create(database_url, "--role", "dealer", "--dealer", "999")
        assert unknown.returncode != 0 and "no dealer with id 999" in unknown.stderr

    def test_a_key_created_on_the_command_line_is_audited(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The API's key creation is in the audit log, the command's was not: a key made with
        database access left no trace of who or when. It is recorded as the command line's,
        with the key's first characters only; a label over 200 characters is refused."""
        result = _keys_create(database_url, "--role", "read-only", "--label", "night shift")
        assert result.returncode == 0, result.stderr
        key = result.stdout.strip()

        async def entries() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(database_url)
            try:
                return await conn.fetch(
                    "SELECT key_id, role, action, resource, after::text AS after FROM audit_log"
                )
            finally:
                await conn.close()

        [entry] = asyncio.run(entries())
        assert (entry["key_id"], entry["role"], entry["action"], entry["resource"]) == (
            None,
            "command-line",
            "create",
            "api_key",
        )
        assert "night shift" in entry["after"] and key[:8] in entry["after"]
        assert key not in entry["after"]
        long = _keys_create(database_url, "--role", "read-only", "--label", "x" * 201)
        assert long.returncode == 2
        assert "--label is at most 200 characters" in long.stderr
