"""A customer's signal history: only the signals of its own module, within its own time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api

SERIAL = imei("49015420323751")


async def _signal(api: Api, account: str, seq: str) -> None:
    await api.pool.execute(
        "INSERT INTO signals (received_at, account, transport, kind, seq) "
        "VALUES (now(), $1, 'tcp', 'event', $2)",
        account,
        seq,
    )


@pytest.fixture
def engine_host_in_chicago(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The engine host's local time zone is America/Chicago (UTC-6 in January)."""
    monkeypatch.setenv("TZ", "America/Chicago")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def _customer_with_signals_at(api: Api, admin: httpx.AsyncClient, *times: str) -> int:
    """A customer (dated back to 2025) whose module sent one signal at each UTC time."""
    await create_packages(admin)
    dealer = await api.dealer("Acme")
    created = await admin.post("/v1/customers", json=security_request(dealer, SERIAL))
    assert created.status_code == 201, created.text
    customer = int(created.json()["customer"]["id"])
    await api.pool.execute(
        "UPDATE customer_modules SET since = '2025-01-01T00:00:00Z' WHERE customer_id = $1",
        customer,
    )
    for i, at in enumerate(times):
        await api.pool.execute(
            "INSERT INTO signals (received_at, account, transport, kind, seq) "
            "VALUES ($1::text::timestamptz, $2, 'tcp', 'event', $3)",
            at,
            SERIAL,
            f"{i:04d}",
        )
    return customer


