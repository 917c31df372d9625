"""engine/outcome_writer.py: outcomes finishing together are written in few statements, each row
with its own values (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from engine import delivery, outcome_writer
from engine.outcome_writer import Outcome, OutcomeWriter


async def _deliveries(pool: asyncpg.Pool, count: int) -> list[int]:
    now = datetime.now(UTC)
    return [
        await pool.fetchval(
            "INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, "
            "priority, event, primary_receiver, state, seq, received_at, lease_owner, lease_until) "
            "VALUES ($1, 0, 'A1', $2, 'ABCD', 1, '{}', 'rx', 'pending', '0001', $3, 'me', $4) "
            "RETURNING id",
            i + 1,
            f"lane-{i}",
            now,
            now + timedelta(seconds=30),
        )
        for i in range(count)
    ]


class TestOutcomeWriter:
    async def test_concurrent_outcomes_share_statements(self, db_pool: asyncpg.Pool) -> None:
        """60 outcomes recorded at once take far fewer than 60 statements; every row gets its own
        state, receiver, family and times, and loses its lease."""
        ids = await _deliveries(db_pool, 60)
        writer = OutcomeWriter(db_pool)
        sent = datetime.now(UTC)
        outcomes = [
            Outcome(
                id=delivery,
                state="dead" if i % 10 == 0 else "delivered",
                receiver=f"rx-{i % 3}",
                family_sent="sia" if i % 2 else "cid",
                acked_at=None if i % 10 == 0 else sent + timedelta(milliseconds=i),
                sent_at=sent,
                error="DUH" if i % 10 == 0 else None,
            )
            for i, delivery in enumerate(ids)
        ]
        await asyncio.gather(*(writer.record(o) for o in reversed(outcomes)))
        assert 1 <= writer.statements < 10
        rows = {
            r["id"]: r
            for r in await db_pool.fetch(
                "SELECT id, state, receiver_used, family_sent, acked_at, last_error, lease_owner, "
                "lease_until, first_sent_at FROM deliveries"
            )
        }
        for outcome in outcomes:
            row = rows[outcome.id]
            assert (row["state"], row["receiver_used"], row["family_sent"]) == (
                outcome.state,
                outcome.receiver,
                outcome.family_sent,
            )
            assert (row["acked_at"], row["last_error"]) == (outcome.acked_at, outcome.error)
            assert (row["lease_owner"], row["lease_until"]) == (None, None)
            assert row["first_sent_at"] == sent

    async def test_outcome_waits_for_a_locked_table(self, db_pool: asyncpg.Pool) -> None:
        """While another transaction holds the table, the outcome waits (its delivery does not
        move on); it lands once the table is free."""
        [delivery] = await _deliveries(db_pool, 1)
        writer = OutcomeWriter(db_pool)
        async with db_pool.acquire() as blocker, blocker.transaction():
            await blocker.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
            record = asyncio.create_task(
                writer.record(
                    Outcome(
                        id=delivery,
                        state="delivered",
                        receiver="rx",
                        family_sent="cid",
                        acked_at=datetime.now(UTC),
                        sent_at=datetime.now(UTC),
                        error=None,
                    )
                )
            )
            await asyncio.sleep(0.3)
            assert not record.done()  # waiting on the lock
        await asyncio.wait_for(record, 10)
        assert await db_pool.fetchval("SELECT state FROM deliveries") == "delivered"

    async def test_an_unforeseen_failure_releases_the_waiter_and_the_writer_goes_on(
        self, db_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The outcome is left to the lease (logged), and the next outcome is written as usual."""
        first, second = await _deliveries(db_pool, 2)
        writer = OutcomeWriter(db_pool)
        real_write = writer._write
        calls = 0

        async def failing_once(outcomes: list[Outcome]) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in the writer")
            await real_write(outcomes)

        monkeypatch.setattr(writer, "_write", failing_once)
        now = datetime.now(UTC)

        def outcome(delivery: int) -> Outcome:
            return Outcome(
                id=delivery, state="delivered", receiver="rx", family_sent="cid", acked_at=now,
                sent_at=now, error=None,
            )  # fmt: skip

        with capture_logs() as logs:
            await asyncio.wait_for(writer.record(outcome(first)), 5)
            await asyncio.wait_for(writer.record(outcome(second)), 5)
        failed = [e for e in logs if e["event"] == "delivery_record_failed"]
        assert [(e["log_level"], e["rows"], e["error"]) for e in failed] == [
            ("error", 1, "RuntimeError('a bug in the writer')")
        ]
        states = dict(await db_pool.fetch("SELECT id, state FROM deliveries"))
        assert states == {first: "pending", second: "delivered"}

    async def test_a_failover_appends_the_primary_failure_keeping_the_latest_twenty(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """An outcome that carries the primary's failure (its group failed over in the same
        delivery) appends it to the history after the earlier failures, dropping the oldest
        beyond 20; an outcome without one leaves the history as it was."""
        failover, plain = await _deliveries(db_pool, 2)
        earlier = [{"at": f"2026-01-01T00:00:{i:02d}+00:00", "receiver": "rx-a", "error": f"e{i}"}
                   for i in range(20)]  # fmt: skip
        await db_pool.execute(
            "UPDATE deliveries SET failed_attempts = $1::jsonb",
            msgspec.json.encode(earlier).decode(),
        )
        now = datetime.now(UTC)
        writer = OutcomeWriter(db_pool)
        await writer.record(
            Outcome(
                id=failover, state="delivered", receiver="rx-b", family_sent="cid", acked_at=now,
                sent_at=now, error=None, failed_at=now, failed_receiver="rx-a",
                failed_error="no answer within the ACK timeout",
            )
        )  # fmt: skip
        await writer.record(
            Outcome(
                id=plain, state="delivered", receiver="rx-a", family_sent="cid", acked_at=now,
                sent_at=now, error=None,
            )
        )  # fmt: skip
        rows = dict(await db_pool.fetch("SELECT id, failed_attempts::text FROM deliveries"))
        after = msgspec.json.decode(rows[failover])
        assert len(after) == 20
        assert [a["error"] for a in after[:19]] == [f"e{i}" for i in range(1, 20)]
        assert (after[-1]["receiver"], after[-1]["error"]) == (
            "rx-a",
            "no answer within the ACK timeout",
        )
        assert datetime.fromisoformat(after[-1]["at"]) == now
        assert msgspec.json.decode(rows[plain]) == earlier

    async def test_a_row_another_engine_holds_or_finished_is_left_as_it_is(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """An engine whose lease lapsed (stalled, cut off) records its outcomes late: the row
        another engine has since taken over keeps that engine's lease, and the row it has since
        delivered stays delivered (a late 'dead' overwrote it); its own row is written. The rows
        left alone are logged."""
        taken, finished, own = await _deliveries(db_pool, 3)
        await db_pool.execute("UPDATE deliveries SET lease_owner = 'other' WHERE id = $1", taken)
        await db_pool.execute(
            "UPDATE deliveries SET state = 'delivered', lease_owner = NULL, lease_until = NULL, "
            "receiver_used = 'rx-other' WHERE id = $1",
            finished,
        )
        writer = OutcomeWriter(db_pool, owner="me")
        now = datetime.now(UTC)
        with capture_logs() as logs:
            await asyncio.gather(
                *(
                    writer.record(
                        Outcome(
                            id=delivery,
                            state="dead",
                            receiver="rx",
                            family_sent="cid",
                            acked_at=None,
                            sent_at=now,
                            error="DUH",
                        )
                    )
                    for delivery in (taken, finished, own)
                )
            )
        rows = {
            r["id"]: (r["state"], r["lease_owner"], r["receiver_used"])
            for r in await db_pool.fetch(
                "SELECT id, state, lease_owner, receiver_used FROM deliveries"
            )
        }
        assert rows == {
            taken: ("pending", "other", None),
            finished: ("delivered", None, "rx-other"),
            own: ("dead", None, "rx"),
        }
        [superseded] = [e for e in logs if e["event"] == "delivery_outcome_superseded"]
        assert sorted(superseded["ids"]) == sorted([taken, finished])


class TestPlans:
    async def test_outcomes_and_failures_find_their_rows_by_primary_key(
        self, db_pool: asyncpg.Pool
    ) -> None:
        """On a table not analyzed yet (every benchmark, a new install) with pending rows, the
        outcome and failure writes go by the primary key. A "state = 'pending'" guard once let
        the planner scan the partial index of pending rows whole for the ids, per statement: a
        backlog fed itself (deliveries up to 5 s late in the end-to-end benchmark)."""
        now = datetime.now(UTC)
        await db_pool.execute(
            "INSERT INTO deliveries (signal_id, event_index, account, lane, station_account, "
            "priority, event, primary_receiver, state, seq, received_at, lease_owner, lease_until) "
            "SELECT g, 0, 'A', 'lane-' || (g % 100), 'ABCD', 1, '{}', 'rx', "
            "CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'delivered' END, '0001', $1, 'me', $1 "
            "FROM generate_series(1, 20000) g",
            now,
        )
        ids = list(range(19_000, 19_050))
        n = len(ids)
        outcome_plan = "\n".join(
            r[0]
            for r in await db_pool.fetch(
                "EXPLAIN " + outcome_writer._UPDATE,
                ids, ["delivered"] * n, ["rx"] * n, ["cid"] * n, [now] * n, [now] * n,
                [None] * n, [None] * n, [None] * n, [None] * n, "me",
            )
        )  # fmt: skip
        failure_plan = "\n".join(
            r[0]
            for r in await db_pool.fetch(
                "EXPLAIN " + delivery._FAILED_SQL,
                19_000, "no answer", "rx", timedelta(seconds=1), now, None, None, None, "me", 1,
            )
        )  # fmt: skip
        for plan in (outcome_plan, failure_plan):
            assert "deliveries_pkey" in plan, plan
            assert "deliveries_pending_lane" not in plan, plan
