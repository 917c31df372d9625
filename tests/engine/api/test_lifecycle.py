"""Drafts that resume, commitments and their activation, module swap, virtual customers."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from engine.api.creation import add_months
from engine.store.accounts import AccountStore
from tests.engine.api.catalog_setup import PACKAGES, create_packages, imei, security_request
from tests.engine.api.conftest import Api, problem_rules


async def _setup(api: Api, admin: httpx.AsyncClient) -> int:
    await create_packages(admin)
    return await api.dealer("Acme")


async def _activate_lte(
    admin: httpx.AsyncClient, commitment: dict[str, Any], digits: str
) -> httpx.Response:
    """Activate ``commitment`` with an LTE module (IMEI from ``digits``) in a wireless panel."""
    return await admin.post(
        f"/v1/commitments/{commitment['commitment_id']}/activate",
        json={
            "system": {
                "serial": imei(digits),
                "module_type": "lte",
                "panel_type": "wireless-panel",
            }
        },
    )


class TestDrafts:
    async def test_resume_and_submit(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A draft saved step by step tells the next step, resumes from a list, and submits."""
        dealer = await _setup(api, admin)
        client = api.client(await api.key("dealer", dealer))
        full = security_request(dealer, imei("49015420323751"))
        started = await client.post(
            "/v1/drafts",
            json={"document": {"account_type": "security_system", "dealer": full["dealer"]}},
        )
        assert started.status_code == 201, started.text
        draft = started.json()
        assert draft["next_step"] == "customer"
        assert {"account_type", "dealer"} <= set(draft["complete_steps"])
        step = await client.patch(
            f"/v1/drafts/{draft['id']}", json={"document": {"customer": full["customer"]}}
        )
        assert step.json()["next_step"] == "system"
        resumed = (await client.get("/v1/drafts")).json()["items"]
        assert [d["id"] for d in resumed] == [draft["id"]]
        assert resumed[0]["document"]["customer"]["last_name"] == "Lovelace"
        early = await client.post(f"/v1/drafts/{draft['id']}/submit")
        assert early.status_code == 422
        assert ("system", "required") in problem_rules(early.json())
        await client.patch(
            f"/v1/drafts/{draft['id']}",
            json={"document": {k: full[k] for k in ("system", "package", "forwarding")}},
        )
        assert (await client.get(f"/v1/drafts/{draft['id']}")).json()["next_step"] is None
        submitted = await client.post(f"/v1/drafts/{draft['id']}/submit")
        assert submitted.status_code == 201, submitted.text
        assert (await client.get(f"/v1/drafts/{draft['id']}")).status_code == 404
        assert await AccountStore(api.pool).get(full["system"]["serial"]) is not None

    async def test_virtual_draft_ready_without_system(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A virtual customer's draft needs no system step: with nothing failing its next_step
        is null (ready), as its submit shows (it answered "system")."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "", virtual=True)
        del request["system"]
        draft = await admin.post("/v1/drafts", json={"document": request})
        assert draft.status_code == 201, draft.text
        assert (draft.json()["errors"], draft.json()["next_step"]) == ([], None)
        submitted = await admin.post(f"/v1/drafts/{draft.json()['id']}/submit")
        assert submitted.status_code == 201, submitted.text

    async def test_aes_key_never_answered(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A draft's AES key is kept for the submit but no answer shows it, not even to a read-only
        key: ``system.key_set`` says one is stored, and the system step sent back as answered (with
        ``key_set``, without ``key``) keeps it."""
        dealer = await _setup(api, admin)
        client = api.client(await api.key("dealer", dealer))
        reader = api.client(await api.key("read-only", dealer))
        aes = secrets.token_hex(16).upper()
        full = security_request(dealer, imei("49015420323751"))
        full["system"]["key"] = aes
        started = await client.post("/v1/drafts", json={"document": full})
        assert started.status_code == 201, started.text
        draft = started.json()
        assert aes not in started.text
        assert draft["document"]["system"]["key_set"] is True
        assert "key" not in draft["document"]["system"]
        system = {**draft["document"]["system"], "panel_type": "hybrid-wired-panel"}
        step = await client.patch(
            f"/v1/drafts/{draft['id']}", json={"document": {"system": system}}
        )
        assert step.status_code == 200, step.text
        assert aes not in step.text and step.json()["next_step"] is None
        assert step.json()["document"]["system"]["key_set"] is True
        for answer in (
            await client.get(f"/v1/drafts/{draft['id']}"),
            await client.get("/v1/drafts"),
            await reader.get(f"/v1/drafts/{draft['id']}"),
            await reader.get("/v1/drafts"),
        ):
            assert answer.status_code == 200, answer.text
            assert aes not in answer.text
        submitted = await client.post(f"/v1/drafts/{draft['id']}/submit")
        assert submitted.status_code == 201, submitted.text
        assert aes not in submitted.text
        account = await AccountStore(api.pool).get(full["system"]["serial"])
        assert account is not None and account.key == aes

    async def test_aes_key_removed_with_null(self, api: Api, admin: httpx.AsyncClient) -> None:
        """``"key": null`` in a system step removes the stored key."""
        await _setup(api, admin)
        system = {"serial": imei("49015420323751"), "module_type": "lte", "key": "k" * 16}
        system["key_format"] = "ascii"
        draft = (await admin.post("/v1/drafts", json={"document": {"system": system}})).json()
        assert draft["document"]["system"]["key_set"] is True
        step = await admin.patch(
            f"/v1/drafts/{draft['id']}", json={"document": {"system": {**system, "key": None}}}
        )
        assert step.json()["document"]["system"]["key_set"] is False

    async def test_invalid_step_reported(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A step with a wrong value is listed with its field error and is the next step."""
        dealer = await _setup(api, admin)
        full = security_request(dealer, imei("49015420323751"))
        full["customer"]["email_confirm"] = "x@example.com"
        draft = (
            await admin.post(
                "/v1/drafts",
                json={"document": {k: full[k] for k in ("account_type", "dealer", "customer")}},
            )
        ).json()
        assert draft["next_step"] == "customer"
        assert {
            "field": "customer.email_confirm",
            "rule": "emails_match",
            "message": "the two email addresses do not match",
        } in draft["errors"]

    async def test_decoding_errors_read_like_the_others(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A draft step of the wrong types listed msgspec's words ("Expected `int | null`, got
        `str`", "Object missing required field `zip`"); they read as the API's other messages."""
        dealer = await _setup(api, admin)
        full = security_request(dealer, imei("49015420323751"))
        del full["customer"]["address"]["zip"]
        document = {
            "account_type": "security_system",
            "dealer": {**full["dealer"], "property_type": "castle"},
            "customer": full["customer"],
            "operations": {"contract_length_months": "36"},
        }
        draft = (await admin.post("/v1/drafts", json={"document": document})).json()
        messages = {(e["field"], e["rule"]): e["message"] for e in draft["errors"]}
        expected = {
            ("dealer.property_type", "enum"): "'castle' is not one of the allowed values",
            ("customer.address.zip", "required"): "this field is required",
            ("operations.contract_length_months", "type"): (
                "expected an integer or null, got a string"
            ),
        }
        assert expected.items() <= messages.items()
        assert not [m for m in messages.values() if "`" in m or "Expected" in m]

    async def test_other_dealer_cannot_resume(self, api: Api, admin: httpx.AsyncClient) -> None:
        """Another dealer's draft is a 404."""
        dealer = await _setup(api, admin)
        other = await api.dealer("Other")
        draft = (
            await api.client(await api.key("dealer", dealer)).post(
                "/v1/drafts", json={"document": {}}
            )
        ).json()
        other_client = api.client(await api.key("dealer", other))
        assert (await other_client.get(f"/v1/drafts/{draft['id']}")).status_code == 404
        assert (await other_client.post(f"/v1/drafts/{draft['id']}/submit")).status_code == 404


class TestCommitments:
    async def test_commitment_then_activation(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A commitment has an ID, no engine account and no billing; activation creates both."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "")
        del request["system"]
        created = await admin.post("/v1/commitments", json=request)
        assert created.status_code == 201, created.text
        customer = created.json()["customer"]
        assert customer["status"] == "commitment" and customer["commitment_id"].startswith("CM-")
        assert customer["billing_started_at"] is None and customer["account"] is None
        assert await api.pool.fetchval("SELECT count(*) FROM accounts") == 0
        serial = imei("49015420323751")
        activation = {
            "system": {"serial": serial, "module_type": "lte-voice", "panel_type": "wireless-panel"}
        }
        activated = await admin.post(
            f"/v1/commitments/{customer['commitment_id']}/activate", json=activation
        )
        assert activated.status_code == 200, activated.text
        active = activated.json()["customer"]
        assert (
            active["status"] == "active"
            and active["account"] == serial
            and active["billing_started_at"]
        )
        assert active["login_name"] == customer["login_name"]
        assert (await AccountStore(api.pool).get_by_serial(serial)) is not None
        again = await admin.post(
            f"/v1/commitments/{customer['commitment_id']}/activate", json=activation
        )
        assert again.status_code == 409

    async def test_activation_validates_serial(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A bad IMEI at activation is refused and the commitment stays a commitment."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "")
        del request["system"]
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"][
            "commitment_id"
        ]
        response = await admin.post(
            f"/v1/commitments/{commitment}/activate",
            json={
                "system": {
                    "serial": "490154203237519",
                    "module_type": "lte",
                    "panel_type": "wireless-panel",
                }
            },
        )
        assert response.status_code == 422
        assert await api.pool.fetchval("SELECT status FROM customers") == "commitment"

    async def test_activation_keeps_the_chosen_pathway(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The pathway chosen in the commitment is kept when the activation does not give one
        (it became the module's default); one given at activation replaces it."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "", pathway="broadband")
        del request["system"]
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"]
        activated = await admin.post(
            f"/v1/commitments/{commitment['commitment_id']}/activate",
            json={"system": {"serial": "DP00A1B2C3D4", "panel_type": "wireless-panel"}},
        )
        assert activated.status_code == 200, activated.text
        assert activated.json()["summary"]["pathway"] == "broadband"
        assert activated.json()["customer"]["document"]["pathway"] == "broadband"
        request["login"] = {"login_name": "second"}
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"]
        activated = await admin.post(
            f"/v1/commitments/{commitment['commitment_id']}/activate",
            json={
                "system": {"serial": "DP00A1B2C3D5", "panel_type": "wireless-panel"},
                "pathway": "cellular",
            },
        )
        assert activated.status_code == 200, activated.text
        assert activated.json()["summary"]["pathway"] == "cellular"

    async def test_contract_runs_from_the_activation(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A commitment stored with a 1-month contract and activated five weeks later: the end
        date is derived from the length again at activation (it stayed the commitment's,
        already past, and the activation was refused on operations.contract_end_date, a field
        it cannot change); an end date given explicitly is kept."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "")
        del request["system"]
        request["operations"] = {"contract_length_months": 1}
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"]
        five_weeks_ago = datetime.now(UTC) - timedelta(weeks=5)
        await api.pool.execute(
            "UPDATE customers SET created_at = $2, document = jsonb_set(document, "
            "'{operations,contract_end_date}', to_jsonb($3::text)) WHERE id = $1",
            commitment["id"],
            five_weeks_ago,
            add_months(five_weeks_ago.date(), 1).isoformat(),  # as derived back then: past now
        )
        activated = await _activate_lte(admin, commitment, "49015420323751")
        assert activated.status_code == 200, activated.text
        end = date.fromisoformat(activated.json()["summary"]["contract_end_date"])
        assert end > datetime.now(UTC).date() + timedelta(days=27)
        request["operations"] = {"contract_length_months": 1, "contract_end_date": "2099-01-31"}
        request["login"] = {"login_name": "explicit"}
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"]
        activated = await _activate_lte(admin, commitment, "49015420323752")
        assert activated.status_code == 200, activated.text
        assert activated.json()["summary"]["contract_end_date"] == "2099-01-31"

    async def test_package_deactivated_after_the_commitment(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The package a commitment was sold with is deactivated before the installation: the
        activation goes through (it was refused on package.base, which it cannot change)."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "", package={"base": "res-basic", "addons": ["sup6"]})
        del request["system"]
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"]
        for package in PACKAGES:
            if package["code"] in {"res-basic", "sup6"}:
                retired = await admin.put(f"/v1/packages/{package['code']}", json={**package, "active": False})  # fmt: skip
                assert retired.status_code == 200, retired.text
        activated = await _activate_lte(admin, commitment, "49015420323751")
        assert activated.status_code == 200, activated.text
        assert activated.json()["summary"]["supervision_interval_s"] == 6 * 3600

    async def test_terminated_commitment_not_activated(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A terminated commitment cannot be activated; the 409 says it was terminated (not
        "already active"), and nothing is billed or created."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "")
        del request["system"]
        commitment = (await admin.post("/v1/commitments", json=request)).json()["customer"]
        ended = await admin.post(f"/v1/customers/{commitment['id']}/terminate", json={})
        assert ended.status_code == 200, ended.text
        assert ended.json()["billing_started_at"] is None
        assert ended.json()["billing_ended_at"] is None
        activated = await _activate_lte(admin, commitment, "49015420323751")
        assert activated.status_code == 409
        assert "terminated" in activated.json()["detail"]
        assert await api.pool.fetchval("SELECT count(*) FROM accounts") == 0

    async def test_commitment_refuses_system(self, api: Api, admin: httpx.AsyncClient) -> None:
        """The module is given at activation, not in the commitment."""
        dealer = await _setup(api, admin)
        response = await admin.post(
            "/v1/commitments", json=security_request(dealer, imei("49015420323751"))
        )
        assert ("system", "commitment") in problem_rules(response.json())


class TestModuleSwap:
    async def test_swap_keeps_account_and_drops_old_serial(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """After a swap the account number is kept, the new serial is the module, the old one is gone."""
        dealer = await _setup(api, admin)
        old = imei("49015420323751")
        created = (await admin.post("/v1/customers", json=security_request(dealer, old))).json()[
            "customer"
        ]
        new = imei("35693803564381")
        swapped = await admin.post(
            f"/v1/customers/{created['id']}/module-swap",
            json={"serial": new, "module_type": "lte-voice"},
        )
        assert swapped.status_code == 200, swapped.text
        assert (
            swapped.json()["account"] == created["account"]
            and swapped.json()["module_serial"] == new
        )
        store = AccountStore(api.pool)
        assert await store.get_by_serial(old) is None
        account = await store.get_by_serial(new)
        assert account is not None and account.account == created["account"]
        modules = (await admin.get(f"/v1/customers/{created['id']}/modules")).json()
        assert [(m["module_serial"], m["until"] is None) for m in modules] == [
            (old, False),
            (new, True),
        ]

    async def test_swap_to_serial_in_use_refused(self, api: Api, admin: httpx.AsyncClient) -> None:
        """A serial already on another live account cannot be swapped in."""
        dealer = await _setup(api, admin)
        first = (
            await admin.post("/v1/customers", json=security_request(dealer, imei("49015420323751")))
        ).json()["customer"]
        taken = imei("49015420323752")
        await admin.post(
            "/v1/customers", json=security_request(dealer, taken, login={"login_name": "second"})
        )
        response = await admin.post(
            f"/v1/customers/{first['id']}/module-swap", json={"serial": taken, "module_type": "lte"}
        )
        assert response.status_code == 422
        assert ("system.serial", "unique") in problem_rules(response.json())

    async def test_swap_to_a_panel_with_the_module_built_in(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A touchscreen panel (module built in) replacing a wireless panel and its LTE module:
        the panel type follows the new module (it was refused as a mismatch with the old panel,
        a field the swap could not change); a panel type can also be given."""
        dealer = await _setup(api, admin)
        created = (
            await admin.post("/v1/customers", json=security_request(dealer, imei("49015420323751")))
        ).json()["customer"]
        swapped = await admin.post(
            f"/v1/customers/{created['id']}/module-swap", json={"serial": "TS0123456789"}
        )
        assert swapped.status_code == 200, swapped.text
        system = swapped.json()["document"]["system"]
        assert (system["module_type"], system["panel_type"]) == ("touchscreen", "touchscreen-panel")
        back = await admin.post(
            f"/v1/customers/{created['id']}/module-swap",
            json={
                "serial": imei("35693803564381"),
                "module_type": "lte-voice",
                "panel_type": "hybrid-wired-panel",
            },
        )
        assert back.status_code == 200, back.text
        assert back.json()["document"]["system"]["panel_type"] == "hybrid-wired-panel"

    async def test_swap_keeps_the_pathway_only_when_the_module_has_it(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A dual-path module on broadband swapped for a cellular-only LTE module: the pathway
        becomes cellular (it stayed broadband); a pathway the new module lacks is refused."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "DP00A1B2C3D4", pathway="broadband")
        request["system"]["module_type"] = "dual-path"
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        url = f"/v1/customers/{created.json()['customer']['id']}/module-swap"
        lte = {"serial": imei("35693803564381"), "module_type": "lte"}
        refused = await admin.post(url, json={**lte, "pathway": "broadband"})
        assert refused.status_code == 422
        assert ("pathway", "module_pathway") in problem_rules(refused.json())
        swapped = await admin.post(url, json=lte)
        assert swapped.status_code == 200, swapped.text
        assert swapped.json()["document"]["pathway"] == "cellular"
        kept = await admin.post(url, json={"serial": "DP00A1B2C3D5", "pathway": "broadband"})
        assert kept.status_code == 200, kept.text
        assert kept.json()["document"]["pathway"] == "broadband"
        again = await admin.post(url, json={"serial": "DP00A1B2C3D6"})
        assert again.json()["document"]["pathway"] == "broadband"


class TestVirtual:
    async def test_virtual_customer_gets_simulated_module(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A virtual customer needs no serial; its engine account is marked virtual."""
        dealer = await _setup(api, admin)
        request = security_request(dealer, "", virtual=True)
        del request["system"]
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 201, response.text
        customer = response.json()["customer"]
        assert customer["virtual"] is True and customer["module_serial"].startswith("VIRT")
        account = await AccountStore(api.pool).get_by_serial(customer["module_serial"])
        assert account is not None and account.virtual is True

    async def test_overlong_virtual_serial_refused(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A virtual module's serial skips the format check but not a length bound: 422, not 500
        (the unique index on module_serial cannot hold a serial of thousands of characters)."""
        dealer = await _setup(api, admin)
        huge = "Q" + secrets.token_hex(3000).upper()  # random: does not compress in the index
        request = security_request(dealer, "", virtual=True)
        request["system"] = {"serial": huge, "module_type": "lte"}
        response = await admin.post("/v1/customers", json=request)
        assert response.status_code == 422, response.text
        assert ("system.serial", "max_length") in problem_rules(response.json())
        del request["system"]
        created = await admin.post("/v1/customers", json=request)
        assert created.status_code == 201, created.text
        customer = created.json()["customer"]
        swapped = await admin.post(
            f"/v1/customers/{customer['id']}/module-swap",
            json={"serial": huge, "module_type": "lte"},
        )
        assert swapped.status_code == 422, swapped.text
        assert ("system.serial", "max_length") in problem_rules(swapped.json())
        ok = await admin.post(
            f"/v1/customers/{customer['id']}/module-swap",
            json={"serial": "Q" + "AB" * 31 + "C", "module_type": "lte"},
        )
        assert ok.status_code == 200, ok.text
