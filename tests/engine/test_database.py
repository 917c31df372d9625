"""engine/database.py and engine/migrate.py: server bootstrap, migrations, partition maintenance."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from engine.database import describe_server, maintain_signals, open_database
from engine.errors import UserFacingError
from engine.migrate import apply_migrations, migration_files
from engine.settings import load_settings


def url_for(database_url: str, name: str) -> str:
    head, sep, query = database_url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}{sep}{query}"


@pytest.fixture
async def empty_database_url(database_url: str) -> AsyncIterator[str]:
    """A new database with no tables at all, dropped afterwards."""
    name = f"alarmrelay_empty_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(url_for(database_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url_for(database_url, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _alter_database(url: str, setting: str, value: str) -> None:
    """``ALTER DATABASE … SET setting = value`` for the database of ``url``."""
    name = url.rsplit("/", 1)[1].split("?", maxsplit=1)[0]
    admin = await asyncpg.connect(url_for(url, "postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" SET {setting} = {value}')
    finally:
        await admin.close()


class TestMigrations:
    async def test_applies_every_file_once_in_order(self, empty_database_url: str) -> None:
        """A fresh database gets every migration in name order; a second run applies nothing."""
        conn = await asyncpg.connect(empty_database_url)
        try:
            names = [name for name, _ in migration_files()]
            assert names == sorted(names)
            assert names[0] == "0001_core.sql"
            assert await apply_migrations(conn) == names
            assert await apply_migrations(conn) == []
            recorded = await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")
            assert [r["name"] for r in recorded] == names
        finally:
            await conn.close()

    async def test_concurrent_engines_do_not_race(self, empty_database_url: str) -> None:
        """Two engines migrating one database at once: each migration is applied exactly once."""
        conns = [await asyncpg.connect(empty_database_url) for _ in range(2)]
        try:
            first, second = await asyncio.gather(*(apply_migrations(c) for c in conns))
            assert sorted(first + second) == sorted(name for name, _ in migration_files())
        finally:
            for conn in conns:
                await conn.close()

    async def test_migrations_are_not_cut_short_by_the_command_timeout(
        self, empty_database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A migration that takes longer than ``database.command_timeout_s`` (an index on a
        production table: minutes) is applied, and the engine started beside the one applying
        it waits for it: both failed with a timeout, so after an upgrade no engine started."""
        files = [*migration_files(), ("9999_slow.sql", "SELECT pg_sleep(1.5)")]
        monkeypatch.setattr("engine.migrate.migration_files", lambda: files)
        conns = [await asyncpg.connect(empty_database_url, command_timeout=0.5) for _ in range(2)]
        try:
            first, second = await asyncio.gather(*(apply_migrations(c) for c in conns))
            assert sorted(first + second) == [name for name, _ in files]
        finally:
            for conn in conns:
                await conn.close()

    async def test_changed_migration_is_refused(self, empty_database_url: str) -> None:
        """A migration whose text changed after it was applied stops the start with a clear error."""
        conn = await asyncpg.connect(empty_database_url)
        try:
            await apply_migrations(conn)
            await conn.execute(
                "UPDATE schema_migrations SET checksum = 'old' WHERE name = '0001_core.sql'"
            )
            with pytest.raises(UserFacingError, match=r"migration 0001_core\.sql differs"):
                await apply_migrations(conn)
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", 0x616C61726D)
        finally:
            await conn.close()

    async def test_core_schema_is_present(self, db_pool: asyncpg.Pool) -> None:
        """0001 creates accounts, the partitioned signals table, its default partition and dedupe."""
        kinds = {
            r["relname"]: r["relkind"]
            for r in await db_pool.fetch(
                "SELECT relname, relkind::text AS relkind FROM pg_class WHERE relname = ANY($1::text[])",
                ["accounts", "signals", "signals_default", "signal_dedupe"],
            )
        }
        assert kinds == {
            "accounts": "r",
            "signals": "p",
            "signals_default": "r",
            "signal_dedupe": "r",
        }


