"""The in-memory account directory never goes stale: a change committed while every account is
being loaded (at start, after a lost LISTEN connection) reaches it, and is not undone by the load's
older snapshot (real PostgreSQL; the load is slowed by committing changes before it returns)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from engine.account_directory import AccountDirectory
from engine.account_listener import AccountChangeListener
from engine.account_model import Account
from engine.store.accounts import AccountStore
from tests.engine.test_ingest_e2e import KEY_HEX, provision, running_engine, settings_for

NEW_KEY = "F0E0D0C0B0A090807060504030201000"


async def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def _change_accounts(pool: asyncpg.Pool) -> None:
    """Rotate 5678's key, delete 1409, add ABD1 (each commit NOTIFYs)."""
    await pool.execute("UPDATE accounts SET key = $1 WHERE account = '5678'", NEW_KEY)
    await AccountStore(pool).delete("1409")
    await AccountStore(pool).upsert_many([Account(account="ABD1")])


def _current(directory: AccountDirectory) -> bool:
    rotated = directory.get("5678")
    return (
        rotated is not None
        and rotated.key == NEW_KEY
        and directory.get("1409") is None
        and directory.get("ABD1") is not None
    )


def _slow_load(
    monkeypatch: pytest.MonkeyPatch, during: Callable[[], Any], *, call: int = 0
) -> list[int]:
    """``AccountStore.all``'s ``call``-th call (0: the first) awaits ``during()`` after it read
    every account and before it returns them; returns the list of loads' sizes."""
    load = AccountStore.all
    sizes: list[int] = []

    async def slow_all(self: AccountStore, *args: Any, **kwargs: Any) -> list[Account]:
        accounts = await load(self, *args, **kwargs)
        if len(sizes) == call:
            await during()
        sizes.append(len(accounts))
        return accounts

    monkeypatch.setattr(AccountStore, "all", slow_all)
    return sizes


class TestStartGap:
    async def test_changes_committed_while_the_engine_loads_accounts_arrive(
        self, db_pool: asyncpg.Pool, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The start's load has read every account; before it returns, a key is rotated, an
        account deleted and one added. The running engine's directory has all three changes."""
        await provision(db_pool)
        sizes = _slow_load(monkeypatch, lambda: _change_accounts(db_pool))
        async with running_engine(settings_for(database_url)) as engine:
            await _eventually(lambda: _current(engine.directory))
            assert sizes[0] == 4
            rotated = engine.directory.get("5678")
            assert rotated is not None and rotated.key != KEY_HEX


async def _terminate_listen_backend(pool: asyncpg.Pool) -> None:
    """End the listener's backend as ``pg_terminate_backend`` by an operator would."""
    ended = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%alarmrelay_accounts%'"
    )
    assert ended == 1


class TestReloadRace:
    async def test_a_reload_does_not_undo_changes_made_while_it_ran(
        self, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The LISTEN connection is lost; the reload after the reconnect has read every account
        when a key is rotated, an account deleted and one added (and notified on the new
        connection). The directory ends with all three changes, not with the reload's snapshot."""
        await provision(db_pool)
        directory = AccountDirectory()

        async def during() -> None:
            await _change_accounts(db_pool)
            with contextlib.suppress(TimeoutError):  # let the notifications be handled, if at all
                await _eventually(lambda: _current(directory), timeout=1.0)

        sizes = _slow_load(monkeypatch, during, call=1)
        listener = AccountChangeListener(db_pool, directory, check_interval_s=0.2)
        await listener.start()
        try:
            assert directory.get("1409") is not None and directory.get("ABD1") is None
            await _terminate_listen_backend(db_pool)
            await _eventually(lambda: len(sizes) == 2)
            await asyncio.sleep(0.3)
            await _eventually(lambda: _current(directory))
            assert sizes == [4, 4]  # the reload's snapshot predates the changes
        finally:
            await listener.stop()


BAD_FORWARDING = {
    "unknown_field": "forwarding || '{\"x\": 1}'",
    "unknown_category": "jsonb_set(forwarding, '{categories}', '[\"alarms\", \"bogus\"]')",
}


def _invalid_gauge() -> float:
    return REGISTRY.get_sample_value("alarmrelay_accounts_invalid") or 0.0


class TestUnreadableRow:
    @pytest.mark.parametrize("bad", sorted(BAD_FORWARDING))
    async def test_one_unreadable_row_does_not_stop_other_changes(
        self, db_pool: asyncpg.Pool, bad: str
    ) -> None:
        """1234's forwarding document gets a field (or a category) this version does not know.
        1234 leaves the directory (unknown: no stale settings) and is counted; a later key
        rotation on 5678 still arrives; once the row is fixed, 1234 is back."""
        await provision(db_pool)
        directory = AccountDirectory()
        listener = AccountChangeListener(db_pool, directory)
        await listener.start()
        try:
            await db_pool.execute(
                f"UPDATE accounts SET forwarding = {BAD_FORWARDING[bad]} WHERE account = '1234'"
            )
            await db_pool.execute("UPDATE accounts SET key = $1 WHERE account = '5678'", NEW_KEY)
            await _eventually(lambda: getattr(directory.get("5678"), "key", None) == NEW_KEY)
            assert directory.get("1234") is None
            assert _invalid_gauge() == 1
            await db_pool.execute(
                "UPDATE accounts SET forwarding = '{}'::jsonb WHERE account = '1234'"
            )
            await _eventually(lambda: directory.get("1234") is not None)
            assert _invalid_gauge() == 0
        finally:
            await listener.stop()

    async def test_an_engine_starts_with_an_unreadable_row(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """The start's load skips the unreadable row (counted) and takes every other account."""
        await provision(db_pool)
        await db_pool.execute(
            "UPDATE accounts SET forwarding = forwarding || '{\"x\": 1}' WHERE account = '1234'"
        )
        async with running_engine(settings_for(database_url)) as engine:
            assert len(engine.directory) == 3 and engine.directory.get("1234") is None
            assert engine.directory.get("5678") is not None
            assert _invalid_gauge() == 1


class TestRenumbered:
    async def test_a_renumbered_account_keeps_its_module_serial(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """An account's DC-09 number changes (the trigger notifies the new number, then the old):
        its MQTT module is still found by serial. Forgetting the old number dropped the serial,
        and the module's signals were refused as unknown until the next full reload."""
        await AccountStore(db_pool).upsert_many(
            [Account(account="7001", module_serial="490154203237518")]
        )
        directory = AccountDirectory()
        listener = AccountChangeListener(db_pool, directory)
        await listener.start()
        try:
            await db_pool.execute("UPDATE accounts SET account = '7002' WHERE account = '7001'")
            await _eventually(
                lambda: directory.get("7001") is None and directory.get("7002") is not None
            )
            await asyncio.sleep(0.2)  # both notifications handled
            assert directory.account_for_serial("490154203237518") == "7002"
        finally:
            await listener.stop()
