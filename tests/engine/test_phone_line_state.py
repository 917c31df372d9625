"""The phone-line state of an "only if the phone line fails" account across commits, on the real
PostgreSQL: each failure is ended by its own restore (migration 0480)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, SignalKind, Transport
from engine.ingest_writer import IngestWriter
from engine.store.accounts import AccountStore
from protocols.contact_id import parse_cid_block

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def cid(block: str, n: int) -> InboundSignal:
    return InboundSignal(
        account="7000",
        transport=Transport.TCP,
        kind=SignalKind.EVENT,
        received_at=T0 + timedelta(seconds=n),
        events=parse_cid_block(f"#7000|{block}"),
        seq=f"{n:04d}",
        dedupe_key=f"7000:{n}",
    )


async def test_line_two_restored_leaves_line_one_failed(db_pool: asyncpg.Pool) -> None:
    """Line 1 fault, line 2's restore, then a burglary: forwarded (the restore used to clear the
    line and the alarm was held back as phone_line_ok); line 1's own restore ends it."""
    account = Account(
        account="7000",
        forwarding=ForwardingSettings(
            mode=ForwardingMode.PHONE_LINE_FAILURE,
            phone_line_connected=True,
            station_account="7000",
            primary_receiver="rx",
        ),
    )
    await AccountStore(db_pool).upsert_many([account])
    directory = AccountDirectory()
    directory.load([account])
    writer = IngestWriter(db_pool, duplicate_window_s=600, forwarding=ForwardingStage(directory))
    for n, block in enumerate(["1351 01 000", "3352 01 000", "1130 01 003"], start=1):
        await writer([cid(block, n)])
    state = await db_pool.fetchrow(
        "SELECT phone_line_failed, line_faults FROM account_state WHERE account = '7000'"
    )
    assert state is not None and (state["phone_line_failed"], state["line_faults"]) == (
        True,
        ["351"],
    )
    for n, block in enumerate(["3351 01 000", "1130 01 004"], start=4):
        await writer([cid(block, n)])
    decisions = await db_pool.fetch(
        "SELECT s.seq, d.reason FROM decisions d JOIN signals s ON s.id = d.signal_id "
        "WHERE s.seq IN ('0003', '0005') ORDER BY s.seq"
    )
    assert [(r["seq"], r["reason"]) for r in decisions] == [
        ("0003", "forwarded"),
        ("0005", "phone_line_ok"),
    ]
    assert (
        await db_pool.fetchval("SELECT phone_line_failed FROM account_state WHERE account = '7000'")
        is False
    )