class TestTimeFilters:
    async def test_a_time_without_offset_is_utc_whatever_the_engine_hosts_zone(
        self, api: Api, admin: httpx.AsyncClient, engine_host_in_chicago: None
    ) -> None:
        """since/until without an offset are UTC, as with Z: not the engine host's local time,
        which moved the window by six hours on a host set to Chicago time."""
        customer = await _customer_with_signals_at(
            api, admin, "2026-01-01T02:00:00Z", "2026-01-01T08:00:00Z"
        )
        url = f"/v1/customers/{customer}/signals"
        for since in ("2026-01-01T01:00:00", "2026-01-01T01:00:00Z"):
            for until in ("2026-01-01T03:00:00", "2026-01-01T03:00:00Z"):
                answer = await admin.get(url, params={"since": since, "until": until})
                assert answer.status_code == 200, answer.text
                assert [s["seq"] for s in answer.json()["items"]] == ["0000"], (since, until)

    async def test_a_time_beyond_the_calendar_in_utc_names_its_parameter(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """The last second of year 9999 at UTC-5 is past the year 9999 in UTC: a 400 naming
        the parameter (it answered "a value is out of range")."""
        customer = await _customer_with_signals_at(api, admin)
        url = f"/v1/customers/{customer}/signals"
        for name, value in (
            ("until", "9999-12-31T23:59:59-05:00"),
            ("since", "0001-01-01T00:00:00+05:00"),
        ):
            answer = await admin.get(url, params={name: value})
            assert answer.status_code == 400, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert [(e["field"], e["rule"]) for e in answer.json()["errors"]] == [(name, "range")]

    async def test_a_number_is_not_taken_for_a_time(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """?until=2026 (a year) was read as 2026 seconds after 1970 and answered an empty page,
        read as "no signals until then"; a number is a 400 (rule type) like any other value
        that is not an ISO 8601 date and time."""
        customer = await _customer_with_signals_at(api, admin, "2026-01-01T02:00:00Z")
        url = f"/v1/customers/{customer}/signals"
        for name, value in (("until", "2026"), ("since", "1767225600"), ("until", "0.5")):
            answer = await admin.get(url, params={name: value})
            assert answer.status_code == 400, (name, value, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert [(e["field"], e["rule"]) for e in answer.json()["errors"]] == [(name, "type")]
        answer = await admin.get(url, params={"since": "2026-01-01T01:00:00Z"})
        assert [s["seq"] for s in answer.json()["items"]] == ["0000"]

    async def test_until_before_since_is_a_400(self, api: Api, admin: httpx.AsyncClient) -> None:
        """since and until swapped answered an empty page, read as "no signals in that time"
        although the customer had one: now a 400 on until (rule range)."""
        customer = await _customer_with_signals_at(api, admin, "2026-01-01T02:00:00Z")
        answer = await admin.get(
            f"/v1/customers/{customer}/signals",
            params={"since": "2026-01-01T03:00:00Z", "until": "2026-01-01T01:00:00Z"},
        )
        assert answer.status_code == 400, answer.text
        assert [(e["field"], e["rule"]) for e in answer.json()["errors"]] == [("until", "range")]
        assert "until is before since" in answer.json()["detail"]


class TestHistoryWindow:
    async def test_commitment_activated_with_a_reused_module_shows_none_of_the_old_customer(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Dealer Other stores a commitment; Acme's customer with the module (a takeover) sends
        a signal and is terminated; Other activates its commitment with that module. The account
        number is the same, but Other's history starts at its activation: Acme's customer's
        alarm is not shown to Other."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        other_client = api.client(await api.key("dealer", other))
        request = security_request(other, "", login={"login_name": "takeover"})
        del request["system"]
        commitment = await other_client.post("/v1/commitments", json=request)
        assert commitment.status_code == 201, commitment.text
        commitment_id = commitment.json()["customer"]["commitment_id"]
        new_id = commitment.json()["customer"]["id"]

        old = await admin.post("/v1/customers", json=security_request(acme, SERIAL))
        assert old.status_code == 201, old.text
        old_id = old.json()["customer"]["id"]
        await _signal(api, old.json()["customer"]["account"], "0001")
        ended = await admin.post(f"/v1/customers/{old_id}/terminate", json={})
        assert ended.status_code == 200, ended.text

        activated = await other_client.post(
            f"/v1/commitments/{commitment_id}/activate",
            json={
                "system": {
                    "serial": SERIAL,
                    "module_type": "lte-voice",
                    "panel_type": "wireless-panel",
                }
            },
        )
        assert activated.status_code == 200, activated.text
        account = activated.json()["customer"]["account"]
        assert account == old.json()["customer"]["account"]
        await _signal(api, account, "0002")

        history = (await other_client.get(f"/v1/customers/{new_id}/signals")).json()["items"]
        assert [s["seq"] for s in history] == ["0002"]
        old_history = (await admin.get(f"/v1/customers/{old_id}/signals")).json()["items"]
        assert [s["seq"] for s in old_history] == ["0001"]


class TestOlderPartitions:
    async def test_a_new_customers_history_does_not_read_the_days_before_it(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """A customer created today: its history reads today's partitions only, not every day
        kept (a year of them: tens of milliseconds planning and probing each). A day's partition
        held by another transaction (retention dropping it, a long maintenance) does not hold up
        the answer."""
        await create_packages(admin)
        dealer = await api.dealer("Acme")
        created = await admin.post("/v1/customers", json=security_request(dealer, SERIAL))
        assert created.status_code == 201, created.text
        customer = int(created.json()["customer"]["id"])
        await api.pool.execute("SELECT ensure_signal_partitions(2, 30)")
        old = await api.pool.fetchval(
            "SELECT 'signals_' || to_char((now() AT TIME ZONE 'UTC')::date - 20, 'YYYYMMDD')"
        )
        await _signal(api, SERIAL, "0001")
        async with api.pool.acquire() as holder, holder.transaction():
            await holder.execute(f"LOCK TABLE {old} IN ACCESS EXCLUSIVE MODE")
            answer = await asyncio.wait_for(admin.get(f"/v1/customers/{customer}/signals"), 5)
        assert answer.status_code == 200, answer.text
        assert [s["seq"] for s in answer.json()["items"]] == ["0001"]