class TestOpenDatabase:
    async def test_with_url_connects_and_migrates(self, database_url: str, tmp_path: Path) -> None:
        """With database.url set, the pool reaches that server and the schema is there."""
        settings = load_settings(
            None, {"ALARMRELAY_DATABASE_URL": database_url, "ALARMRELAY_DATA_DIR": str(tmp_path)}
        )
        async with open_database(settings) as db:
            assert db.embedded is None
            assert await db.pool.fetchval("SELECT count(*) FROM schema_migrations") >= 1
        assert not (tmp_path / "postgres").exists()

    @pytest.mark.parametrize(
        ("configured", "used", "warned"),
        [("off", "on", True), ("local", "local", False), ("on", "on", False)],
    )
    async def test_signals_are_committed_with_a_wal_flush_whatever_the_database_says(
        self, empty_database_url: str, tmp_path: Path, configured: str, used: str, warned: bool
    ) -> None:
        """``synchronous_commit = off`` set for the database (or server, or role) would let an
        ACKed signal be lost in a PostgreSQL crash: the engine's pool overrides it (logged), and
        leaves every value that flushes locally as it is. Outcomes keep their relaxed pool."""
        await _alter_database(empty_database_url, "synchronous_commit", configured)
        settings = load_settings(
            None,
            {"ALARMRELAY_DATABASE_URL": empty_database_url, "ALARMRELAY_DATA_DIR": str(tmp_path)},
        )
        with capture_logs() as logs:
            async with open_database(settings) as db:
                async with db.pool.acquire() as a, db.pool.acquire() as b:
                    values = {await c.fetchval("SHOW synchronous_commit") for c in (a, b)}
                assert db.relaxed_pool is not None
                relaxed = await db.relaxed_pool.fetchval("SHOW synchronous_commit")
        assert values == {used}
        assert relaxed == "off"
        overridden = [e for e in logs if e["event"] == "synchronous_commit_overridden"]
        assert bool(overridden) is warned
        if warned:
            assert (overridden[0]["configured"], overridden[0]["used"]) == ("off", "on")

    async def test_the_engine_works_in_read_committed_whatever_the_default(
        self, empty_database_url: str, tmp_path: Path
    ) -> None:
        """A database whose default isolation is serializable: the engine's connections (both
        pools) still run READ COMMITTED, which its statements are written for."""
        await _alter_database(empty_database_url, "default_transaction_isolation", "serializable")
        settings = load_settings(
            None,
            {"ALARMRELAY_DATABASE_URL": empty_database_url, "ALARMRELAY_DATA_DIR": str(tmp_path)},
        )
        other = await asyncpg.connect(empty_database_url)
        try:
            assert await other.fetchval("SHOW default_transaction_isolation") == "serializable"
        finally:
            await other.close()
        async with open_database(settings) as db:
            assert db.relaxed_pool is not None
            levels = {
                await pool.fetchval("SHOW transaction_isolation")
                for pool in (db.pool, db.relaxed_pool)
            }
        assert levels == {"read committed"}

    async def test_unreachable_server_is_a_clear_error_without_password(self) -> None:
        """A server that does not answer gives one line with host:port and no password."""
        settings = load_settings(
            None,
            {
                "ALARMRELAY_DATABASE_URL": "postgresql://ar:topsecret@127.0.0.1:1/ar",
                "ALARMRELAY_DATABASE__CONNECT_TIMEOUT_S": "2",
            },
        )
        with pytest.raises(UserFacingError) as info:
            async with open_database(settings) as unreachable:
                raise AssertionError(f"opened an unreachable database: {unreachable.url}")
        message = str(info.value)
        assert message.startswith("cannot reach PostgreSQL at 127.0.0.1:1: ")
        assert "topsecret" not in message

    async def test_embedded_server_starts_and_stops(self, tmp_path: Path) -> None:
        """With no URL, PostgreSQL runs under <data_dir>/postgres while open and stops on exit."""
        settings = load_settings(None, {"ALARMRELAY_DATA_DIR": str(tmp_path)})
        async with open_database(settings) as db:
            assert db.embedded is not None
            pid = db.embedded.get_pid()
            assert await db.pool.fetchval("SELECT current_database()") == "alarmrelay"
            assert await db.pool.fetchval("SELECT count(*) FROM accounts") == 0
        assert (tmp_path / "postgres" / "PG_VERSION").exists()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    async def test_embedded_server_stops_despite_a_killed_predecessor(self, tmp_path: Path) -> None:
        """A pid left behind by a process killed with -9 does not keep the server running."""
        settings = load_settings(None, {"ALARMRELAY_DATA_DIR": str(tmp_path)})
        async with open_database(settings) as first:
            assert first.embedded is not None
        dead = psutil.Popen(["true"])
        dead.wait()
        (tmp_path / "postgres" / ".handle_pids.json").write_text(json.dumps([dead.pid]))
        async with open_database(settings) as db:
            assert db.embedded is not None
            pid = db.embedded.get_pid()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    def test_describe_server_hides_credentials(self) -> None:
        """Errors name host:port (or the socket directory), never user or password."""
        assert describe_server("postgresql://u:pw@db.example:6543/x") == "db.example:6543"
        assert describe_server("postgresql://u:pw@db.example/x") == "db.example:5432"
        assert describe_server("postgresql://postgres:@/ar?host=/run/pg") == "/run/pg"

    def test_describe_server_takes_several_hosts(self) -> None:
        """A URL of several hosts, the last without its port (which the driver takes), made
        ``migrate`` and ``serve`` fail as "unexpected ValueError … a bug" even with the database
        up: the description (logged at start) read the port of "h1:5432,h2". Never raises."""
        url = "postgresql://u:pw@h1.example:5432,h2.example/x"
        assert describe_server(url) == "h1.example:5432,h2.example"
        assert describe_server("postgresql://u:pw@h1,h2:5433/x") == "h1,h2:5433"


