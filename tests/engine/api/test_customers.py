"""The customer account-creation flow over HTTP: each account type, each rule, tenancy."""

from __future__ import annotations

from typing import Any

import httpx

from engine.store.accounts import AccountStore
from tests.engine.api.catalog_setup import create_packages, create_station, imei, security_request
from tests.engine.api.conftest import Api, problem_rules


async def _setup(api: Api, admin: httpx.AsyncClient) -> int:
    await create_packages(admin)
    return await api.dealer("Acme")


class TestCreation:
    async def test_security_system_flow_creates_customer_and_engine_account(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A monitored security customer is created with its summary, and the engine's accounts row exists."""
        dealer = await _setup(api, admin)
        receiver = await create_station(api.pool, dealer)
        serial = imei("35693803564380")
        request = security_request(
            dealer,
            serial,
            package={"base": "res-voice", "addons": ["sup6"]},
            forwarding={
                "mode": "always",
                "primary_receiver": receiver,
                "station_account": "1234",
                "two_way_voice": True,
            },
        )
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 201, response.text
        body = response.json()
        summary = body["summary"]
        assert summary["login_name"] == "alovelace"
        assert summary["time_zone"] == "America/Chicago"
        assert summary["dc09_account"] == serial
        assert summary["pathway"] == "cellular"
        assert summary["package"]["monthly_price_cents"] == 3999 + 500
        assert summary["supervision_interval_s"] == 6 * 3600
        assert body["warnings"] == []
        customer = body["customer"]
        assert customer["status"] == "active" and customer["can_log_in"] is False
        assert "email_confirm" not in customer["document"]["customer"]
        account = await AccountStore(api.pool).get(serial)
        assert account is not None
        assert account.module_serial == serial
        assert account.forwarding.primary_receiver == receiver
        assert account.forwarding.station_account == "1234"
        assert account.forwarding.two_way_voice is True
        assert account.supervision_interval_s == 6 * 3600

    async def test_video_access_flow(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A standalone video customer: module type detected from the serial, no panel, never forwarded."""
        dealer = await _setup(api, admin)
        request = security_request(
            dealer,
            "",
            account_type="video_access",
            system={"serial": "VH00FF00AA11"},
            package={"base": "video"},
        )
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 201, response.text
        summary = response.json()["summary"]
        assert summary["module_type"] == "video-hub" and summary["panel_type"] == "no-panel"
        assert summary["pathway"] == "broadband"
        assert response.json()["warnings"] == []  # no station warning outside security systems

    async def test_automation_flow(self, api: Api, admin: httpx.AsyncClient) -> None:
        """An automation customer with a hub and a chosen pathway."""
        dealer = await _setup(api, admin)
        request = security_request(
            dealer,
            "",
            account_type="automation",
            system={"serial": "AH0123456789"},
            pathway="cellular",
            package={"base": "smart"},
        )
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 201, response.text
        assert response.json()["summary"]["pathway"] == "cellular"

    async def test_no_station_warning_allows_self_monitored(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A dealer without a station gets the field warning; mode never is allowed, forwarding is not."""
        dealer = await _setup(api, admin)
        ok = await admin.post(
            "/v1/customers", json=security_request(dealer, imei("49015420323751"))
        )
        assert ok.status_code == 201, ok.text
        assert ok.json()["warnings"] == ["no monitoring station or receiver number registered"]
        refused = await admin.post(
            "/v1/customers",
            json=security_request(
                dealer,
                imei("49015420323752"),
                login={"login_name": "other"},
                forwarding={"mode": "always", "primary_receiver": "x", "station_account": "1234"},
            ),
        )
        assert refused.status_code == 422
        assert ("forwarding.mode", "no_station") in problem_rules(refused.json())
        assert "no monitoring station or receiver number registered" in refused.json()["warnings"]

    async def test_integrated_panel_detected_from_serial(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A touchscreen serial gives the module type and the panel type without choosing them."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "", system={"serial": "TS0123456789"})
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 201, response.text
        assert response.json()["summary"]["panel_type"] == "touchscreen-panel"
        assert response.json()["summary"]["pathway"] == "dual_path"


class TestValidation:
    async def _refused(
        self, admin: httpx.AsyncClient, request: dict[str, Any]
    ) -> set[tuple[str, str]]:
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        return problem_rules(response.json())

    async def test_bad_email_pair(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Different email and confirmation is a field error; nothing is created."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, imei("49015420323751"))
        request["customer"]["email_confirm"] = "ada@example.org"
        assert ("customer.email_confirm", "emails_match") in await self._refused(admin, request)
        assert await api.pool.fetchval("SELECT count(*) FROM customers") == 0
        assert await api.pool.fetchval("SELECT count(*) FROM accounts") == 0

    async def test_all_errors_listed_at_once(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Several broken steps give several field errors in one problem document."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "490154203237519", login={"login_name": "bad name!"})
        request["customer"]["email"] = "not-an-email"
        rules = await self._refused(admin, request)
        assert {
            ("customer.email", "email"),
            ("system.serial", "imei_luhn"),
            ("login.login_name", "letters_digits"),
        } <= rules

    async def test_duplicate_login(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A login name in use (any case) is refused with "login already in use"."""
        dealer = await _setup(api, admin)
        first = await admin.post(
            "/v1/customers",
            json=security_request(dealer, imei("49015420323751"), login={"login_name": "ada1"}),
        )
        assert first.status_code == 201
        response = await admin.post(
            "/v1/customers",
            json=security_request(dealer, imei("49015420323752"), login={"login_name": "ADA1"}),
        )
        assert response.status_code == 422
        errors = response.json()["errors"]
        assert {
            "field": "login.login_name",
            "rule": "unique",
            "message": "login already in use",
        } in errors

    async def test_login_too_long(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A login of 100 characters is refused (must be under 100)."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, imei("49015420323751"), login={"login_name": "a" * 100})
        assert ("login.login_name", "length") in await self._refused(admin, request)

    async def test_bad_imei(self, api: Api, admin: httpx.AsyncClient) -> None:
        """An IMEI with a wrong check digit or length is refused."""
        dealer = await _setup(api, admin)
        assert ("system.serial", "imei_luhn") in await self._refused(
            admin, security_request(dealer, "490154203237519")
        )
        assert ("system.serial", "imei_format") in await self._refused(
            admin, security_request(dealer, "49015420323751")
        )

    async def test_bad_serial_format_for_module_type(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A dual-path serial must look like DP + 10 hex digits."""
        dealer = await _setup(api, admin)
        request = security_request(
            dealer,
            "",
            system={"serial": "DPXYZ", "module_type": "dual-path", "panel_type": "wireless-panel"},
        )
        assert ("system.serial", "serial_format") in await self._refused(admin, request)

    async def test_duplicate_serial(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A serial already on a live account is refused."""
        dealer = await _setup(api, admin)
        serial = imei("49015420323751")
        assert (
            await admin.post("/v1/customers", json=security_request(dealer, serial))
        ).status_code == 201
        request = security_request(dealer, serial, login={"login_name": "second"})
        assert ("system.serial", "unique") in await self._refused(admin, request)

    async def test_enterprise_without_addon(self, api: Api, admin: httpx.AsyncClient) -> None:
        """An enterprise group needs a commercial package and the enterprise add-on."""
        dealer = await _setup(api, admin)
        without = security_request(
            dealer, imei("49015420323751"), package={"base": "biz"}, enterprise_group="HQ"
        )
        assert ("enterprise_group", "enterprise_eligible") in await self._refused(admin, without)
        residential = security_request(
            dealer,
            imei("49015420323751"),
            package={"base": "res-basic", "addons": ["enterprise"]},
            enterprise_group="HQ",
        )
        assert ("enterprise_group", "enterprise_eligible") in await self._refused(
            admin, residential
        )
        ok = security_request(
            dealer,
            imei("49015420323751"),
            package={"base": "biz", "addons": ["enterprise"]},
            enterprise_group="HQ",
        )
        response = await admin.post("/v1/customers", json=ok)
        assert response.status_code == 201, response.text
        assert response.json()["customer"]["enterprise_group"] == "HQ"

    async def test_two_way_voice_not_eligible_names_what_is_missing(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Module, receiver and package are each named when they do not support two-way voice."""
        dealer = await _setup(api, admin)
        receiver = await create_station(api.pool, dealer, two_way_voice=False)
        request = security_request(
            dealer,
            imei("49015420323751"),
            system={
                "serial": imei("49015420323751"),
                "module_type": "lte",
                "panel_type": "wireless-panel",
            },
            forwarding={
                "mode": "always",
                "primary_receiver": receiver,
                "station_account": "1234",
                "two_way_voice": True,
            },
        )
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 422
        [error] = [e for e in response.json()["errors"] if e["rule"] == "two_way_voice_eligible"]
        assert (
            "module" in error["message"]
            and "receiver" in error["message"]
            and "package" in error["message"]
        )

    async def test_two_way_voice_warns_about_a_backup_without_it(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Eligible on the primary receiver, the option is taken; a backup receiver without two-way
        voice is named in a warning (after a failover no session starts), one with it is not."""
        dealer = await _setup(api, admin)
        primary = await create_station(api.pool, dealer, name="Central")
        plain = await create_station(api.pool, dealer, name="Backup", two_way_voice=False)
        voice = await create_station(api.pool, dealer, name="Voice")
        warnings: dict[str, list[str]] = {}
        for serial, backup in (("35693803564380", plain), ("49015420323751", voice)):
            request = security_request(
                dealer,
                imei(serial),
                login={"login_name": f"login{serial[-4:]}"},
                package={"base": "res-voice"},
                forwarding={
                    "mode": "always",
                    "primary_receiver": primary,
                    "backup_receiver": backup,
                    "station_account": "1234",
                    "two_way_voice": True,
                },
            )
            response = await admin.post("/v1/customers", json=request)
            assert response.status_code == 201, response.text
            # (each backup here is at a station of its own: that has its own warning)
            warnings[backup] = [w for w in response.json()["warnings"] if "two-way" in w]
        assert warnings[plain] == [
            f"backup receiver '{plain}' has no two-way voice: after a failover to it, alarms are "
            "delivered but no voice session is started"
        ]
        assert warnings[voice] == []

    async def test_ul_listing_keeps_alarms(self, api: Api, admin: httpx.AsyncClient) -> None:
        """On a UL installation, alarms and panel-not-responding cannot be deselected."""
        dealer = await _setup(api, admin)
        receiver = await create_station(api.pool, dealer)
        request = security_request(
            dealer,
            imei("49015420323751"),
            forwarding={
                "mode": "always",
                "primary_receiver": receiver,
                "station_account": "1234",
                "ul_listed": True,
                "categories": ["arming"],
            },
        )
        assert ("forwarding.categories", "ul_required") in await self._refused(admin, request)

    async def test_time_zone_required_outside_us(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Without a US ZIP the time zone must be chosen; a chosen one is used as given."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, imei("49015420323751"))
        request["customer"]["address"] = {
            "country": "CA",
            "street1": "1 Rue",
            "city": "Montreal",
            "state": "QC",
            "zip": "H2X 1Y4",
        }
        assert ("customer.address.time_zone", "required") in await self._refused(admin, request)
        request["customer"]["address"]["time_zone"] = "America/Toronto"
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 201, response.text
        assert response.json()["summary"]["time_zone"] == "America/Toronto"

    async def test_structural_error_is_400_problem(self, admin: httpx.AsyncClient) -> None:
        """A body that does not decode is a 400 problem document."""
        response = await admin.post("/v1/customers", json={"account_type": "spaceship"})
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/problem+json")

    async def test_validate_is_a_dry_run(self, api: Api, admin: httpx.AsyncClient) -> None:
        """POST /customers/validate returns the summary and writes nothing."""
        dealer = await _setup(api, admin)
        response = await admin.post(
            "/v1/customers/validate", json=security_request(dealer, imei("49015420323751"))
        )
        assert response.status_code == 200
        assert (
            response.json()["valid"] is True
            and response.json()["summary"]["login_name"] == "alovelace"
        )
        assert await api.pool.fetchval("SELECT count(*) FROM customers") == 0


class TestLoginNames:
    async def test_suggestion_skips_taken_names(self, api: Api, admin: httpx.AsyncClient) -> None:
        """The suggestion appends the lowest free number; availability says "login already in use"."""
        dealer = await _setup(api, admin)
        assert (
            await admin.post("/v1/customers", json=security_request(dealer, imei("49015420323751")))
        ).status_code == 201
        answer = (
            await admin.get(
                "/v1/login-names/availability",
                params={"login_name": "ALovelace", "first_name": "Ada", "last_name": "Lovelace"},
            )
        ).json()
        assert answer == {
            "login_name": "ALovelace",
            "available": False,
            "problem": "login already in use",
            "suggestion": "alovelace2",
        }


class TestCustomerTenancy:
    async def test_other_dealer_gets_404(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A dealer key cannot read, edit or list another dealer's customer."""
        acme = await _setup(api, admin)
        other = await api.dealer("Other")
        created = await admin.post(
            "/v1/customers", json=security_request(acme, imei("49015420323751"))
        )
        customer_id = created.json()["customer"]["id"]
        other_client = api.client(await api.key("dealer", other))
        assert (await other_client.get(f"/v1/customers/{customer_id}")).status_code == 404
        patch = await other_client.patch(
            f"/v1/customers/{customer_id}", json={"phone": "5125550199"}
        )
        assert patch.status_code == 404
        assert (await other_client.get("/v1/customers")).json()["items"] == []
        acme_client = api.client(await api.key("dealer", acme))
        assert (await acme_client.get(f"/v1/customers/{customer_id}")).status_code == 200

    async def test_dealer_cannot_create_for_another_dealer(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A dealer key naming another dealer gets a field error, not a customer."""
        acme = await _setup(api, admin)
        other = await api.dealer("Other")
        client = api.client(await api.key("dealer", acme))
        response = await client.post(
            "/v1/customers", json=security_request(other, imei("49015420323751"))
        )
        assert response.status_code == 422
        assert ("dealer.dealer_id", "exists") in problem_rules(response.json())

    async def test_sub_dealer_customer_visible_to_parent(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A sub-dealer's customer is visible to its parent dealer, not to a sibling."""
        acme = await _setup(api, admin)
        north = await api.dealer("North", acme)
        south = await api.dealer("South", acme)
        north_client = api.client(await api.key("dealer", north))
        created = await north_client.post(
            "/v1/customers", json=security_request(north, imei("49015420323751"))
        )
        assert created.status_code == 201, created.text
        customer_id = created.json()["customer"]["id"]
        assert (
            await api.client(await api.key("dealer", acme)).get(f"/v1/customers/{customer_id}")
        ).status_code == 200
        assert (
            await api.client(await api.key("dealer", south)).get(f"/v1/customers/{customer_id}")
        ).status_code == 404


class TestEditing:
    async def test_names_not_editable_and_changes_audited(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """First/last name are refused after creation; a phone change is applied and audited."""
        dealer = await _setup(api, admin)
        created = await admin.post(
            "/v1/customers", json=security_request(dealer, imei("49015420323751"))
        )
        customer_id = created.json()["customer"]["id"]
        refused = await admin.patch(f"/v1/customers/{customer_id}", json={"first_name": "Augusta"})
        assert ("first_name", "immutable") in problem_rules(refused.json())
        changed = await admin.patch(f"/v1/customers/{customer_id}", json={"phone": "5125550199"})
        assert changed.status_code == 200
        assert changed.json()["document"]["customer"]["phone"] == "5125550199"
        entries = (
            await admin.get(
                "/v1/audit", params={"resource": "customer", "resource_id": str(customer_id)}
            )
        ).json()["items"]
        assert [e["action"] for e in entries] == ["update", "create"]
        assert entries[0]["before"]["phone"] != entries[0]["after"]["phone"]
