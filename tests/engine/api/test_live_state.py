"""A customer's live state holds only its own account's facts, also on a reused account number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.engine.api.catalog_setup import create_packages, imei, security_request
from tests.engine.api.conftest import Api

SERIAL = imei("49015420323751")


class TestReusedAccountNumber:
    async def test_new_customer_starts_without_the_former_customers_state(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Acme's customer had a phone-line fault, a Crash & Smash entry and a dead-lettered
        delivery when it was terminated; Other's new customer with the same module (so the same
        account number) showed that phone line as failed, that entry and that dead letter. It
        starts clean, and its engine decisions no longer see the old fault either."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        other = await api.dealer("Other")
        old = await admin.post("/v1/customers", json=security_request(acme, SERIAL))
        assert old.status_code == 201, old.text
        account = old.json()["customer"]["account"]
        pool = api.pool
        await pool.execute(
            "INSERT INTO account_state (account, phone_line_failed, line_faults) "
            "VALUES ($1, true, '{351}')",
            account,
        )
        await pool.execute(
            "INSERT INTO pending_entries (account, partition, zone, deadline, state) "
            "VALUES ($1, 1, 4, now() + interval '30 seconds', 'pending')",
            account,
        )
        signal = await pool.fetchval(
            "INSERT INTO signals (received_at, account, transport, kind, seq) "
            "VALUES (now(), $1, 'tcp', 'event', '0001') RETURNING id",
            account,
        )
        await pool.execute(
            """INSERT INTO deliveries (signal_id, event_index, account, lane, station_account,
                   priority, event, primary_receiver, state, seq, received_at)
               VALUES ($1, 0, $2, 'l', '1234', 0, '{}', 'r1', 'dead', '0001', now())""",
            signal,
            account,
        )
        ended = await admin.post(f"/v1/customers/{old.json()['customer']['id']}/terminate", json={})
        assert ended.status_code == 200, ended.text

        other_client = api.client(await api.key("dealer", other))
        new = await other_client.post(
            "/v1/customers", json=security_request(other, SERIAL, login={"login_name": "next"})
        )
        assert new.status_code == 201, new.text
        assert new.json()["customer"]["account"] == account
        state = await other_client.get(f"/v1/customers/{new.json()['customer']['id']}/state")
        assert state.status_code == 200, state.text
        body = state.json()
        assert body["phone_line_failed"] is False
        assert body["entries"] == []
        assert (body["deliveries_pending"], body["deliveries_dead"]) == (0, 0)
        faults = await pool.fetchval(
            "SELECT line_faults FROM account_state WHERE account = $1", account
        )
        assert not faults


class TestEntryWaitingBehindAnOverdueOne:
    async def test_the_waiting_entry_is_shown_with_its_zone_and_deadline(
        self, api: Api, admin: httpx.AsyncClient
    ) -> None:
        """Partition 1's entry is past its deadline, not fired yet, and a second entry (zone 4)
        waits behind it; partition 2's has none waiting. The state showed only the first: an
        operator could not see that a second Crash & Smash was still to come."""
        await create_packages(admin)
        acme = await api.dealer("Acme")
        created = await admin.post("/v1/customers", json=security_request(acme, SERIAL))
        assert created.status_code == 201, created.text
        customer = created.json()["customer"]
        overdue = datetime(2026, 3, 2, 22, 1, 20, tzinfo=UTC)
        waiting = overdue + timedelta(minutes=10)
        await api.pool.execute(
            "INSERT INTO pending_entries (account, partition, zone, deadline, state, "
            "next_zone, next_deadline, next_sent_at, next_received_at) VALUES "
            "($1, 1, 3, $2, 'pending', 4, $3, $4, $4), ($1, 2, 7, $3, 'pending', NULL, NULL, NULL, NULL)",
            customer["account"],
            overdue,
            waiting,
            waiting - timedelta(seconds=80),
        )
        state = await admin.get(f"/v1/customers/{customer['id']}/state")
        assert state.status_code == 200, state.text
        entries = state.json()["entries"]
        assert [(e["partition"], e["zone"], e["state"]) for e in entries] == [
            (1, 3, "pending"),
            (2, 7, "pending"),
        ]
        [shown] = entries[0]["waiting"]
        assert (shown["zone"], datetime.fromisoformat(shown["deadline"])) == (4, waiting)
        assert entries[1]["waiting"] == []
