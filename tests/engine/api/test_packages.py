"""Service packages, add-ons, quotes, package templates; module serials, IMEI, time zones."""

from __future__ import annotations

import httpx

from engine.api.serials import (
    MODULE_TYPES,
    derived_account,
    detect_module_type,
    luhn_ok,
    serial_problem,
)
from engine.api.timezones import zone_for_zip
from tests.engine.api.catalog_setup import create_packages
from tests.engine.api.conftest import Api


class TestPackages:
    async def test_quote_sums_base_and_addons(self, admin: httpx.AsyncClient) -> None:
        """The quote lists what is included and the total monthly price."""
        await create_packages(admin)
        quote = (
            await admin.get("/v1/package-quote", params=[("base", "res-voice"), ("addons", "sup6")])
        ).json()
        assert quote["monthly_price_cents"] == 4499
        assert quote["includes"] == ["supervision_6h", "two_way_voice"]
        assert quote["summary"] == "Residential Voice with 6-hour supervision: $44.99/month"

    async def test_addon_as_base_refused(self, admin: httpx.AsyncClient) -> None:
        """An add-on cannot be the base package."""
        await create_packages(admin)
        response = await admin.get("/v1/package-quote", params={"base": "sup6"})
        assert response.status_code == 422

    async def test_only_admin_creates_packages(self, api: Api) -> None:
        """A dealer key cannot change the catalogue."""
        dealer = await api.dealer("Acme")
        client = api.client(await api.key("dealer", dealer))
        response = await client.post(
            "/v1/packages",
            json={"code": "x", "name": "X", "kind": "base", "account_types": ["automation"]},
        )
        assert response.status_code == 403

    async def test_duplicate_code_conflict(self, admin: httpx.AsyncClient) -> None:
        """A second package with the same code is a 409."""
        await create_packages(admin)
        response = await admin.post(
            "/v1/packages",
            json={"code": "sup6", "name": "X", "kind": "addon", "account_types": ["automation"]},
        )
        assert response.status_code == 409

    async def test_template_fills_package_step(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A dealer's package template is offered to it and not to another dealer."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        acme_client = api.client(await api.key("dealer", acme))
        created = await acme_client.post(
            "/v1/package-templates",
            json={"name": "Voice+6h", "base": "res-voice", "addons": ["sup6"]},
        )
        assert created.status_code == 201, created.text
        assert created.json()["dealer_id"] == acme
        assert [
            t["name"] for t in (await acme_client.get("/v1/package-templates")).json()["items"]
        ] == ["Voice+6h"]
        other_client = api.client(await api.key("dealer", other))
        assert (await other_client.get("/v1/package-templates")).json()["items"] == []


class TestSerials:
    def test_luhn(self) -> None:
        """The IMEI check digit is verified with Luhn."""
        assert luhn_ok("490154203237518")
        assert not luhn_ok("490154203237517")

    def test_serial_format_per_module_type(self) -> None:
        """Each module type has its own serial format."""
        assert serial_problem(MODULE_TYPES["dual-path"], "DP00A1B2C3D4") is None
        assert serial_problem(MODULE_TYPES["dual-path"], "BB00A1B2C3D4") is not None
        assert serial_problem(MODULE_TYPES["lte"], "490154203237518") is None

    def test_every_module_type_checks_its_own_format(self) -> None:
        """Each module type accepts its documented example, and no serial-format type accepts
        another type's example; serial-format examples are detected as their own type."""
        for module in MODULE_TYPES.values():
            assert serial_problem(module, module.serial_example) is None, module.code
            for other in MODULE_TYPES.values():
                if other.identifier == "serial" and other.code != module.code:
                    assert serial_problem(other, module.serial_example) is not None
            if module.identifier == "serial":
                assert detect_module_type(module.serial_example) is module
            else:
                assert detect_module_type(module.serial_example) is None  # an IMEI: choose

    def test_derived_account(self) -> None:
        """A hex serial is its own DC-09 account number; others map to 12 hex digits."""
        assert derived_account("490154203237518") == "490154203237518"
        derived = derived_account("TS0123456789")
        assert len(derived) == 12 and int(derived, 16) >= 0


class TestTimeZones:
    def test_zip_prefixes(self) -> None:
        """US ZIP prefixes map to their zone; foreign or malformed ZIPs give None."""
        assert zone_for_zip("10001") == "America/New_York"
        assert zone_for_zip("60601") == "America/Chicago"
        assert zone_for_zip("80202") == "America/Denver"
        assert zone_for_zip("85001") == "America/Phoenix"
        assert zone_for_zip("94105-1234") == "America/Los_Angeles"
        assert zone_for_zip("96813") == "Pacific/Honolulu"
        assert zone_for_zip("99501") == "America/Anchorage"
        # Digits of other scripts are not a ZIP (int("²²²") raised: a 500 on validate)
        assert zone_for_zip("²²²²²") is None
        assert zone_for_zip("٧٨٧٠١") is None
        assert zone_for_zip("H2X1Y", "CA") is None
        assert zone_for_zip("ABCDE") is None

    async def test_endpoint(self, admin: httpx.AsyncClient) -> None:
        """GET /v1/time-zone answers the detected zone and says it is approximate."""
        answer = (await admin.get("/v1/time-zone", params={"zip": "78701"})).json()
        assert answer["time_zone"] == "America/Chicago" and answer["approximate"] is True
