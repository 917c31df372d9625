"""The creation steps' rules not covered elsewhere: dealer switching and sub-dealers, the
installation address, operations, login names, pathway, package templates, forwarding defaults
and the phone-line mode, installation templates, and the enterprise group of a live customer."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

import httpx

from engine.store.accounts import AccountStore
from tests.engine.api.catalog_setup import (
    PACKAGES,
    create_packages,
    create_station,
    imei,
    security_request,
)
from tests.engine.api.conftest import Api, problem_rules

SERIAL = imei("49015420323751")


async def _dealer(api: Api, admin: httpx.AsyncClient) -> int:
    await create_packages(admin)
    return await api.dealer("Acme")


async def _enterprise_customer(api: Api, admin: httpx.AsyncClient) -> int:
    """A customer of Acme's on the commercial base with the enterprise add-on, in group HQ."""
    acme = await _dealer(api, admin)
    created = await admin.post(
        "/v1/customers",
        json=security_request(
            acme,
            SERIAL,
            package={"base": "biz", "addons": ["enterprise"]},
            enterprise_group="HQ",
        ),
    )
    assert created.status_code == 201, created.text
    customer: int = created.json()["customer"]["id"]
    return customer


async def _refused(client: httpx.AsyncClient, request: dict[str, Any]) -> set[tuple[str, str]]:
    response = await client.post("/v1/customers", json=request)
    assert response.status_code == 422, response.text
    return problem_rules(response.json())


