"""The in-memory account directory the listeners consult on every frame.

Loaded from PostgreSQL at start and kept fresh by LISTEN/NOTIFY (``alarmrelay_accounts``), so an
account imported or changed while the engine runs is used at once. DC-09 key material is turned
into an :class:`~protocols.dc09_crypto.AesKey` lazily and cached, so a million accounts cost only
their rows, not a cipher object each.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from datetime import tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from engine import metrics
from engine.account_model import Account
from protocols.dc09_crypto import AesKey
from protocols.dc09_receiver import AccountCrypto
from protocols.dc09_timestamp import TimestampWindow

log = structlog.get_logger("engine.account_directory")


class AccountDirectory:
    """Accounts by DC-09 account number and by module serial; implements the receiver's lookup."""

    def __init__(self, *, crypto_cache_size: int = 100_000) -> None:
        self._accounts: dict[str, Account] = {}
        self._by_serial: dict[str, str] = {}
        self._crypto: OrderedDict[str, AccountCrypto] = OrderedDict()
        self._crypto_cache_size = crypto_cache_size
        self._default_window = TimestampWindow()

    def __len__(self) -> int:
        return len(self._accounts)

    def set_default_window(self, window: TimestampWindow) -> None:
        """The engine-wide timestamp window, used when an account has no override."""
        self._default_window = window
        self._crypto.clear()

    def load(self, accounts: Iterable[Account]) -> None:
        """Replace the directory's content."""
        self._accounts.clear()
        self._by_serial.clear()
        self._crypto.clear()
        for account in accounts:
            self._put(account)
        metrics.ACCOUNTS_LOADED.set(len(self._accounts))

    def upsert(self, account: Account) -> None:
        """Add or replace one account (a module swap drops the old serial)."""
        old = self._accounts.get(account.account)
        if old is not None and old.module_serial != account.module_serial:
            self._forget_serial(old)
        self._crypto.pop(account.account, None)
        self._put(account)
        metrics.ACCOUNTS_LOADED.set(len(self._accounts))

    def remove(self, account_number: str) -> None:
        """Forget one account."""
        old = self._accounts.pop(account_number, None)
        if old is not None:
            self._forget_serial(old)
        self._crypto.pop(account_number, None)
        metrics.ACCOUNTS_LOADED.set(len(self._accounts))

    def get(self, account_number: str) -> Account | None:
        """The account, or None when unknown."""
        return self._accounts.get(account_number)

    def account_for_serial(self, serial: str) -> str | None:
        """The account number of the module with this serial/IMEI (MQTT identity)."""
        return self._by_serial.get(serial)

    def lookup(self, account: str) -> AccountCrypto | None:
        """What the DC-09 receiver needs to validate a frame from ``account`` (None: unknown)."""
        cached = self._crypto.get(account)
        if cached is not None:
            self._crypto.move_to_end(account)
            return cached
        row = self._accounts.get(account)
        if row is None:
            return None
        crypto = self._build_crypto(row)
        if crypto is None:
            return None
        self._crypto[account] = crypto
        if len(self._crypto) > self._crypto_cache_size:
            self._crypto.popitem(last=False)
        return crypto

    def _forget_serial(self, old: Account) -> None:
        """Drop ``old``'s serial, unless it is another account's now: a renumbered account (its
        new number is notified before the old one) or a serial moved to another account."""
        serial = old.module_serial
        if serial and self._by_serial.get(serial) == old.account:
            del self._by_serial[serial]

    def _put(self, account: Account) -> None:
        self._accounts[account.account] = account
        if account.module_serial:
            self._by_serial[account.module_serial] = account.account

    def _build_crypto(self, row: Account) -> AccountCrypto | None:
        key: AesKey | None = None
        if row.key:
            try:
                key = AesKey.parse(row.key, row.key_format.value)
            except ValueError as exc:
                # A broken key must not open the account to plain frames: treat the account as
                # unknown (DUH or silence) until the key is fixed, and say so in the log.
                log.error("account_key_invalid", account=row.account, error=str(exc))
                return None
        return AccountCrypto(key=key, window=self._window_for(row), local_time_zone=_zone(row))

    def _window_for(self, row: Account) -> TimestampWindow | None:
        if row.timestamp_past_s is None and row.timestamp_future_s is None:
            return None
        return TimestampWindow(
            past_s=row.timestamp_past_s
            if row.timestamp_past_s is not None
            else self._default_window.past_s,
            future_s=row.timestamp_future_s
            if row.timestamp_future_s is not None
            else self._default_window.future_s,
        )


def _zone(row: Account) -> tzinfo | None:
    if not row.local_time_zone:
        return None
    try:
        return ZoneInfo(row.local_time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory
        log.error("account_time_zone_invalid", account=row.account, zone=row.local_time_zone)
        return None
