"""Keeps the in-memory account directory in step with the ``accounts`` table.

A trigger (migration 0050) sends ``NOTIFY alarmrelay_accounts, '<account>'`` on every insert,
update and delete; this listener re-reads that account. When the listening connection is lost
(:class:`engine.pg_listener.ChannelListener` reconnects), or a change cannot be fetched, it
reloads everything, so an import or API change is never missed for long. A row that makes no
Account (:class:`~engine.store.accounts.InvalidAccountRow`) is logged, counted and left out of
the directory (unknown) rather than kept with older settings; the others are not held up by it.

One task makes every change to the directory, so a full load and the notifications never
overlap: those that arrive while it runs (LISTEN is in place before it starts) are applied after
it, each re-reading its row, and the load's snapshot cannot undo a newer change.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import structlog

from engine import metrics
from engine.account_directory import AccountDirectory
from engine.pg_listener import ChannelListener
from engine.store.accounts import AccountStore, InvalidAccountRow

log = structlog.get_logger("engine.account_listener")

CHANNEL = "alarmrelay_accounts"


class AccountChangeListener:
    """LISTEN on ``alarmrelay_accounts`` and apply each change to the directory."""

    def __init__(
        self, pool: asyncpg.Pool, directory: AccountDirectory, *, check_interval_s: float = 15.0
    ) -> None:
        self._store = AccountStore(pool)
        self._directory = directory
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Queue[str] = asyncio.Queue(maxsize=100_000)
        self._reload = asyncio.Event()
        self._invalid: set[str] = set()  # accounts left out: their row makes no Account
        self._listener = ChannelListener(
            pool,
            CHANNEL,
            on_notify=self._on_notify,
            on_resync=self._resync,
            check_interval_s=check_interval_s,
        )

    async def start(self) -> None:
        """LISTEN, then load every account (errors propagate: the engine is starting).

        In this order a change committed while the load runs (seconds for a million accounts) is
        notified and applied after it; each apply re-reads its row, so one the load saw is harmless.
        """
        await self._listener.start()
        try:
            await self._load_all("accounts_loaded")
        except BaseException:
            await self._listener.stop()
            raise
        self._task = asyncio.create_task(self._run(), name="account-listener")

    async def stop(self) -> None:
        """Stop listening and release the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._listener.stop()

    def _on_notify(self, payload: str) -> None:
        try:
            self._pending.put_nowait(payload)
        except asyncio.QueueFull:
            self._reload.set()  # too many changes at once: reload the whole directory

    async def _resync(self) -> None:
        """After a reconnect: have ``_run`` reload everything (changes meanwhile were not notified).

        Not here: notifications applied during the load would then be undone by its older snapshot.
        """
        self._reload.set()

    async def _load_all(self, event: str) -> None:
        self._reload.clear()  # asked again from now on: that needs a newer snapshot than this one
        invalid: set[str] = set()

        def skip(exc: InvalidAccountRow) -> None:
            _log_invalid(exc)
            invalid.add(exc.account)

        self._directory.load(await self._store.all(on_invalid=skip))
        self._invalid = invalid
        metrics.ACCOUNTS_INVALID.set(len(invalid))
        log.info(event, count=len(self._directory), invalid=len(invalid))

    async def _run(self) -> None:
        while True:
            if self._reload.is_set():
                await self._reload_all()
                continue
            get = asyncio.create_task(self._pending.get())
            reload = asyncio.create_task(self._reload.wait())
            try:
                done, _ = await asyncio.wait({get, reload}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (get, reload):
                    if not task.done():
                        task.cancel()
            if get in done:
                await self._apply(get.result())

    async def _apply(self, account: str) -> None:
        try:
            row = await self._store.get(account)
        except InvalidAccountRow as exc:  # unknown until fixed, rather than its old settings
            _log_invalid(exc)
            row = None
            self._invalid.add(account)
        except Exception as exc:  # any error: reload everything rather than miss the change
            log.warning("account_refresh_failed", account=account, error=repr(exc))
            self._reload.set()
            return
        else:
            self._invalid.discard(account)
        metrics.ACCOUNTS_INVALID.set(len(self._invalid))
        if row is None:
            self._directory.remove(account)
        else:
            self._directory.upsert(row)
        log.debug("account_refreshed", account=account, present=row is not None)

    async def _reload_all(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._load_all("accounts_reloaded")
            except Exception as exc:
                log.warning("account_reload_failed", error=repr(exc), retry_in_s=delay)
                self._reload.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            return


def _log_invalid(exc: InvalidAccountRow) -> None:
    log.error("account_row_invalid", account=exc.account, error=exc.reason, loaded=False)