class TestDealerStep:
    async def test_dealer_switches_to_its_sub_dealers(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A dealer key may create for itself or a dealer below it, not for its parent or a sibling."""
        acme = await _dealer(api, admin)
        north = await api.dealer("North", acme)
        south = await api.dealer("South", acme)
        north_east = await api.dealer("North East", north)
        north_client = api.client(await api.key("dealer", north))
        for i, dealer in enumerate((north, north_east)):
            request = security_request(
                dealer, imei(f"4901542032375{i}"), login={"login_name": f"n{i}"}
            )
            created = await north_client.post("/v1/customers", json=request)
            assert created.status_code == 201, created.text
            assert created.json()["customer"]["dealer_id"] == dealer
        for i, dealer in enumerate((acme, south)):
            request = security_request(dealer, imei(f"3569380356438{i}"))
            assert ("dealer.dealer_id", "exists") in await _refused(north_client, request)

    async def test_sub_dealer_must_be_a_child(self, api: Api, admin: httpx.AsyncClient) -> None:
        """sub_dealer_id must be a sub-dealer of the chosen dealer."""
        acme = await _dealer(api, admin)
        other = await api.dealer("Other")
        request = security_request(acme, SERIAL)
        request["dealer"]["sub_dealer_id"] = other
        assert ("dealer.sub_dealer_id", "sub_dealer") in await _refused(admin, request)

    async def test_property_and_install_type_kept(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Property type and install type are stored with the customer."""
        acme = await _dealer(api, admin)
        request = security_request(acme, SERIAL)
        request["dealer"].update(property_type="commercial", install_type="takeover")
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        dealer_step = created.json()["customer"]["document"]["dealer"]
        assert (dealer_step["property_type"], dealer_step["install_type"]) == (
            "commercial",
            "takeover",
        )


class TestCustomerStep:
    async def test_installation_address(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Not installed at the primary contact's address: the installation address is required,
        checked like the primary one, and gets its own time zone."""
        acme = await _dealer(api, admin)
        request = security_request(acme, SERIAL)
        request["customer"]["installed_at_primary_address"] = False
        assert ("customer.installation_address", "required") in await _refused(admin, request)
        request["customer"]["installation_address"] = {
            "street1": "9 Lake Rd",
            "city": "Denver",
            "state": "CO",
            "zip": "802",
        }
        assert ("customer.installation_address.zip", "format") in await _refused(admin, request)
        request["customer"]["installation_address"]["zip"] = "80202"
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        info = created.json()["customer"]["document"]["customer"]
        assert info["address"]["time_zone"] == "America/Chicago"
        assert info["installation_address"]["time_zone"] == "America/Denver"

    async def test_us_zip_with_chosen_zone(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A chosen time zone wins over the one detected from the ZIP; an unknown one is refused."""
        acme = await _dealer(api, admin)
        request = security_request(acme, SERIAL)
        request["customer"]["address"]["time_zone"] = "Mars/Olympus"
        assert ("customer.address.time_zone", "time_zone") in await _refused(admin, request)
        request["customer"]["address"]["time_zone"] = "America/Denver"
        created = await admin.post("/v1/customers", json=request)
        assert created.json()["summary"]["time_zone"] == "America/Denver"

    async def test_phone_type_and_language_stored(self, api: Api, admin: httpx.AsyncClient) -> None:
        """The phone keeps its type; the language is kept; a bad phone number is refused."""
        acme = await _dealer(api, admin)
        request = security_request(acme, SERIAL)
        request["customer"].update(phone="12", phone_type="work", language="es")
        assert ("customer.phone", "phone") in await _refused(admin, request)
        request["customer"]["phone"] = "512-555-0100"
        created = await admin.post("/v1/customers", json=request)
        info = created.json()["customer"]["document"]["customer"]
        assert (info["phone"], info["phone_type"], info["language"]) == (
            "512-555-0100",
            "work",
            "es",
        )


class TestOperations:
    async def test_contract_end_date(self, api: Api, admin: httpx.AsyncClient) -> None:
        """The end date is derived from the length when not given; a past date or a length
        outside 1-120 months is refused; every operations field is kept."""
        acme = await _dealer(api, admin)
        today = datetime.now(UTC).date()
        request = security_request(
            acme,
            SERIAL,
            operations={
                "alternate_id": "ALT-9",
                "sales_rep": "Bob",
                "installer_rep": "Eve",
                "contract_length_months": 12,
                "customer_source": "referral",
            },
        )
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        expected = date(today.year + 1, today.month, min(today.day, 28))
        end = date.fromisoformat(created.json()["summary"]["contract_end_date"])
        assert end.replace(day=min(end.day, 28)) == expected
        ops = created.json()["customer"]["document"]["operations"]
        assert (ops["alternate_id"], ops["installer_rep"], ops["customer_source"]) == (
            "ALT-9",
            "Eve",
            "referral",
        )
        bad = security_request(
            acme,
            imei("49015420323752"),
            operations={"contract_length_months": 121, "contract_end_date": "2000-01-01"},
        )
        assert {
            ("operations.contract_length_months", "range"),
            ("operations.contract_end_date", "future"),
        } <= await _refused(admin, bad)


class TestLoginNames:
    async def test_boundaries(self, api: Api, admin: httpx.AsyncClient) -> None:
        """99 letters and digits are accepted; non-ASCII letters and punctuation are not."""
        acme = await _dealer(api, admin)
        for name in ("Zoë", "ada.lovelace", "ada_1", "ada 1"):
            request = security_request(acme, SERIAL, login={"login_name": name})
            assert ("login.login_name", "letters_digits") in await _refused(admin, request)
        longest = "a1" * 49 + "b"
        created = await admin.post(
            "/v1/customers", json=security_request(acme, SERIAL, login={"login_name": longest})
        )
        assert created.status_code == 201, created.text
        assert created.json()["customer"]["login_name"] == longest

    async def test_availability_endpoint(self, api: Api, admin: httpx.AsyncClient) -> None:
        """The endpoint says free, taken ("login already in use") or why the format is wrong, and
        suggests a free name from the customer's names."""
        acme = await _dealer(api, admin)
        url = "/v1/login-names/availability"
        free = (await admin.get(url, params={"login_name": "freeName7"})).json()
        assert free == {
            "login_name": "freeName7",
            "available": True,
            "problem": None,
            "suggestion": None,
        }
        too_long = (await admin.get(url, params={"login_name": "a" * 100})).json()
        assert too_long["available"] is False
        assert too_long["problem"] == "a login name must be under 100 characters"
        bad = (await admin.get(url, params={"login_name": "a-b"})).json()
        assert bad["problem"] == "a login name has letters and digits only"
        suggested = (
            await admin.get(url, params={"first_name": "Zoë", "last_name": "O'Brien-Smith"})
        ).json()
        assert suggested["suggestion"] == "zobriensmith"
        created = await admin.post(
            "/v1/customers",
            json=security_request(acme, SERIAL, login={"login_name": suggested["suggestion"]}),
        )
        assert created.status_code == 201, created.text
        again = (
            await admin.get(
                url,
                params={
                    "login_name": "ZOBRIENSMITH",
                    "first_name": "Zoë",
                    "last_name": "O'Brien-Smith",
                },
            )
        ).json()
        assert again["problem"] == "login already in use"
        assert again["suggestion"] == "zobriensmith2"

    async def test_default_login_is_the_suggestion(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Without a login name the suggested one is used, numbered when taken."""
        acme = await _dealer(api, admin)
        logins = []
        for i in range(2):
            created = await admin.post(
                "/v1/customers", json=security_request(acme, imei(f"4901542032375{i}"))
            )
            assert created.status_code == 201, created.text
            logins.append(created.json()["customer"]["login_name"])
        assert logins == ["alovelace", "alovelace2"]


class TestSystemAndPathway:
    async def test_pathway_must_suit_the_module(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A cellular-only module cannot use broadband; a dual-path module may choose either."""
        acme = await _dealer(api, admin)
        assert ("pathway", "module_pathway") in await _refused(
            admin, security_request(acme, SERIAL, pathway="broadband")
        )
        request = security_request(
            acme,
            "",
            system={"serial": "DP00A1B2C3D4", "panel_type": "hybrid-wired-panel"},
            pathway="broadband",
        )
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        summary = created.json()["summary"]
        assert (summary["module_type"], summary["pathway"]) == ("dual-path", "broadband")

    async def test_imei_needs_a_module_type_and_panel(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """An IMEI does not tell the module type, and a separate module does not tell the panel."""
        acme = await _dealer(api, admin)
        request = security_request(acme, SERIAL, system={"serial": SERIAL})
        assert {("system.module_type", "required"), ("system.panel_type", "required")} <= (
            await _refused(admin, request)
        )

    async def test_aes_key_kept_out_of_documents_and_audit(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The module's AES key reaches the engine's account only: never an answer or the audit log."""
        acme = await _dealer(api, admin)
        key = "00112233445566778899AABBCCDDEEFF"
        request = security_request(acme, SERIAL)
        request["system"]["key"] = key
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        assert key not in created.text
        customer = created.json()["customer"]["id"]
        assert key not in (await admin.get(f"/v1/customers/{customer}")).text
        assert key not in (await admin.get("/v1/audit")).text
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None and account.key == key


class TestPackageStep:
    async def test_template_fills_base_and_addons(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A package template gives base and add-ons (summary, price, supervision); another
        dealer's template is unknown."""
        acme = await _dealer(api, admin)
        other = await api.dealer("Other")
        mine = await api.client(await api.key("dealer", acme)).post(
            "/v1/package-templates",
            json={"name": "Voice+6h", "base": "res-voice", "addons": ["sup6"]},
        )
        theirs = await api.client(await api.key("dealer", other)).post(
            "/v1/package-templates", json={"name": "Plain", "base": "res-basic"}
        )
        request = security_request(acme, SERIAL, package={"template_id": mine.json()["id"]})
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        summary = created.json()["summary"]
        assert (summary["package"]["base"], summary["package"]["addons"]) == (
            "res-voice",
            ["sup6"],
        )
        assert summary["package"]["monthly_price_cents"] == 3999 + 500
        assert summary["supervision_interval_s"] == 6 * 3600
        foreign = security_request(
            acme, imei("49015420323752"), package={"template_id": theirs.json()["id"]}
        )
        assert ("package.template_id", "exists") in await _refused(admin, foreign)

    async def test_package_for_another_account_type(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A video package cannot be a security system's, and an add-on is not a base."""
        acme = await _dealer(api, admin)
        assert ("package.base", "account_type") in await _refused(
            admin, security_request(acme, SERIAL, package={"base": "video"})
        )
        assert ("package.base", "exists") in await _refused(
            admin, security_request(acme, SERIAL, package={"base": "sup6"})
        )


class TestForwardingStep:
    async def test_defaults_and_phone_line_mode(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Default events are PRODUCT.md's; "only if the phone line fails" with the phone line
        connected, a backup receiver and the station account reach the engine's account."""
        acme = await _dealer(api, admin)
        primary = await create_station(api.pool, acme)
        backup = await create_station(api.pool, acme, name="Backup")
        request = security_request(
            acme,
            SERIAL,
            forwarding={
                "mode": "phone_line_failure",
                "phone_line_connected": True,
                "primary_receiver": primary,
                "backup_receiver": backup,
                "station_account": "00af",
                "ul_listed": True,
            },
        )
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        # One station account number goes to both receivers: at another station it may be
        # another customer's, so the dealer is told.
        assert created.json()["warnings"] == [
            f"backup receiver '{backup}' is at station 'Backup', the primary at 'Central': after "
            "a failover, and for each alarm the primary refuses (DUH), the backup gets the same "
            "station account number 00AF, so it must be this customer's number at 'Backup' too"
        ]
        assert created.json()["summary"]["categories"] == [
            "alarms",
            "arming",
            "cancels",
            "crash_smash",
            "panel_not_responding",
            "panics",
            "phone_tests",
            "troubles",
        ]
        account = await AccountStore(api.pool).get_by_serial(SERIAL)
        assert account is not None
        forwarding = account.forwarding
        assert forwarding.mode.value == "phone_line_failure"
        assert forwarding.phone_line_connected is True and forwarding.ul_listed is True
        assert (forwarding.primary_receiver, forwarding.backup_receiver) == (primary, backup)
        assert forwarding.station_account == "00AF"

    async def test_a_backup_at_the_primarys_station_is_no_warning(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        acme = await _dealer(api, admin)
        primary = await create_station(api.pool, acme)
        await api.pool.execute(
            "INSERT INTO receivers (name, station, kind, host, port, receiver_number, line_prefix, "
            "two_way_voice) VALUES ('Central-r2', 'Central', 'ip', '127.0.0.1', 9998, '2', '1', true)"
        )
        request = security_request(
            acme,
            SERIAL,
            forwarding={
                "mode": "always",
                "primary_receiver": primary,
                "backup_receiver": "Central-r2",
                "station_account": "00af",
            },
        )
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        assert created.json()["warnings"] == []

    async def test_chosen_events_and_bad_station_account(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Chosen events replace the defaults; a station account must be 3-16 hex digits; the
        backup cannot be the primary."""
        acme = await _dealer(api, admin)
        primary = await create_station(api.pool, acme)
        bad = security_request(
            acme,
            SERIAL,
            forwarding={
                "mode": "always",
                "primary_receiver": primary,
                "backup_receiver": primary,
                "station_account": "12",
            },
        )
        assert {
            ("forwarding.station_account", "format"),
            ("forwarding.backup_receiver", "exists"),
        } <= await _refused(admin, bad)
        chosen = security_request(
            acme,
            SERIAL,
            forwarding={
                "mode": "always",
                "primary_receiver": primary,
                "station_account": "1234",
                "categories": ["alarms", "bypass"],
            },
        )
        created = await admin.post("/v1/customers", json=chosen)
        assert created.json()["summary"]["categories"] == ["alarms", "bypass"]

    async def test_non_security_accounts_are_never_forwarded(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Video/access and automation accounts must use mode never."""
        acme = await _dealer(api, admin)
        receiver = await create_station(api.pool, acme)
        request = security_request(
            acme,
            "",
            account_type="video_access",
            system={"serial": "VH00FF00AA11"},
            package={"base": "video"},
            forwarding={"mode": "always", "primary_receiver": receiver, "station_account": "123"},
        )
        assert ("forwarding.mode", "not_monitored") in await _refused(admin, request)


class TestInstallationStep:
    async def test_templates_applied_and_checked(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Default-notifications and panel templates offered to the dealer are kept; a template
        of the wrong kind or of another dealer is refused."""
        acme = await _dealer(api, admin)
        other = await api.dealer("Other")
        acme_client = api.client(await api.key("dealer", acme))
        notifications = await acme_client.post(
            "/v1/installation-templates",
            json={"kind": "notifications", "name": "Default alerts", "body": {"alarm": "sms"}},
        )
        panel = await admin.post(
            "/v1/installation-templates",
            json={"kind": "panel", "name": "Wireless 2 zones", "body": {"zones": 2}},
        )
        foreign = await api.client(await api.key("dealer", other)).post(
            "/v1/installation-templates", json={"kind": "panel", "name": "Theirs"}
        )
        assert {t.status_code for t in (notifications, panel, foreign)} == {201}
        listed = {
            t["name"] for t in (await acme_client.get("/v1/installation-templates")).json()["items"]
        }
        assert listed == {"Default alerts", "Wireless 2 zones"}
        wrong = security_request(
            acme,
            SERIAL,
            installation={
                "notifications_template_id": panel.json()["id"],
                "panel_template_id": foreign.json()["id"],
            },
        )
        assert {
            ("installation.notifications_template_id", "exists"),
            ("installation.panel_template_id", "exists"),
        } <= await _refused(acme_client, wrong)
        right = security_request(
            acme,
            SERIAL,
            installation={
                "notifications_template_id": notifications.json()["id"],
                "panel_template_id": panel.json()["id"],
            },
        )
        created = await acme_client.post("/v1/customers", json=right)
        assert created.status_code == 201, created.text
        assert created.json()["customer"]["document"]["installation"] == {
            "notifications_template_id": notifications.json()["id"],
            "panel_template_id": panel.json()["id"],
        }


class TestEnterpriseGroupOfLiveCustomer:
    async def test_set_refused_then_allowed_then_cleared(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """PUT enterprise-group needs a commercial package with the enterprise add-on; it is set,
        cleared with null, and each change is audited before/after."""
        acme = await _dealer(api, admin)
        created = await admin.post(
            "/v1/customers", json=security_request(acme, SERIAL, package={"base": "biz"})
        )
        customer = created.json()["customer"]["id"]
        url = f"/v1/customers/{customer}/enterprise-group"
        refused = await admin.put(url, json={"enterprise_group": "HQ"})
        assert refused.status_code == 422
        assert ("enterprise_group", "enterprise_eligible") in problem_rules(refused.json())
        upgraded = await admin.put(
            f"/v1/customers/{customer}/package", json={"base": "biz", "addons": ["enterprise"]}
        )
        assert upgraded.status_code == 200, upgraded.text
        set_ = await admin.put(url, json={"enterprise_group": "HQ"})
        assert set_.status_code == 200, set_.text
        assert set_.json()["enterprise_group"] == "HQ"
        assert set_.json()["document"]["enterprise_group"] == "HQ"
        cleared = await admin.put(url, json={"enterprise_group": None})
        assert cleared.json()["enterprise_group"] is None
        entries = (
            await admin.get(
                "/v1/audit", params={"resource": "customer", "resource_id": str(customer)}
            )
        ).json()["items"]
        groups = [
            (e["before"]["enterprise_group"], e["after"]["enterprise_group"])
            for e in entries
            if e["action"] == "set_enterprise_group"
        ]
        assert groups == [("HQ", None), (None, "HQ")]

    async def test_package_change_keeps_the_group_eligible(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A customer with an enterprise group cannot drop the enterprise add-on (or the
        commercial base) it pays for the group with: 422 until the group is cleared."""
        customer = await _enterprise_customer(api, admin)
        package = f"/v1/customers/{customer}/package"
        for body in ({"base": "biz"}, {"base": "res-basic", "addons": ["enterprise"]}):
            refused = await admin.put(package, json=body)
            assert refused.status_code == 422, refused.text
            assert ("package", "enterprise_group_in_use") in problem_rules(refused.json())
        stored = (await admin.get(f"/v1/customers/{customer}")).json()
        assert stored["document"]["package"]["addons"] == ["enterprise"]
        cleared = await admin.put(
            f"/v1/customers/{customer}/enterprise-group", json={"enterprise_group": None}
        )
        assert cleared.status_code == 200, cleared.text
        assert (await admin.put(package, json={"base": "biz"})).status_code == 200

    async def test_catalogue_keeps_the_group_eligible(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The enterprise add-on cannot lose ``enterprise``, nor the base its ``commercial``,
        while a customer is in an enterprise group with them (it kept the group, no longer
        paid for)."""
        customer = await _enterprise_customer(api, admin)
        [biz] = [p for p in PACKAGES if p["code"] == "biz"]
        [addon] = [p for p in PACKAGES if p["code"] == "enterprise"]
        for code, body, field in (
            ("biz", {**biz, "commercial": False}, "commercial"),
            ("enterprise", {**addon, "includes": []}, "includes"),
        ):
            refused = await admin.put(f"/v1/packages/{code}", json=body)
            assert refused.status_code == 422, refused.text
            assert (field, "enterprise_group_in_use") in problem_rules(refused.json())
        assert (await admin.put("/v1/packages/biz", json={**biz, "name": "Business+"})).status_code == 200  # fmt: skip
        await admin.put(
            f"/v1/customers/{customer}/enterprise-group", json={"enterprise_group": None}
        )
        assert (await admin.put("/v1/packages/biz", json={**biz, "commercial": False})).status_code == 200  # fmt: skip

    async def test_group_set_while_the_add_on_loses_enterprise(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """PUT enterprise-group and a PUT of the add-on without ``enterprise`` at once: one of
        the two is refused, never both written (held here: the group's audit entry)."""
        acme = await _dealer(api, admin)
        created = await admin.post(
            "/v1/customers",
            json=security_request(acme, SERIAL, package={"base": "biz", "addons": ["enterprise"]}),
        )
        customer = created.json()["customer"]["id"]
        [addon] = [p for p in PACKAGES if p["code"] == "enterprise"]
        async with api.pool.acquire() as holder:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("LOCK TABLE audit_log IN SHARE MODE")
            group = asyncio.ensure_future(
                admin.put(
                    f"/v1/customers/{customer}/enterprise-group", json={"enterprise_group": "HQ"}
                )
            )
            await asyncio.sleep(0.5)  # the group request waits to write its audit entry
            edit = asyncio.ensure_future(
                admin.put("/v1/packages/enterprise", json={**addon, "includes": []})
            )
            await asyncio.sleep(0.5)
            await transaction.rollback()
        set_, changed = await group, await edit
        assert set_.status_code == 200, set_.text
        assert changed.status_code == 422, changed.text

    async def test_enterprise_from_the_base_is_not_the_add_on(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Creation asks for the enterprise add-on like PUT enterprise-group does: a commercial
        base that itself includes enterprise was taken at creation, then refused by the PUT."""
        acme = await _dealer(api, admin)
        base = {"code": "biz-ent", "name": "Business Enterprise", "kind": "base", "account_types": ["security_system"], "commercial": True, "includes": ["enterprise"]}  # fmt: skip
        assert (await admin.post("/v1/packages", json=base)).status_code == 201
        request = security_request(acme, SERIAL, package={"base": "biz-ent"}, enterprise_group="HQ")
        refused = await admin.post("/v1/customers", json=request)
        assert refused.status_code == 422, refused.text
        assert ("enterprise_group", "enterprise_eligible") in problem_rules(refused.json())


class TestStationWarnings:
    async def test_station_without_receivers_and_phone_receiver(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A station without receivers still gives the no-station warning; choosing a phone
        receiver is allowed with the warning that it cannot be delivered to."""
        acme = await _dealer(api, admin)
        client = api.client(await api.key("dealer", acme))
        assert (await client.post("/v1/stations", json={"name": "Empty"})).status_code == 201
        created = await client.post("/v1/customers", json=security_request(acme, SERIAL))
        assert created.json()["warnings"] == ["no monitoring station or receiver number registered"]
        phone = {"name": "ph", "kind": "phone", "phone_number": "5551234"}
        assert (
            await client.post("/v1/stations", json={"name": "Old", "receivers": [phone]})
        ).status_code == 201
        request = security_request(
            acme,
            imei("49015420323752"),
            login={"login_name": "second"},
            forwarding={"mode": "always", "primary_receiver": "ph", "station_account": "1234"},
        )
        created = await client.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        [warning] = created.json()["warnings"]
        assert warning.startswith("receiver 'ph' is a phone receiver")
