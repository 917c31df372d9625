"""engine/store/accounts.py: the accounts table against the real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from engine.account_model import Account, ForwardingMode, ForwardingSettings, KeyFormat
from engine.store.accounts import AccountStore, InvalidAccountRow
from protocols.signal import Category

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def full_account(number: str = "1234", serial: str | None = "356938035643809") -> Account:
    """An account with every field away from its default."""
    return Account(
        account=number,
        module_serial=serial,
        name="Smith residence",
        key="000102030405060708090A0B0C0D0E0F",
        key_format=KeyFormat.HEX,
        timestamp_past_s=120,
        timestamp_future_s=60,
        local_time_zone="Europe/Berlin",
        supervision_interval_s=21_600,
        two_way_voice_capable=True,
        virtual=True,
        forwarding=ForwardingSettings(
            mode=ForwardingMode.PHONE_LINE_FAILURE,
            phone_line_connected=True,
            categories=frozenset({Category.ALARMS, Category.BYPASS}),
            station_account="C1234",
            primary_receiver="station-a-1",
            backup_receiver="station-a-2",
            ul_listed=True,
            two_way_voice=True,
        ),
    )


class TestUpsertAndGet:
    async def test_round_trips_every_field(self, db_pool: asyncpg.Pool) -> None:
        """An account read back equals the one written, forwarding settings included."""
        store = AccountStore(db_pool)
        account = full_account()
        assert await store.upsert_many([account]) == 1
        assert await store.get("1234") == account

    async def test_defaults_round_trip(self, db_pool: asyncpg.Pool) -> None:
        """An account with only its number comes back with the model's defaults."""
        store = AccountStore(db_pool)
        await store.upsert_many([Account(account="ABC")])
        assert await store.get("ABC") == Account(account="ABC")

    async def test_upsert_updates_by_account_number(self, db_pool: asyncpg.Pool) -> None:
        """A second upsert of the same number replaces the fields and bumps updated_at."""
        store = AccountStore(db_pool)
        await store.upsert_many([full_account()])
        before = await db_pool.fetchval("SELECT updated_at FROM accounts")
        changed = msgspec.structs.replace(full_account(), name="New name", key=None)
        await store.upsert_many([changed])
        assert await store.get("1234") == changed
        assert await store.count() == 1
        assert await db_pool.fetchval("SELECT updated_at FROM accounts") >= before

    async def test_repeated_number_in_one_call_keeps_the_last(self, db_pool: asyncpg.Pool) -> None:
        """The same account twice in one batch is one row holding the later entry."""
        store = AccountStore(db_pool)
        first, second = Account(account="77", name="first"), Account(account="77", name="second")
        assert await store.upsert_many([first, second]) == 1
        assert await store.get("77") == second

    async def test_account_numbers_are_upper_case(self, db_pool: asyncpg.Pool) -> None:
        """Lower-case input is stored upper case and found with either case."""
        store = AccountStore(db_pool)
        await store.upsert_many([Account(account="abc1")])
        found = await store.get("abc1")
        assert found is not None
        assert found.account == "ABC1"
        assert await store.get("ABC1") == found

    async def test_get_by_serial(self, db_pool: asyncpg.Pool) -> None:
        """A module serial finds its account; an unknown one finds nothing."""
        store = AccountStore(db_pool)
        await store.upsert_many([full_account(), Account(account="99", module_serial="OTHER")])
        found = await store.get_by_serial("356938035643809")
        assert found is not None
        assert found.account == "1234"
        assert await store.get_by_serial("nope") is None
        assert await store.get("nope") is None

    async def test_serial_belongs_to_one_account(self, db_pool: asyncpg.Pool) -> None:
        """Two accounts cannot share a module serial."""
        store = AccountStore(db_pool)
        await store.upsert_many([Account(account="1", module_serial="S1")])
        with pytest.raises(asyncpg.UniqueViolationError):
            await store.upsert_many([Account(account="2", module_serial="S1")])

    async def test_batches_cover_every_account(self, db_pool: asyncpg.Pool) -> None:
        """Upserting more accounts than one batch holds writes them all."""
        store = AccountStore(db_pool)
        accounts = [Account(account=f"{i:04X}", module_serial=f"SN{i}") for i in range(1050)]
        assert await store.upsert_many(accounts, batch=100) == 1050
        assert await store.count() == 1050


class TestListing:
    async def test_iter_all_streams_in_account_order(self, db_pool: asyncpg.Pool) -> None:
        """iter_all yields every account in account order, across cursor fetches."""
        store = AccountStore(db_pool)
        accounts = [Account(account=f"{i:03d}") for i in range(25)]
        await store.upsert_many(list(reversed(accounts)))
        assert [a async for a in store.iter_all(prefetch=4)] == accounts
        assert await store.all() == accounts

    async def test_an_unreadable_row_is_named_or_skipped(self, db_pool: asyncpg.Pool) -> None:
        """A forwarding document with an unknown field: get and iter_all raise InvalidAccountRow
        naming the account (not the key); with on_invalid the row is passed to it and skipped."""
        store = AccountStore(db_pool)
        await store.upsert_many([full_account("1"), full_account("2", None)])
        await db_pool.execute(
            "UPDATE accounts SET forwarding = forwarding || '{\"x\": 1}' WHERE account = '1'"
        )
        with pytest.raises(InvalidAccountRow) as raised:
            await store.get("1")
        assert raised.value.account == "1" and "x" in raised.value.reason
        assert full_account().key not in str(raised.value)
        with pytest.raises(InvalidAccountRow):
            await store.all()
        skipped: list[str] = []
        loaded = await store.all(on_invalid=lambda exc: skipped.append(exc.account))
        assert [a.account for a in loaded] == ["2"] and skipped == ["1"]

    async def test_delete(self, db_pool: asyncpg.Pool) -> None:
        """delete removes one account and says whether it existed."""
        store = AccountStore(db_pool)
        await store.upsert_many([Account(account="1"), Account(account="2")])
        assert await store.delete("1") is True
        assert await store.delete("1") is False
        assert [a.account for a in await store.all()] == ["2"]

    def test_json_export_uses_the_model_field_names(self) -> None:
        """The import/export document is a list of Account objects as msgspec encodes them."""
        account = full_account()
        document = msgspec.json.encode([account])
        assert msgspec.json.decode(document, type=list[Account]) == [account]
        assert set(msgspec.json.decode(document)[0]) == set(Account.__struct_fields__)


class TestContact:
    async def test_first_and_last_contact(self, db_pool: asyncpg.Pool) -> None:
        """The first touch sets both times; later touches move only last contact, forward only."""
        store = AccountStore(db_pool)
        await store.upsert_many([Account(account="A1"), Account(account="B2")])
        await store.touch_contact({"a1": T0})
        assert await store.contact_times("A1") == (T0, T0)
        assert await store.contact_times("B2") == (None, None)
        later = T0 + timedelta(minutes=5)
        await store.touch_contact({"A1": later, "B2": later})
        assert await store.contact_times("A1") == (T0, later)
        await store.touch_contact({"A1": T0 - timedelta(hours=1)})
        assert await store.contact_times("A1") == (T0, later)

    async def test_unknown_accounts_are_ignored(self, db_pool: asyncpg.Pool) -> None:
        """Touching an account that does not exist changes nothing and does not fail."""
        store = AccountStore(db_pool)
        await store.touch_contact({"NOPE": T0})
        assert await store.contact_times("NOPE") is None