class TestPartitions:
    async def test_partitions_exist_around_today(self, db_pool: asyncpg.Pool) -> None:
        """Daily partitions cover yesterday to three days ahead (UTC)."""
        today = datetime.now(UTC).date()
        names = {
            r["relname"]
            for r in await db_pool.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'signals'::regclass"
            )
        }
        for offset in range(-1, 4):
            day = today + timedelta(days=offset)
            assert f"signals_{day:%Y%m%d}" in names

    async def test_rows_outside_partitions_land_in_default(self, db_pool: asyncpg.Pool) -> None:
        """A signal far from today is kept (default partition), and ensuring partitions still works."""
        old = datetime(2001, 2, 3, 4, 5, tzinfo=UTC)
        await db_pool.execute(
            "INSERT INTO signals (received_at, account, transport, kind) VALUES ($1, 'A1', 'tcp', 'event')",
            old,
        )
        where = await db_pool.fetchval(
            "SELECT tableoid::regclass::text FROM signals WHERE received_at = $1", old
        )
        assert where == "signals_default"
        assert await db_pool.fetchval("SELECT ensure_signal_partitions(5)") >= 0

    async def test_retention_drops_old_partitions_and_default_rows(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """Partitions and default-partition rows older than the retention are removed."""
        await db_pool.execute(
            "CREATE TABLE IF NOT EXISTS signals_20000101 PARTITION OF signals "
            "FOR VALUES FROM ('2000-01-01 00:00+00') TO ('2000-01-02 00:00+00')"
        )
        await db_pool.execute(
            "INSERT INTO signals (received_at, account, transport, kind) VALUES "
            "('2000-01-01 12:00+00', 'A1', 'tcp', 'event'), ('2001-01-01 12:00+00', 'A1', 'tcp', 'event'), "
            "(now(), 'A1', 'tcp', 'event')"
        )
        dropped = await db_pool.fetchval("SELECT drop_signal_partitions_before(90)")
        assert dropped >= 1
        assert await db_pool.fetchval("SELECT to_regclass('signals_20000101')") is None
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == 1

    async def test_maintenance_forgets_expired_dedupe_keys(self, db_pool: asyncpg.Pool) -> None:
        """The maintenance run deletes dedupe keys whose window is over, and keeps live ones."""
        await db_pool.execute(
            "INSERT INTO signal_dedupe VALUES ('old', 1, now() - interval '2 hours', now() - interval '1 hour'), "
            "('live', 2, now(), now() + interval '1 hour')"
        )
        async with db_pool.acquire() as conn:
            await maintain_signals(conn, load_settings(None, {}))
        keys = [
            r["dedupe_key"] for r in await db_pool.fetch("SELECT dedupe_key FROM signal_dedupe")
        ]
        assert keys == ["live"]


class TestMaintenanceBesideALongReader:
    async def test_partition_changes_give_way_and_commits_go_on(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """A long transaction has read the signals table (a backup, a history query). The
        maintenance run needs new partitions: it gives up after PARTITION_LOCK_TIMEOUT instead
        of waiting, so a signal committed meanwhile is not queued behind it; once the reader is
        gone the next run creates them."""
        settings = load_settings(None, {"ALARMRELAY_RETENTION__PARTITIONS_AHEAD_DAYS": "12"})
        ahead = "signals_" + (datetime.now(UTC) + timedelta(days=12)).strftime("%Y%m%d")
        await db_pool.execute(f"DROP TABLE IF EXISTS {ahead}")
        deferred = (
            REGISTRY.get_sample_value(
                "alarmrelay_signal_maintenance_deferred_total", {"step": "create_partitions"}
            )
            or 0.0
        )
        async with db_pool.acquire() as reader, db_pool.acquire() as maintainer:
            tx = reader.transaction()
            await tx.start()
            await reader.fetchval("SELECT count(*) FROM signals")
            try:
                async with asyncio.timeout(5):
                    run = asyncio.create_task(maintain_signals(maintainer, settings))
                    await asyncio.sleep(0.1)  # the run now waits for the reader's lock
                    await db_pool.execute(
                        "INSERT INTO signals (received_at, account, transport, kind) "
                        "VALUES (now(), 'A1', 'tcp', 'event')"
                    )
                    await run
            finally:
                await tx.rollback()
            assert await db_pool.fetchval("SELECT to_regclass($1)", ahead) is None
            assert (
                REGISTRY.get_sample_value(
                    "alarmrelay_signal_maintenance_deferred_total", {"step": "create_partitions"}
                )
                == deferred + 1
            )
            await maintain_signals(maintainer, settings)
        assert await db_pool.fetchval("SELECT to_regclass($1)::text", ahead) == ahead
        assert await db_pool.fetchval("SELECT count(*) FROM signals") == 1


class TestMigrateCommand:
    async def test_migrate_reports_applied_then_up_to_date(self, empty_database_url: str) -> None:
        """`alarmrelay migrate` applies the migrations to a new database, then has nothing to do."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALARMRELAY_")}
        env["ALARMRELAY_DATABASE_URL"] = empty_database_url
        outputs = []
        for _ in range(2):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "engine",
                "migrate",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            outputs.append(out.decode().strip())
        assert outputs[0].startswith(f"applied {len(migration_files())} migrations: 0001_core.sql")
        assert outputs[1] == "database schema is up to date"

    async def test_migrate_with_unreachable_server_fails_in_one_line(self) -> None:
        """An unreachable server: exit status 2 and one line on stderr, no traceback."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALARMRELAY_")}
        env["ALARMRELAY_DATABASE_URL"] = "postgresql://ar:pw@127.0.0.1:1/ar"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine",
            "migrate",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        _, err = await proc.communicate()
        assert proc.returncode == 2
        assert err.decode().startswith(
            "alarmrelay: error: cannot reach PostgreSQL at 127.0.0.1:1: "
        )
        assert "Traceback" not in err.decode()


class TestEnginePool:
    async def test_release_skips_the_reset_query_but_ends_transactions(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The engine's pool sends no reset query on release (one round trip less per statement);
        a transaction left open is still rolled back by asyncpg."""
        from engine.database import connect_pool

        pool = await connect_pool(database_url, min_size=1, max_size=1)
        try:
            conn = await pool.acquire()
            assert conn.get_reset_query() == ""
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("CREATE TABLE left_open (x int)")
            await pool.release(conn)
            async with pool.acquire() as again:
                assert not again.is_in_transaction()
                assert await again.fetchval("SELECT to_regclass('left_open')") is None
        finally:
            await pool.close()


def test_embedded_import_is_quiet_without_a_login_session() -> None:
    """Services and CI have no XDG_RUNTIME_DIR: the embedded server's import must not warn."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "from engine.database import _embedded_get_server; print(_embedded_get_server().__name__)",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("get_server\n", "")
