"""The phone-line state of an "only if the phone line fails" account across commits, on the real
PostgreSQL: each failure is ended by its own restore (migration 0480)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from engine.account_directory import AccountDirectory
from engine.account_model import Account, ForwardingMode, ForwardingSettings
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal, SignalKind, Transport
from engine.ingest_writer import IngestWriter
from engine.store.accounts import AccountStore
from protocols.contact_id import parse_cid_block
from protocols.sia_dc03 import parse_sia_block

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


def sia(block: str, n: int) -> InboundSignal:
    return msgspec.structs.replace(cid("1130 01 001", n), events=parse_sia_block(f"#7000|{block}"))


async def line_failure_account(db_pool: asyncpg.Pool) -> IngestWriter:
    """Account 7000 in "only if the phone line fails" with its line connected; its writer."""
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
    return IngestWriter(db_pool, duplicate_window_s=600, forwarding=ForwardingStage(directory))


async def reasons(db_pool: asyncpg.Pool, *seqs: str) -> list[tuple[str, str]]:
    rows = await db_pool.fetch(
        "SELECT s.seq, d.reason FROM decisions d JOIN signals s ON s.id = d.signal_id "
        "WHERE s.seq = ANY($1::text[]) ORDER BY s.seq",
        list(seqs),
    )
    return [(r["seq"], r["reason"]) for r in rows]


async def test_line_two_restored_leaves_line_one_failed(db_pool: asyncpg.Pool) -> None:
    """Line 1 fault, line 2's restore, then a burglary: forwarded (the restore used to clear the
    line and the alarm was held back as phone_line_ok); line 1's own restore ends it."""
    writer = await line_failure_account(db_pool)
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
    assert await reasons(db_pool, "0003", "0005") == [
        ("0003", "forwarded"),
        ("0005", "phone_line_ok"),
    ]
    assert (
        await db_pool.fetchval("SELECT phone_line_failed FROM account_state WHERE account = '7000'")
        is False
    )


async def test_sia_line_two_restored_leaves_line_one_failed(db_pool: asyncpg.Pool) -> None:
    """The same in SIA, where the line is LT's address: LT1, LT2, LR2, then a burglary is
    forwarded (LR2 used to end LT1 too, and the alarm was held back as phone_line_ok)."""
    writer = await line_failure_account(db_pool)
    for n, block in enumerate(["Nri1/LT1", "Nri1/LT2", "Nri1/LR2", "Nri1/BA3"], start=1):
        await writer([sia(block, n)])
    assert await db_pool.fetchval(
        "SELECT line_faults FROM account_state WHERE account = '7000'"
    ) == ["LT1"]
    for n, block in enumerate(["Nri1/LR1", "Nri1/BA4"], start=5):
        await writer([sia(block, n)])
    assert await reasons(db_pool, "0004", "0006") == [
        ("0004", "forwarded"),
        ("0006", "phone_line_ok"),
    ]


def test_mode_changed_while_the_batch_is_written_forwards_rather_than_holds_back() -> None:
    """An account switched to "only if the phone line fails" between the batch choosing the
    accounts whose line state it locks and its decisions (the account listener runs at any
    await): its line state was not read, so its alarm is forwarded. It was decided on a line
    assumed to work and held back as phone_line_ok, also while the line was down."""
    always = Account(
        account="7000",
        forwarding=ForwardingSettings(
            mode=ForwardingMode.ALWAYS, station_account="7000", primary_receiver="rx"
        ),
    )
    directory = AccountDirectory()
    directory.load([always])
    stage = ForwardingStage(directory)
    alarm = [cid("1130 01 003", 1)]
    assert stage.state_accounts(alarm) == []  # mode always, no line event: nothing to lock
    directory.upsert(
        msgspec.structs.replace(
            always,
            forwarding=msgspec.structs.replace(
                always.forwarding,
                mode=ForwardingMode.PHONE_LINE_FAILURE,
                phone_line_connected=True,
            ),
        )
    )
    plan = stage.plan(alarm, [0], states={})
    assert [(d.forward, d.reason) for d in plan.decided] == [(True, "forwarded")]
    assert plan.states == {}  # the unread state is not saved
