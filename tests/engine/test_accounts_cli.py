"""engine/commands/accounts.py: ``alarmrelay accounts import/export`` (real processes, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import msgspec
import pytest

from engine.account_model import Account, ForwardingMode, ForwardingSettings, KeyFormat
from engine.commands.accounts import account_problem, parse_accounts
from engine.errors import UserFacingError
from engine.station_model import ReceiverConfig, Station
from engine.store.accounts import AccountStore
from engine.store.stations import StationStore
from protocols.signal import Category

ACCOUNTS = [
    Account(
        account="1234",
        module_serial="356938035643809",
        name="Smith residence",
        key="000102030405060708090A0B0C0D0E0F",
        forwarding=ForwardingSettings(
            mode=ForwardingMode.ALWAYS, station_account="C1234", primary_receiver="rx-1"
        ),
    ),
    Account(account="B12345", key="0123456789abcdef", key_format=KeyFormat.ASCII),
]


async def cli(database_url: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ``python -m engine <args>`` against the test database; (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALARMRELAY_")}
    env["ALARMRELAY_DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def problem_of(document: object) -> str:
    with pytest.raises(UserFacingError) as info:
        parse_accounts(msgspec.json.encode(document), "accounts.json")
    return str(info.value)


class TestImportExportCommands:
    async def test_import_then_export_round_trips(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """Imported accounts are stored as given, and export prints exactly them as JSON."""
        source = tmp_path / "accounts.json"
        source.write_bytes(msgspec.json.encode(ACCOUNTS))
        status, out, err = await cli(database_url, "accounts", "import", str(source))
        assert (status, out.strip()) == (0, "imported 2 accounts"), err
        assert await AccountStore(db_pool).all() == ACCOUNTS

        status, out, err = await cli(database_url, "accounts", "export")
        assert status == 0, err
        assert msgspec.json.decode(out, type=list[Account]) == ACCOUNTS

    async def test_export_to_a_file(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """--output writes the JSON list to the file and says so on stderr; the file holds
        the modules' AES keys, so only its owner may read it (it was 0644 under the usual
        umask)."""
        await AccountStore(db_pool).upsert_many(ACCOUNTS)
        target = tmp_path / "out.json"
        status, out, err = await cli(database_url, "accounts", "export", "--output", str(target))
        assert (status, out) == (0, "")
        assert f"exported 2 accounts to {target}" in err
        assert msgspec.json.decode(target.read_bytes(), type=list[Account]) == ACCOUNTS
        assert target.stat().st_mode & 0o777 == 0o600

    async def test_a_failed_export_leaves_the_file_as_it_was(self, tmp_path: Path) -> None:
        """--output onto last night's export with the database out of reach: the error, and
        the old file untouched (it was emptied before the database was asked)."""
        target = tmp_path / "accounts.json"
        target.write_bytes(msgspec.json.encode(ACCOUNTS))
        unreachable = "postgresql://postgres@127.0.0.1:1/none"
        status, out, err = await cli(unreachable, "accounts", "export", "--output", str(target))
        assert (status, out) == (2, "")
        assert "cannot reach PostgreSQL at 127.0.0.1:1" in err
        assert msgspec.json.decode(target.read_bytes(), type=list[Account]) == ACCOUNTS
        assert os.listdir(tmp_path) == ["accounts.json"]  # no file left over

    async def test_an_account_row_this_version_cannot_read_is_named(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """A row with a category this version does not know (a newer engine's, in a rolling
        upgrade) stopped the export as "unexpected InvalidAccountRow ... (a bug: please report
        it)", status 1; it is an error the operator can act on, naming the account."""
        await AccountStore(db_pool).upsert_many(ACCOUNTS)
        await db_pool.execute(
            "UPDATE accounts SET forwarding = jsonb_set(forwarding, '{categories}', "
            """'["alarms", "future_category"]') WHERE account = '1234'"""
        )
        status, _, err = await cli(database_url, "accounts", "export")
        assert status == 2, err
        [line] = err.strip().splitlines()
        assert line.startswith("alarmrelay: error: account 1234 cannot be exported: forwarding: ")
        assert "future_category" in line
        assert line.endswith(
            "(a row this version cannot read: a manual edit, or a newer engine's; fix the row, "
            "or export with the newer engine)"
        )

    async def test_export_of_no_accounts_is_an_empty_list(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """With no accounts, export prints []."""
        status, out, _ = await cli(database_url, "accounts", "export")
        assert status == 0
        assert msgspec.json.decode(out) == []

    async def test_import_from_stdin_updates_existing(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """'-' reads standard input; an existing account number is updated, not duplicated."""
        await AccountStore(db_pool).upsert_many([Account(account="1234", name="old")])
        status, out, err = await cli(
            database_url, "accounts", "import", "-", stdin=msgspec.json.encode(ACCOUNTS[:1])
        )
        assert (status, out.strip()) == (0, "imported 1 accounts"), err
        assert await AccountStore(db_pool).all() == ACCOUNTS[:1]

    async def test_receivers_no_station_has_are_a_warning(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Accounts may be imported before their stations; the receivers not known yet are named
        on stderr (their signals wait in the outbox), and the import goes ahead."""
        await StationStore(db_pool).upsert(
            [
                Station(
                    name="central",
                    receivers=(ReceiverConfig(name="rx-1", host="127.0.0.1", port=9),),
                )
            ]
        )
        accounts = [
            Account(account="A1", forwarding=ForwardingSettings(primary_receiver="rx-1", backup_receiver="rx-2")),
            Account(account="A2", forwarding=ForwardingSettings(primary_receiver="rx-2")),
            Account(account="A3", forwarding=ForwardingSettings(primary_receiver="rx-9")),
        ]  # fmt: skip
        status, out, err = await cli(
            database_url, "accounts", "import", "-", stdin=msgspec.json.encode(accounts)
        )
        assert (status, out.strip()) == (0, "imported 3 accounts"), err
        assert err.strip() == (
            "alarmrelay: warning: no station has the receivers 'rx-2' (2 accounts); 'rx-9' "
            "(1 accounts): until they are added (alarmrelay stations import, or the admin API), "
            "an account delivers through its other receiver, or keeps its signals in the outbox "
            "if it has none"
        )
        assert len(await AccountStore(db_pool).all()) == 3

    async def test_a_phone_receiver_is_not_called_missing(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """An account forwarding to a phone receiver was warned that "no station has" it, and to
        add it: it is there, and cannot be delivered to (no telephony gateway); said so."""
        phone = ReceiverConfig(name="ph", kind="phone", phone_number="+15550100")
        await StationStore(db_pool).upsert([Station(name="central", receivers=(phone,))])
        accounts = [Account(account="A1", forwarding=ForwardingSettings(primary_receiver="ph"))]
        status, out, err = await cli(
            database_url, "accounts", "import", "-", stdin=msgspec.json.encode(accounts)
        )
        assert (status, out.strip()) == (0, "imported 1 accounts"), err
        assert err.strip() == (
            "alarmrelay: warning: the receivers 'ph' (1 accounts) are phone receivers: alarmrelay "
            "cannot deliver to them without a telephony gateway, so an account delivers through "
            "its other receiver, or keeps its signals in the outbox if it has none"
        )

    async def test_invalid_file_writes_nothing(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """A bad entry anywhere stops the import before any account is written (exit 2)."""
        source = tmp_path / "accounts.json"
        document = [
            msgspec.to_builtins(ACCOUNTS[0]),
            {"account": "99", "supervision_interval_s": "1h"},
        ]
        source.write_bytes(msgspec.json.encode(document))
        status, out, err = await cli(database_url, "accounts", "import", str(source))
        assert status == 2
        assert out == ""
        assert err.strip() == (
            f"alarmrelay: error: {source}: entry 1: supervision_interval_s: expected int, got str"
        )
        assert await AccountStore(db_pool).count() == 0

    async def test_serial_of_another_account_is_a_clear_error(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """A module serial already held by a different account is refused in one line."""
        await AccountStore(db_pool).upsert_many(
            [Account(account="777", module_serial="356938035643809")]
        )
        source = tmp_path / "accounts.json"
        source.write_bytes(msgspec.json.encode(ACCOUNTS[:1]))
        status, _, err = await cli(database_url, "accounts", "import", str(source))
        assert status == 2
        assert err.startswith("alarmrelay: error: a module serial in the file already belongs")
        assert "Traceback" not in err

    async def test_a_large_file_the_database_refuses_writes_nothing(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """Past the first 5,000 accounts (one batch), a serial the database refuses still
        leaves every account as it was: the import is one transaction, as documented."""
        await AccountStore(db_pool).upsert_many([Account(account="777", module_serial="SER-777")])
        accounts = [
            Account(account=f"{n:X}", module_serial=f"SER-{n:X}") for n in range(4096, 9097)
        ]
        accounts[-1] = Account(account="FFFF", module_serial="SER-777")
        status, out, err = await cli(
            database_url, "accounts", "import", "-", stdin=msgspec.json.encode(accounts)
        )
        assert (status, out) == (2, ""), err
        assert "a module serial in the file already belongs to another account" in err
        assert await AccountStore(db_pool).count() == 1

    async def test_two_way_voice_needs_a_voice_receiver(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """Two-way voice on a receiver without it (or an unknown one) is refused, naming the
        account and what is missing; nothing is written. On a voice receiver it is accepted."""
        await StationStore(db_pool).upsert(
            [
                Station(
                    name="s",
                    receivers=(
                        ReceiverConfig(name="plain", host="127.0.0.1", port=1),
                        ReceiverConfig(name="voice", host="127.0.0.1", port=2, two_way_voice=True),
                    ),
                )
            ]
        )

        def account(number: str, receiver: str) -> Account:
            return Account(
                account=number,
                two_way_voice_capable=True,
                forwarding=ForwardingSettings(
                    mode=ForwardingMode.ALWAYS,
                    station_account="1234",
                    primary_receiver=receiver,
                    two_way_voice=True,
                ),
            )

        source = tmp_path / "accounts.json"
        source.write_bytes(msgspec.json.encode([account("A1", "plain"), account("A2", "ghost")]))
        status, _, err = await cli(database_url, "accounts", "import", str(source))
        assert status == 2, err
        assert "account A1: forwarding.two_way_voice: the receiver plain does not support" in err
        assert "account A2: forwarding.two_way_voice: no receiver 'ghost' is registered" in err
        assert await AccountStore(db_pool).count() == 0
        source.write_bytes(msgspec.json.encode([account("A3", "voice")]))
        status, _, err = await cli(database_url, "accounts", "import", str(source))
        assert status == 0, err
        stored = await AccountStore(db_pool).get("A3")
        assert stored is not None and stored.forwarding.two_way_voice is True

    async def test_missing_file(self, database_url: str, tmp_path: Path) -> None:
        """A file that does not exist is named in the error."""
        status, _, err = await cli(database_url, "accounts", "import", str(tmp_path / "nope.json"))
        assert status == 2
        assert f"cannot read {tmp_path / 'nope.json'}" in err


class TestParseAccounts:
    def test_valid_document(self) -> None:
        """A JSON list of account objects decodes to Accounts."""
        assert parse_accounts(msgspec.json.encode(ACCOUNTS), "a.json") == ACCOUNTS

    def test_a_byte_order_mark_is_not_an_error(self) -> None:
        """A file saved by a Windows editor starts with a UTF-8 byte order mark: it was refused
        as "invalid character (byte 0)", which the person holding the file cannot see."""
        document = b"\xef\xbb\xbf" + msgspec.json.encode(ACCOUNTS)
        assert parse_accounts(document, "a.json") == ACCOUNTS

    def test_not_json(self) -> None:
        """Broken JSON is reported with the source."""
        with pytest.raises(UserFacingError, match=r"^a\.json: invalid JSON: "):
            parse_accounts(b"[{", "a.json")

    def test_nested_too_deeply(self) -> None:
        """100,000 "[" is a clear error, not a RecursionError reported as a bug."""
        with pytest.raises(UserFacingError) as info:
            parse_accounts(b"[" * 100_000, "a.json")
        assert str(info.value) == "a.json: invalid JSON: nested too deeply"

    async def test_nested_too_deeply_on_the_command_line(
        self, database_url: str, tmp_path: Path
    ) -> None:
        """The import command prints that one line, exit 2."""
        source = tmp_path / "accounts.json"
        source.write_bytes(b"[" * 100_000)
        status, _, err = await cli(database_url, "accounts", "import", str(source))
        assert (status, err.strip()) == (
            2,
            f"alarmrelay: error: {source}: invalid JSON: nested too deeply",
        )

    def test_not_a_list(self) -> None:
        """The document must be a list."""
        assert problem_of({"account": "1"}) == "accounts.json: expected a JSON list of accounts"

    def test_unknown_field_names_entry_and_field(self) -> None:
        """A misspelt field is refused with the entry index."""
        assert problem_of([{"account": "1"}, {"account": "2", "nmae": "x"}]) == (
            "accounts.json: entry 1: nmae: unknown field"
        )

    def test_missing_account_number(self) -> None:
        """``account`` is the one required field."""
        assert problem_of([{"name": "x"}]) == (
            "accounts.json: entry 0: object missing required field account"
        )

    def test_nested_field_error_has_its_path(self) -> None:
        """Errors inside forwarding name the nested field."""
        message = problem_of([{"account": "1", "forwarding": {"mode": "sometimes"}}])
        assert message.startswith("accounts.json: entry 0: forwarding.mode: invalid enum value")

    def test_repeated_account_number(self) -> None:
        """The same account twice (any case) is refused, naming both entries."""
        assert problem_of([{"account": "ab"}, {"account": "AB"}]) == (
            "accounts.json: entry 1: account AB is also entry 0"
        )

    def test_station_account_is_stored_upper_case(self) -> None:
        """A lower-case station account is taken (hex, any case) and kept upper case, as the
        admin API keeps it: a DC-09 frame's #acct has no lower case."""
        [account] = parse_accounts(
            msgspec.json.encode([{"account": "1", "forwarding": {"station_account": "c12ab"}}]),
            "a.json",
        )
        assert account.forwarding.station_account == "C12AB"

    def test_repeated_serial(self) -> None:
        """Two accounts with one module serial are refused."""
        document = [{"account": "1", "module_serial": "S"}, {"account": "2", "module_serial": "S"}]
        assert problem_of(document) == "accounts.json: entry 1: module_serial S is also entry 0"


class TestAccountProblem:
    def test_good_account_has_no_problem(self) -> None:
        """The example accounts pass."""
        assert [account_problem(a) for a in ACCOUNTS] == [None, None]

    @pytest.mark.parametrize(
        ("account", "problem"),
        [
            (Account(account="12G4"), "account: must be 1-16 hex characters"),
            (Account(account="1" * 17), "account: must be 1-16 hex characters"),
            (Account(account="1", key="00FF"), "key: hex key must be 32, 48 or 64"),
            (Account(account="1", key="short", key_format=KeyFormat.ASCII), "key: "),
            (
                Account(account="1", supervision_interval_s=60),
                "supervision_interval_s: must be at least 200",
            ),
            (Account(account="1", timestamp_past_s=-1), "timestamp_past_s: must not be negative"),
            # beyond what the column holds, the database refused the whole file without naming
            # the entry ("invalid input for query argument $9"); bounded as the settings are
            (
                Account(account="1", supervision_interval_s=99_999_999_999),
                "supervision_interval_s: must be at most 315576000 seconds (ten years)",
            ),
            (Account(account="1", name="Smith\x00"), "name: contains a NUL character"),
            (
                Account(account="1", forwarding=ForwardingSettings(backup_receiver="rx\x00")),
                "forwarding.backup_receiver: contains a NUL character",
            ),
            (
                Account(account="1", timestamp_future_s=315_576_001),
                "timestamp_future_s: must be at most 315576000 seconds (ten years)",
            ),
            (
                Account(account="1", local_time_zone="Mars/Olympus"),
                "local_time_zone: unknown time zone",
            ),
            (
                Account(account="1", local_time_zone="America"),  # a directory of tzdata
                "local_time_zone: unknown time zone 'America'",
            ),
            (
                Account(
                    account="1",
                    forwarding=ForwardingSettings(
                        ul_listed=True, categories=frozenset({Category.PANICS})
                    ),
                ),
                "forwarding.categories: a UL-listed account must forward alarms, panel_not_responding",
            ),
            (
                Account(account="1", forwarding=ForwardingSettings(two_way_voice=True)),
                "forwarding.two_way_voice: the module is not two-way-voice capable",
            ),
            (
                Account(account="1", forwarding=ForwardingSettings(station_account="12-34")),
                "forwarding.station_account: must be 3-16 hex characters",
            ),
            (
                Account(account="1", forwarding=ForwardingSettings(station_account="12")),
                "forwarding.station_account: must be 3-16 hex characters",
            ),
            (
                Account(account="1", forwarding=ForwardingSettings(station_account="1" * 17)),
                "forwarding.station_account: must be 3-16 hex characters",
            ),
        ],
    )
    def test_problems_name_the_field(self, account: Account, problem: str) -> None:
        """Each rule's failure names the field it concerns."""
        found = account_problem(account)
        assert found is not None
        assert found.startswith(problem)


class TestStationsCommands:
    async def test_import_then_export_round_trips_as_pure_json(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """``stations import`` reports one line; ``stations export``'s stdout is the JSON list
        alone (the startup log lines go to stderr), so ``> file`` gives a file import takes."""
        stations = [
            Station(
                name="Central",
                receivers=(
                    ReceiverConfig(name="rx-1", host="127.0.0.1", port=9100),
                    ReceiverConfig(name="rx-2", host="127.0.0.1", port=9101, two_way_voice=True),
                ),
            )
        ]
        source = tmp_path / "stations.json"
        source.write_bytes(msgspec.json.encode(stations))
        status, out, err = await cli(database_url, "stations", "import", str(source))
        assert (status, out.strip()) == (0, "imported 1 stations"), err
        assert await StationStore(db_pool).all() == stations

        status, out, err = await cli(database_url, "stations", "export")
        assert status == 0, err
        assert msgspec.json.decode(out, type=list[Station]) == stations
        assert "Traceback" not in err

    async def test_a_phone_receiver_warning_is_prefixed_like_every_other(
        self, database_url: str, tmp_path: Path
    ) -> None:
        """The phone-receiver warning of ``stations import`` said "warning: …" where every other
        line on stderr says "alarmrelay: warning: …" (a script grepping for it missed it)."""
        phone = ReceiverConfig(name="ph", kind="phone", phone_number="+15550100")
        source = tmp_path / "stations.json"
        source.write_bytes(msgspec.json.encode([Station(name="C", receivers=(phone,))]))
        status, _, err = await cli(database_url, "stations", "import", str(source))
        assert status == 0, err
        warned = [line for line in err.splitlines() if "telephony gateway" in line]
        assert len(warned) == 1 and warned[0].startswith("alarmrelay: warning: "), err

    async def test_a_receiver_of_another_station_is_not_moved_silently(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """A file giving station B a receiver named like station A's (a copied entry) moved
        A's receiver, and the alarms of every account on it, to B without a word; the admin
        API refuses that. It is refused, nothing written, unless --move-receivers."""
        rx = ReceiverConfig(name="rx-1", host="127.0.0.1", port=9100)
        await StationStore(db_pool).upsert([Station(name="A", receivers=(rx,))])
        source = tmp_path / "stations.json"
        source.write_bytes(msgspec.json.encode([Station(name="B", receivers=(rx,))]))
        status, out, err = await cli(database_url, "stations", "import", str(source))
        assert (status, out) == (2, "")
        assert "receivers of another station would move: 'rx-1' ('A' → 'B')" in err
        assert await db_pool.fetchval("SELECT station FROM receivers") == "A"
        assert await db_pool.fetchval("SELECT count(*) FROM stations") == 1
        status, out, err = await cli(
            database_url, "stations", "import", str(source), "--move-receivers"
        )
        assert status == 0, err
        assert await db_pool.fetchval("SELECT station FROM receivers") == "B"

    @pytest.mark.parametrize(
        ("document", "problem"),
        [
            ([{"name": "  "}], "station name '  ': must be 1-100 characters, not blank"),
            (
                [{"name": "C" * 101}],
                f"station name {'C' * 101!r}: must be 1-100 characters, not blank",
            ),
            (
                [{"name": "C", "receivers": [{"name": "", "host": "127.0.0.1", "port": 9}]}],
                "station 'C', receiver name '': must be 1-100 characters, not blank",
            ),
            ([{"name": "C"}, {"name": "C", "own": True}], "station name 'C' appears twice"),
        ],
    )
    async def test_names_the_admin_api_refuses_are_refused(
        self,
        db_pool: asyncpg.Pool,
        database_url: str,
        tmp_path: Path,
        document: object,
        problem: str,
    ) -> None:
        """Station and receiver names as the admin API takes them (1-100 characters, not blank;
        a station once per file): a blank name was stored, a station the API cannot address,
        and a station given twice was imported twice, the second replacing the first."""
        source = tmp_path / "stations.json"
        source.write_bytes(msgspec.json.encode(document))
        status, out, err = await cli(database_url, "stations", "import", str(source))
        assert (status, out) == (2, ""), err
        assert err.strip() == f"alarmrelay: error: {source}: {problem}"
        assert await StationStore(db_pool).all() == []
