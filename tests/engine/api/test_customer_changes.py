"""Changes to a live customer: forwarding, package, dialer delay, termination (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from engine.account_directory import AccountDirectory
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, IngestResult, SignalKind, Transport
from engine.ingest_writer import IngestWriter
from engine.store.accounts import AccountStore
from engine.supervision import SupervisionStage, SupervisionTimer
from engine.virtual_modules import VirtualModules
from tests.engine.api.catalog_setup import (
    PACKAGES,
    create_packages,
    create_station,
    imei,
    security_request,
)
from tests.engine.api.conftest import Api, problem_rules
from tests.engine.test_accounts_cli import cli
from tests.support.fake_clock import FakeClock

SERIAL = imei("49015420323751")


async def _customer(api: Api, admin: httpx.AsyncClient, **overrides: Any) -> tuple[int, str, int]:
    """(dealer id, receiver name, customer id) of a fresh security customer forwarding never."""
    await create_packages(admin)
    dealer = await api.dealer("Acme")
    receiver = await create_station(api.pool, dealer)
    created = await admin.post("/v1/customers", json=security_request(dealer, SERIAL, **overrides))
    assert created.status_code == 201, created.text
    return dealer, receiver, int(created.json()["customer"]["id"])


async def _audit_actions(admin: httpx.AsyncClient) -> list[str]:
    return [entry["action"] for entry in (await admin.get("/v1/audit")).json()["items"]]


class TestForwarding:
    async def test_turn_forwarding_on_reaches_the_engine_row(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """never → always with a receiver and station account: the accounts row and document follow."""
        _, receiver, customer = await _customer(api, admin)
        body = {"mode": "always", "primary_receiver": receiver, "station_account": "abc1"}
        changed = await admin.put(f"/v1/customers/{customer}/forwarding", json=body)
        assert changed.status_code == 200, changed.text
        assert changed.json()["document"]["forwarding"]["mode"] == "always"
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None
        assert account.forwarding.mode.value == "always"
        assert (account.forwarding.primary_receiver, account.forwarding.station_account) == (
            receiver,
            "ABC1",
        )
        assert "update_forwarding" in await _audit_actions(admin)

    async def test_deactivated_package_does_not_freeze_forwarding(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A package deactivated after the sale still counts for the customer's forwarding:
        forwarding can be changed (and two-way voice, which the package includes, turned on)."""
        _, receiver, customer = await _customer(api, admin, package={"base": "res-voice"})
        [voice] = [p for p in PACKAGES if p["code"] == "res-voice"]
        retired = await admin.put("/v1/packages/res-voice", json={**voice, "active": False})
        assert retired.status_code == 200, retired.text
        url = f"/v1/customers/{customer}/forwarding"
        body = {"mode": "always", "primary_receiver": receiver, "station_account": "1234", "two_way_voice": True}  # fmt: skip
        on = await admin.put(url, json=body)
        assert on.status_code == 200, on.text
        off = await admin.put(url, json={"mode": "never"})
        assert off.status_code == 200, off.text
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None and account.forwarding.mode.value == "never"

    async def test_validation_like_creation(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Missing station account and an unknown receiver are listed; nothing is changed."""
        _, _, customer = await _customer(api, admin)
        bad = await admin.put(
            f"/v1/customers/{customer}/forwarding",
            json={"mode": "always", "primary_receiver": "nope"},
        )
        assert bad.status_code == 422
        assert {
            ("forwarding.station_account", "required"),
            ("forwarding.primary_receiver", "exists"),
        } <= problem_rules(bad.json())
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None and account.forwarding.mode.value == "never"

    async def test_two_way_voice_needs_the_package_then_holds_it(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """2WV is refused on a package without it (the error names it); after an upgrade it can be
        set, and the package cannot be downgraded while it is on."""
        _, receiver, customer = await _customer(api, admin)
        voice = {
            "mode": "always",
            "primary_receiver": receiver,
            "station_account": "1234",
            "two_way_voice": True,
        }
        refused = await admin.put(f"/v1/customers/{customer}/forwarding", json=voice)
        assert refused.status_code == 422
        [error] = [e for e in refused.json()["errors"] if e["rule"] == "two_way_voice_eligible"]
        assert "package does not include two-way voice" in error["message"]
        assert "receiver" not in error["message"] and "module" not in error["message"]

        upgraded = await admin.put(f"/v1/customers/{customer}/package", json={"base": "res-voice"})
        assert upgraded.status_code == 200, upgraded.text
        accepted = await admin.put(f"/v1/customers/{customer}/forwarding", json=voice)
        assert accepted.status_code == 200, accepted.text
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None and account.forwarding.two_way_voice is True

        downgrade = await admin.put(f"/v1/customers/{customer}/package", json={"base": "res-basic"})
        assert downgrade.status_code == 422
        assert ("package", "two_way_voice_in_use") in problem_rules(downgrade.json())

    async def test_package_keeps_two_way_voice_while_an_account_uses_it(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """PUT of the package without two_way_voice is refused while a live account with it has
        two-way voice on (it would keep its voice sessions on a package that no longer sells
        them); once two-way voice is off there, the package can change."""
        _, receiver, customer = await _customer(api, admin, package={"base": "res-voice"})
        url = f"/v1/customers/{customer}/forwarding"
        voice = {"mode": "always", "primary_receiver": receiver, "station_account": "1234", "two_way_voice": True}  # fmt: skip
        assert (await admin.put(url, json=voice)).status_code == 200
        [package] = [p for p in PACKAGES if p["code"] == "res-voice"]
        without = {**package, "includes": []}
        refused = await admin.put("/v1/packages/res-voice", json=without)
        assert refused.status_code == 422, refused.text
        assert ("includes", "two_way_voice_in_use") in problem_rules(refused.json())
        stored = (await admin.get("/v1/packages/res-voice")).json()
        assert stored["includes"] == ["two_way_voice"]
        renamed = await admin.put("/v1/packages/res-voice", json={**package, "name": "Voice+"})
        assert renamed.status_code == 200, renamed.text
        assert (await admin.put(url, json={**voice, "two_way_voice": False})).status_code == 200
        changed = await admin.put("/v1/packages/res-voice", json=without)
        assert changed.status_code == 200, changed.text

    async def test_receiver_without_voice_named(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A receiver that does not support two-way voice is named as what is missing."""
        dealer, _, customer = await _customer(api, admin, package={"base": "res-voice"})
        plain = await create_station(api.pool, dealer, two_way_voice=False, name="NoVoice")
        refused = await admin.put(
            f"/v1/customers/{customer}/forwarding",
            json={
                "mode": "always",
                "primary_receiver": plain,
                "station_account": "1234",
                "two_way_voice": True,
            },
        )
        assert refused.status_code == 422
        [error] = [e for e in refused.json()["errors"] if e["rule"] == "two_way_voice_eligible"]
        assert error["message"].endswith("the receiver does not support two-way voice")


class TestTwoWayVoiceStaysEligible:
    """Once the option is on, nothing may take away what it needs (PRODUCT.md "Two-way voice")."""

    async def _voice_customer(self, api: Api, admin: httpx.AsyncClient) -> tuple[str, int, str]:
        """(receiver, customer id, account) of a customer with two-way voice on."""
        _, receiver, customer = await _customer(api, admin, package={"base": "res-voice"})
        voice = {"mode": "always", "primary_receiver": receiver, "station_account": "1234", "two_way_voice": True}  # fmt: skip
        on = await admin.put(f"/v1/customers/{customer}/forwarding", json=voice)
        assert on.status_code == 200, on.text
        return receiver, customer, on.json()["account"]

    async def test_module_swap_to_a_module_without_voice_refused(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Swapping in a module that is not two-way-voice capable is refused while the option is
        on; a capable one is accepted; with the option off any module is."""
        receiver, customer, _ = await self._voice_customer(api, admin)
        url = f"/v1/customers/{customer}/module-swap"
        plain = await admin.post(url, json={"serial": imei("35693803564381"), "module_type": "lte"})
        assert plain.status_code == 422
        assert ("module_type", "two_way_voice_in_use") in problem_rules(plain.json())
        capable = await admin.post(
            url, json={"serial": imei("35693803564381"), "module_type": "lte-voice"}
        )
        assert capable.status_code == 200, capable.text
        off = {"mode": "always", "primary_receiver": receiver, "station_account": "1234"}
        assert (
            await admin.put(f"/v1/customers/{customer}/forwarding", json=off)
        ).status_code == 200
        later = await admin.post(url, json={"serial": imei("49015420323752"), "module_type": "lte"})
        assert later.status_code == 200, later.text

    async def test_receiver_cannot_drop_voice_while_used(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """PUT of the receiver with two_way_voice false is refused while an account relies on it."""
        receiver, _, _ = await self._voice_customer(api, admin)
        body = {"name": receiver, "host": "127.0.0.1", "port": 9999, "receiver_number": "1", "line_prefix": "1"}  # fmt: skip
        url = f"/v1/stations/Central/receivers/{receiver}"
        refused = await admin.put(url, json=body)
        assert refused.status_code == 422, refused.text
        assert ("two_way_voice", "two_way_voice_in_use") in problem_rules(refused.json())
        assert await api.pool.fetchval("SELECT two_way_voice FROM receivers") is True
        assert (await admin.put(url, json={**body, "two_way_voice": True})).status_code == 200

    async def test_foreign_receiver_answered_alike_with_voice_in_use(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Another dealer's PUT of this receiver under its own station gets the same 409 whether
        or not accounts use the receiver with two-way voice: it learns nothing about them."""
        receiver, _, _ = await self._voice_customer(api, admin)
        other = await api.dealer("Other")
        await create_station(api.pool, other, name="S3")
        client = api.client(await api.key("dealer", other))
        body = {"name": receiver, "host": "127.0.0.1", "port": 9100, "two_way_voice": False}
        url = f"/v1/stations/S3/receivers/{receiver}"
        without = await client.put(url, json=body)
        with_voice = await client.put(url, json={**body, "two_way_voice": True})
        assert without.status_code == with_voice.status_code == 409, without.text
        assert without.json() == with_voice.json()
        assert "two-way voice" not in without.text

    async def test_import_over_a_customer_account_is_refused_unless_asked(
        self, api: Api, admin: httpx.AsyncClient, database_url: str
    ) -> None:
        """The API manages a live customer's account: an import would silently replace it with
        the file's (defaults for all it leaves out). Refused, naming the
        customer, unless --overwrite-customer-accounts."""
        _, _, customer = await _customer(api, admin)
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None and account.name is not None
        body = json.dumps([{"account": account.account}]).encode()
        status, out, err = await cli(database_url, "accounts", "import", "-", stdin=body)
        assert status == 2
        assert err.strip() == (
            f"alarmrelay: error: account {account.account} is customer {customer}'s: change them "
            "through the admin API (/v1/customers/ID), or pass --overwrite-customer-accounts to "
            "replace them anyway; nothing was imported"
        )
        assert await AccountStore(api.pool).get_by_serial(SERIAL) == account
        status, out, err = await cli(
            database_url, "accounts", "import", "-", "--overwrite-customer-accounts", stdin=body
        )
        assert (status, out.strip()) == (0, "imported 1 accounts"), err
        replaced = await AccountStore(api.pool).get(account.account)
        assert replaced is not None and replaced.name is None  # the file's account, as asked

    async def test_import_in_lower_case_over_a_customer_account_is_refused(
        self, api: Api, admin: httpx.AsyncClient, database_url: str
    ) -> None:
        """Account numbers are hex, stored upper case: the file's ``abc123`` is the customer's
        ``ABC123``, and replacing it is refused as in upper case (it went through, unchecked)."""
        system = {"serial": SERIAL, "module_type": "lte-voice", "panel_type": "wireless-panel", "dc09_account": "ABC123"}  # fmt: skip
        _, _, customer = await _customer(api, admin, system=system)
        account = await AccountStore(api.pool).get("ABC123")
        assert account is not None and account.name is not None
        body = json.dumps([{"account": "abc123"}]).encode()
        status, out, err = await cli(database_url, "accounts", "import", "-", stdin=body)
        assert (status, out) == (2, ""), err
        assert f"account ABC123 is customer {customer}'s" in err
        assert await AccountStore(api.pool).get("ABC123") == account

    async def test_imports_check_receiver_and_package(
        self, api: Api, admin: httpx.AsyncClient, database_url: str, tmp_path: Path
    ) -> None:
        """`accounts import` cannot turn two-way voice on for a customer whose package lacks it,
        and `stations import` cannot take it from a receiver an account relies on."""
        _, receiver, customer = await _customer(api, admin)
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None
        forwarding = {"mode": "always", "primary_receiver": receiver, "station_account": "1234", "two_way_voice": True}  # fmt: skip
        body = [{"account": account.account, "module_serial": SERIAL, "two_way_voice_capable": True, "forwarding": forwarding}]  # fmt: skip
        status, _, err = await cli(
            database_url,
            "accounts",
            "import",
            "-",
            "--overwrite-customer-accounts",
            stdin=json.dumps(body).encode(),
        )
        assert status != 0
        assert (
            f"account {account.account}: forwarding.two_way_voice: the customer's service package"
            in err
        )
        assert (
            await admin.put(f"/v1/customers/{customer}/package", json={"base": "res-voice"})
        ).status_code == 200
        status, out, err = await cli(
            database_url,
            "accounts",
            "import",
            "-",
            "--overwrite-customer-accounts",
            stdin=json.dumps(body).encode(),
        )
        assert status == 0, err
        stations = tmp_path / "stations.json"
        stations.write_text(json.dumps([{"name": "Central", "receivers": [{"name": receiver, "host": "127.0.0.1", "port": 9999}]}]))  # fmt: skip
        status, _, err = await cli(database_url, "stations", "import", str(stations))
        assert status != 0
        assert f"{receiver}: {account.account}" in err
        assert await api.pool.fetchval("SELECT two_way_voice FROM receivers") is True


async def _while_forwarding_waits(
    api: Api,
    admin: httpx.AsyncClient,
    customer: int,
    voice: dict[str, Any],
    other: Awaitable[httpx.Response],
) -> tuple[httpx.Response, httpx.Response]:
    """Turn two-way voice on for ``customer`` and, while that request waits to write the engine's
    account row (held here), run ``other``; both answers, the forwarding first."""
    account = (await admin.get(f"/v1/customers/{customer}")).json()["account"]
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    )
    async with api.pool.acquire() as holder:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM accounts WHERE account = $1 FOR UPDATE", account)
        forwarding = asyncio.ensure_future(
            admin.put(f"/v1/customers/{customer}/forwarding", json=voice)
        )
        for _ in range(200):
            if await api.pool.fetchval(waiting) >= 1:
                break
            await asyncio.sleep(0.02)
        second = asyncio.ensure_future(other)
        await asyncio.sleep(0.5)  # the second request runs as far as it can meanwhile
        await transaction.rollback()
    return await forwarding, await second


class TestConcurrentTwoWayVoice:
    async def test_package_losing_voice_while_it_is_turned_on(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A package edited without two_way_voice while an account's two-way voice is being
        turned on: one of the two is refused, never both written."""
        _, receiver, customer = await _customer(api, admin, package={"base": "res-voice"})
        voice = {"mode": "always", "primary_receiver": receiver, "station_account": "1234", "two_way_voice": True}  # fmt: skip
        [package] = [p for p in PACKAGES if p["code"] == "res-voice"]
        on, edit = await _while_forwarding_waits(
            api,
            admin,
            customer,
            voice,
            admin.put("/v1/packages/res-voice", json={**package, "includes": []}),
        )
        assert on.status_code == 200, on.text
        assert edit.status_code == 422, edit.text
        assert ("includes", "two_way_voice_in_use") in problem_rules(edit.json())

    async def test_receiver_losing_voice_while_it_is_turned_on(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The same with the receiver: PUT without two_way_voice while an account turns it on."""
        _, receiver, customer = await _customer(api, admin, package={"base": "res-voice"})
        voice = {"mode": "always", "primary_receiver": receiver, "station_account": "1234", "two_way_voice": True}  # fmt: skip
        body = {"name": receiver, "host": "127.0.0.1", "port": 9999, "receiver_number": "1", "line_prefix": "1", "two_way_voice": False}  # fmt: skip
        on, edit = await _while_forwarding_waits(
            api,
            admin,
            customer,
            voice,
            admin.put(f"/v1/stations/Central/receivers/{receiver}", json=body),
        )
        assert on.status_code == 200, on.text
        assert edit.status_code == 422, edit.text
        assert ("two_way_voice", "two_way_voice_in_use") in problem_rules(edit.json())


class TestPackage:
    async def test_six_hour_supervision_addon_sets_the_interval(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Adding sup6 makes the module's supervision 6 h; removing it restores 24 h."""
        _, _, customer = await _customer(api, admin)
        store = AccountStore(api.pool)
        added = await admin.put(
            f"/v1/customers/{customer}/package", json={"base": "res-basic", "addons": ["sup6"]}
        )
        assert added.status_code == 200, added.text
        assert added.json()["document"]["package"]["addons"] == ["sup6"]
        account = await store.get_by_serial(SERIAL)
        assert account is not None and account.supervision_interval_s == 6 * 3600
        removed = await admin.put(f"/v1/customers/{customer}/package", json={"base": "res-basic"})
        assert removed.status_code == 200
        account = await store.get_by_serial(SERIAL)
        assert account is not None and account.supervision_interval_s == 86_400

    async def test_an_accounts_own_interval_stays_through_a_package_change(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A UL module supervised every 200 s (its own interval, from the accounts import) keeps
        it when the customer's package changes, as it does when a package is edited (it became
        6 h or 24 h: the line-security supervision the UL listing needs was gone)."""
        _, _, customer = await _customer(api, admin)
        account = (await admin.get(f"/v1/customers/{customer}")).json()["account"]
        await api.pool.execute(
            "UPDATE accounts SET supervision_interval_s = 200 WHERE account = $1", account
        )
        url = f"/v1/customers/{customer}/package"
        interval = "SELECT supervision_interval_s FROM accounts WHERE account = $1"
        for body in ({"base": "res-basic", "addons": ["sup6"]}, {"base": "res-basic"}):
            changed = await admin.put(url, json=body)
            assert changed.status_code == 200, changed.text
            assert await api.pool.fetchval(interval, account) == 200

    async def test_the_pending_deadline_follows_the_package(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A module last heard 1 h ago: with sup6 its deadline is 6 h after that contact at once
        (not the 24 h one); without it again 24 h."""
        _, _, customer = await _customer(api, admin)
        account = (await admin.get(f"/v1/customers/{customer}")).json()["account"]
        await api.pool.execute(
            "INSERT INTO supervision (account, deadline) VALUES ($1, now() + interval '23 hours')",
            account,
        )
        left = "SELECT round(extract(epoch FROM deadline - now()) / 3600) FROM supervision"
        url = f"/v1/customers/{customer}/package"
        assert (
            await admin.put(url, json={"base": "res-basic", "addons": ["sup6"]})
        ).status_code == 200
        assert await api.pool.fetchval(left) == 5
        assert (await admin.put(url, json={"base": "res-basic"})).status_code == 200
        assert await api.pool.fetchval(left) == 23

    async def test_supervision_follows_a_changed_package(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A package that gains supervision_6h supervises its live customers' modules every 6 h
        at once (and 24 h again when it loses it); an account's own interval (UL 200 s) stays."""
        _, _, customer = await _customer(api, admin)
        account = (await admin.get(f"/v1/customers/{customer}")).json()["account"]
        other = await admin.post(
            "/v1/customers",
            json=security_request(
                await api.dealer("Other"), imei("49015420323752"), login={"login_name": "ul200"}
            ),
        )
        assert other.status_code == 201, other.text
        ul = other.json()["customer"]["account"]
        await api.pool.execute(
            "UPDATE accounts SET supervision_interval_s = 200 WHERE account = $1", ul
        )
        interval = "SELECT supervision_interval_s FROM accounts WHERE account = $1"
        [basic] = [p for p in PACKAGES if p["code"] == "res-basic"]
        six = await admin.put(
            "/v1/packages/res-basic", json={**basic, "includes": ["supervision_6h"]}
        )
        assert six.status_code == 200, six.text
        assert await api.pool.fetchval(interval, account) == 6 * 3600
        assert await api.pool.fetchval(interval, ul) == 200
        back = await admin.put("/v1/packages/res-basic", json=basic)
        assert back.status_code == 200, back.text
        assert await api.pool.fetchval(interval, account) == 86_400
        assert await api.pool.fetchval(interval, ul) == 200

    async def test_deactivated_package_the_customer_has_can_be_kept(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A customer on a base package deactivated since (no longer sold) can add an add-on and
        keep its base (it was refused as "no such active base package", forcing it off its
        plan); another customer still cannot choose that base."""
        _, _, customer = await _customer(api, admin, package={"base": "res-voice"})
        [voice] = [p for p in PACKAGES if p["code"] == "res-voice"]
        assert (await admin.put("/v1/packages/res-voice", json={**voice, "active": False})).status_code == 200  # fmt: skip
        url = f"/v1/customers/{customer}/package"
        kept = await admin.put(url, json={"base": "res-voice", "addons": ["sup6"]})
        assert kept.status_code == 200, kept.text
        assert kept.json()["document"]["package"] == {"base": "res-voice", "addons": ["sup6"], "template_id": None}  # fmt: skip
        other = await admin.post(
            "/v1/customers",
            json=security_request(
                await api.dealer("Other"),
                imei("49015420323752"),
                login={"login_name": "other"},
                package={"base": "res-voice"},
            ),
        )
        assert other.status_code == 422
        assert ("package.base", "exists") in problem_rules(other.json())

    async def test_unknown_package_refused(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A package that does not exist is a 422 naming the field."""
        _, _, customer = await _customer(api, admin)
        bad = await admin.put(f"/v1/customers/{customer}/package", json={"base": "gold"})
        assert bad.status_code == 422
        assert any(field.startswith("package") for field, _ in problem_rules(bad.json()))


class TestDialerDelay:
    async def test_set_and_clear(self, api: Api, admin: httpx.AsyncClient) -> None:
        """45 s is stored on the engine row; null goes back to the default; 601 s is refused."""
        _, _, customer = await _customer(api, admin)
        store = AccountStore(api.pool)
        assert (
            await admin.put(f"/v1/customers/{customer}/dialer-delay", json={"dialer_delay_s": 45})
        ).status_code == 200
        account = await store.get_by_serial(SERIAL)
        assert account is not None and account.dialer_delay_s == 45
        too_long = await admin.put(
            f"/v1/customers/{customer}/dialer-delay", json={"dialer_delay_s": 601}
        )
        assert too_long.status_code == 422
        assert ("dialer_delay_s", "range") in problem_rules(too_long.json())
        assert (
            await admin.put(f"/v1/customers/{customer}/dialer-delay", json={"dialer_delay_s": None})
        ).status_code == 200
        account = await store.get_by_serial(SERIAL)
        assert account is not None and account.dialer_delay_s is None
        audit = (await admin.get("/v1/audit")).json()["items"]
        delays = [e for e in audit if e["action"] == "update_dialer_delay"]
        assert {(e["before"]["dialer_delay_s"], e["after"]["dialer_delay_s"]) for e in delays} == {
            (None, 45),
            (45, None),
        }


class TestTerminate:
    async def test_terminated_module_is_gone_history_stays(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The engine row and supervision go; the customer shows terminated with billing ended;
        the serial can go to a new customer; changes and a second termination are refused."""
        dealer, _, customer = await _customer(api, admin)
        before = (await admin.get(f"/v1/customers/{customer}")).json()
        account = before["account"]
        await api.pool.execute(
            "INSERT INTO supervision (account, deadline) VALUES ($1, now() + interval '1 day')",
            account,
        )
        await api.pool.execute(
            "INSERT INTO signals (received_at, account, transport, kind, seq) "
            "VALUES (now(), $1, 'tcp', 'event', '0042')",
            account,
        )
        ended = await admin.post(
            f"/v1/customers/{customer}/terminate", json={"reason": "moved away"}
        )
        assert ended.status_code == 200, ended.text
        body = ended.json()
        assert body["status"] == "terminated"
        assert body["terminated_at"] is not None and body["billing_ended_at"] is not None
        assert await AccountStore(api.pool).get(account) is None
        assert await api.pool.fetchval("SELECT count(*) FROM supervision") == 0
        modules = (await admin.get(f"/v1/customers/{customer}/modules")).json()
        assert all(m["until"] is not None for m in modules)
        listed = (await admin.get("/v1/customers", params={"status": "terminated"})).json()
        assert [c["id"] for c in listed["items"]] == [customer]

        again = await admin.post(f"/v1/customers/{customer}/terminate", json={})
        assert again.status_code == 409
        change = await admin.put(f"/v1/customers/{customer}/package", json={"base": "res-basic"})
        assert change.status_code == 409
        assert "terminated" in change.json()["detail"]

        reuse = await admin.post(
            "/v1/customers",
            json=security_request(dealer, SERIAL, login={"login_name": "newowner"}),
        )
        assert reuse.status_code == 201, reuse.text
        successor = reuse.json()["customer"]
        assert successor["account"] == account  # the account number went to the new customer
        # each customer's history holds only the signals of its own lifetime
        old_history = (await admin.get(f"/v1/customers/{customer}/signals")).json()["items"]
        assert [s["seq"] for s in old_history] == ["0042"]
        new_history = (await admin.get(f"/v1/customers/{successor['id']}/signals")).json()
        assert new_history["items"] == []
        terminations = [
            e for e in (await admin.get("/v1/audit")).json()["items"] if e["action"] == "terminate"
        ]
        assert terminations[0]["after"]["reason"] == "moved away"

    async def test_reused_account_number_shows_nothing_of_the_new_customer(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The serial (and so the account number) of a terminated customer given to another
        dealer's new customer: the old customer shows none of the new module's contacts (it
        showed its first and last contact and can_log_in true)."""
        _, _, old = await _customer(api, admin)
        assert (await admin.post(f"/v1/customers/{old}/terminate", json={})).status_code == 200
        other = await api.dealer("Other")
        new = await admin.post(
            "/v1/customers",
            json=security_request(other, SERIAL, login={"login_name": "newcomer"}),
        )
        assert new.status_code == 201, new.text
        account = new.json()["customer"]["account"]
        await api.pool.execute(
            "UPDATE accounts SET first_contact_at = now(), last_contact_at = now() WHERE account = $1",
            account,
        )
        await api.pool.execute(
            "INSERT INTO supervision (account, deadline, last_contact_at) VALUES ($1, now() + interval '1 day', now())",
            account,
        )
        assert (await admin.get(f"/v1/customers/{new.json()['customer']['id']}")).json()[
            "can_log_in"
        ]
        for answer in (
            (await admin.get(f"/v1/customers/{old}")).json(),
            *[c for c in (await admin.get("/v1/customers")).json()["items"] if c["id"] == old],
        ):
            assert answer["status"] == "terminated"
            assert (
                answer["first_contact_at"],
                answer["last_contact_at"],
                answer["can_log_in"],
            ) == (
                None,
                None,
                False,
            )

    async def test_a_virtual_customer_terminated_during_its_check_in(
        self, api: Api, admin: httpx.AsyncClient, database_url: str
    ) -> None:
        """The termination comes while an engine is committing the virtual module's check-in
        (its schedule row claimed): both finish, the check-in first. (The termination deleted the
        account and supervision rows, then waited for the claimed schedule row, while the
        check-in's commit waited for those rows: neither could go on until a statement timeout,
        the pipeline writer stuck meanwhile.)"""
        await create_packages(admin)
        request = security_request(await api.dealer("Acme"), "", virtual=True)
        del request["system"]
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        customer = created.json()["customer"]
        account = await AccountStore(api.pool).get(customer["account"])
        assert account is not None
        directory = AccountDirectory()
        directory.load([account])
        writer = IngestWriter(
            api.pool,
            duplicate_window_s=600,
            forwarding=ForwardingStage(directory),
            supervision=SupervisionStage(directory, grace_s=0),
        )
        await writer([InboundSignal(account=account.account, transport=Transport.VIRTUAL, kind=SignalKind.CHECKIN, received_at=datetime.now(UTC))])  # fmt: skip
        claimed, go = asyncio.Event(), asyncio.Event()

        class HeldSink:
            saturated = False

            async def submit(self, signal: InboundSignal) -> IngestResult:
                claimed.set()
                await go.wait()  # the termination starts meanwhile
                [result] = await writer([signal])
                return result

        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        modules = VirtualModules(pool, HeldSink(), checkin_interval_s=60, poll_s=1.0)
        checkin = asyncio.create_task(modules.send_checkins(datetime.now(UTC)))
        terminated: asyncio.Task[httpx.Response] | None = None
        try:
            await asyncio.wait_for(claimed.wait(), 5)
            terminated = asyncio.create_task(
                admin.post(f"/v1/customers/{customer['id']}/terminate", json={})
            )
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'DELETE FROM virtual_schedule%'"
            )
            async with asyncio.timeout(5):
                while not await api.pool.fetchval(waiting):  # the claimed row holds it up
                    await asyncio.sleep(0.02)
            go.set()
            assert await asyncio.wait_for(checkin, 5) == 1
            answer = await asyncio.wait_for(terminated, 5)
            assert answer.status_code == 200, answer.text
        finally:
            await api.pool.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            for task in (checkin, terminated):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await pool.close()
        assert await api.pool.fetchval("SELECT count(*) FROM virtual_schedule") == 0
        assert await api.pool.fetchval("SELECT count(*) FROM accounts") == 0
        assert await api.pool.fetchval("SELECT count(*) FROM supervision") == 0

    async def test_reused_account_number_starts_with_a_working_phone_line(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The old customer's panel reported its phone line failed and was never restored: the
        new customer given the number starts with the line working (it inherited the failure, so
        in "only if the phone line fails" mode all its signals were forwarded)."""
        _, _, old = await _customer(api, admin)
        account = (await admin.get(f"/v1/customers/{old}")).json()["account"]
        await api.pool.execute(
            "INSERT INTO account_state (account, phone_line_failed, line_faults) "
            "VALUES ($1, true, '{1}')",
            account,
        )
        assert (await admin.post(f"/v1/customers/{old}/terminate", json={})).status_code == 200
        new = await admin.post(
            "/v1/customers",
            json=security_request(
                await api.dealer("Other"), SERIAL, login={"login_name": "newcomer"}
            ),
        )
        assert new.status_code == 201, new.text
        assert new.json()["customer"]["account"] == account
        state = await admin.get(f"/v1/customers/{new.json()['customer']['id']}/state")
        assert state.status_code == 200, state.text
        assert state.json()["phone_line_failed"] is False

    async def test_reused_account_number_starts_without_the_old_entries(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The old customer's Crash & Smash entries (one fired, one pending) and remembered
        disarms go with its termination: the new customer given the number, another dealer's,
        shows none of them in its state (it showed the old entries, the fired one naming the old
        customer's alarm)."""
        _, _, old = await _customer(api, admin)
        account = (await admin.get(f"/v1/customers/{old}")).json()["account"]
        await api.pool.execute(
            "INSERT INTO pending_entries (account, partition, zone, deadline, state, "
            "fired_signal_id) VALUES ($1, 1, 3, now(), 'fired', 42), "
            "($1, 2, 5, now() + interval '1 minute', 'pending', NULL)",
            account,
        )
        await api.pool.execute(
            "INSERT INTO entry_disarms (account, partition, sent_at) VALUES ($1, 1, now())",
            account,
        )
        assert (await admin.post(f"/v1/customers/{old}/terminate", json={})).status_code == 200
        other = await api.dealer("Other")
        new = await admin.post(
            "/v1/customers",
            json=security_request(other, SERIAL, login={"login_name": "newcomer"}),
        )
        assert new.status_code == 201, new.text
        assert new.json()["customer"]["account"] == account
        state = await admin.get(f"/v1/customers/{new.json()['customer']['id']}/state")
        assert state.status_code == 200, state.text
        assert state.json()["entries"] == []
        assert (
            await api.pool.fetchval(
                "SELECT count(*) FROM entry_disarms WHERE account = $1", account
            )
            == 0
        )

    async def test_read_only_and_other_dealer_cannot_change(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A read-only key gets 403; another dealer's key gets 404 on every change endpoint."""
        _, _, customer = await _customer(api, admin)
        other = api.client(await api.key("dealer", await api.dealer("Other")))
        reader = api.client(await api.key("read-only"))
        calls = [
            ("put", f"/v1/customers/{customer}/forwarding", {"mode": "never"}),
            ("put", f"/v1/customers/{customer}/package", {"base": "res-basic"}),
            ("put", f"/v1/customers/{customer}/dialer-delay", {"dialer_delay_s": 10}),
            ("post", f"/v1/customers/{customer}/terminate", {}),
        ]
        for method, url, body in calls:
            assert (await getattr(other, method)(url, json=body)).status_code == 404, url
            assert (await getattr(reader, method)(url, json=body)).status_code == 403, url
        assert (await admin.get(f"/v1/customers/{customer}")).json()["status"] == "active"


class TestLiveState:
    async def test_phone_line_and_supervision_shown(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The account's phone line and supervision as the engine holds them; 409 once terminated;
        404 for another dealer."""
        _, _, customer = await _customer(api, admin)
        account = (await admin.get(f"/v1/customers/{customer}")).json()["account"]
        url = f"/v1/customers/{customer}/state"
        fresh = (await admin.get(url)).json()
        assert (fresh["phone_line_failed"], fresh["supervision_deadline"]) == (False, None)
        await api.pool.execute(
            "INSERT INTO account_state (account, phone_line_failed) VALUES ($1, true)", account
        )
        await api.pool.execute(
            "INSERT INTO supervision (account, deadline, missed) VALUES ($1, now(), true)", account
        )
        state = (await admin.get(url)).json()
        assert state["phone_line_failed"] is True
        assert state["panel_not_responding"] is True and state["supervision_deadline"] is not None
        other = api.client(await api.key("dealer", await api.dealer("Other")))
        assert (await other.get(url)).status_code == 404
        await admin.post(f"/v1/customers/{customer}/terminate", json={})
        assert (await admin.get(url)).status_code == 409

    async def test_supervision_miss_and_restore_shown(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The supervision timer's miss shows as panel_not_responding (since the miss); the next
        contact commits the restore and the state clears."""
        _, _, customer = await _customer(api, admin)
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None
        directory = AccountDirectory()
        directory.load([account])
        forwarding = ForwardingStage(directory)
        clock = FakeClock(datetime(2026, 3, 2, 12, 0, tzinfo=UTC))
        writer = IngestWriter(
            api.pool,
            duplicate_window_s=600,
            forwarding=forwarding,
            supervision=SupervisionStage(directory, grace_s=0),
            clock=clock,
        )
        timer = SupervisionTimer(api.pool, forwarding, duplicate_window_s=600, clock=clock)

        def contact() -> InboundSignal:
            return InboundSignal(
                account=account.account,
                transport=Transport.TCP,
                kind=SignalKind.LINK_TEST,
                received_at=clock(),
            )

        url = f"/v1/customers/{customer}/state"
        await writer([contact()])
        heard = (await admin.get(url)).json()
        assert (heard["panel_not_responding"], heard["panel_not_responding_since"]) == (False, None)
        missed_at = clock.advance(account.supervision_interval_s + 1)
        assert await timer.fire_due(missed_at) == 1
        missed = (await admin.get(url)).json()
        assert missed["panel_not_responding"] is True
        assert datetime.fromisoformat(missed["panel_not_responding_since"]) == missed_at
        clock.advance(60)
        await writer([contact()])
        restored = (await admin.get(url)).json()
        assert (restored["panel_not_responding"], restored["panel_not_responding_since"]) == (
            False,
            None,
        )
        assert datetime.fromisoformat(restored["supervision_deadline"]) == clock() + timedelta(
            seconds=account.supervision_interval_s
        )
