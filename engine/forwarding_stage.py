"""Forwarding decisions, inside the ingest transaction: every committed event gets a decision.

For the batch's new event signals: lock the accounts' state rows (sorted, so engines never
deadlock), apply each event to the state in order (a phone-line fault updates the state before its
own decision), decide with the pure policy, then write decisions, outbox rows and state in three
statements. It commits with the signals, so a signal is never ACKed without its decision and, when
forwarded, its place in the outbox.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from engine import metrics
from engine.account_directory import AccountDirectory
from engine.account_model import ForwardingMode
from engine.account_state import AccountState, apply_event, changes_state
from engine.ingest_types import InboundSignal, IngestResult, SignalKind, Transport
from engine.policy import Decision, TwoWayVoiceAction, decide
from engine.store.signals import StoredSignal
from protocols.signal import Category, Event

_encoder = msgspec.json.Encoder()
_DEFAULT_STATE = AccountState()


def _mode(directory: AccountDirectory, account: str) -> ForwardingMode | None:
    row = directory.get(account)
    return row.forwarding.mode if row is not None else None


_URGENT = frozenset(
    {Category.ALARMS, Category.PANICS, Category.CRASH_SMASH, Category.PANEL_NOT_RESPONDING}
)


def priority_of(event: Event, category: Category) -> int:
    """0 for alarms, panics, fire, crash & smash and PNR (not their restores); 1 for routine."""
    cls = event.classification
    if cls.restore:
        return 1
    return 0 if category in _URGENT or cls.fire or cls.co else 1


def delivery_seq(delivery_id: int) -> str:
    """The DC-09 sequence number of a delivery: fixed by its id, so every retransmission (even by
    another engine after a crash) carries the same number and the receiver can dedupe."""
    return f"{delivery_id % 9999 + 1:04d}"


class ForwardingStage:
    """Decides and enqueues within the ingest writer's transaction."""

    def __init__(self, directory: AccountDirectory) -> None:
        self._directory = directory
        self.enqueued = 0

    async def __call__(
        self,
        conn: asyncpg.Connection,
        signals: Sequence[InboundSignal],
        stored: Sequence[StoredSignal],
    ) -> int:
        """Record decisions and outbox rows; returns how many deliveries were enqueued."""
        work = [
            (signal, row)
            for signal, row in zip(signals, stored, strict=True)
            if signal.kind is SignalKind.EVENT
            and row.result is IngestResult.ACCEPTED
            and row.signal_id is not None
        ]
        if not work:
            return 0
        # The state row is needed (and locked) only where it can matter: accounts in "only if the
        # phone line fails" mode, and accounts whose batch carries a phone-line event.
        accounts = sorted(
            {
                signal.account
                for signal, _ in work
                if _mode(self._directory, signal.account) is ForwardingMode.PHONE_LINE_FAILURE
                or any(changes_state(event) for event in signal.events)
            }
        )
        states: dict[str, AccountState] = {}
        if accounts:
            # Make sure every account has a state row to lock, so two engines serialise on it.
            await conn.execute(
                "INSERT INTO account_state (account) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                accounts,
            )
            rows = await conn.fetch(
                "SELECT account, phone_line_failed, panel_not_responding FROM account_state "
                "WHERE account = ANY($1::text[]) ORDER BY account FOR UPDATE",
                accounts,
            )
            states = {
                r["account"]: AccountState(
                    phone_line_failed=r["phone_line_failed"],
                    panel_not_responding=r["panel_not_responding"],
                )
                for r in rows
            }
        before = dict(states)

        d_ids: list[int] = []
        d_index: list[int] = []
        d_at: list[object] = []
        d_account: list[str] = []
        d_forward: list[bool] = []
        d_reason: list[str] = []
        d_category: list[str] = []
        d_voice: list[str] = []
        outbox: list[tuple[InboundSignal, StoredSignal, int, Event, Decision]] = []
        for signal, row in work:
            account = self._directory.get(signal.account)
            state = states.get(signal.account, _DEFAULT_STATE)
            for index, event in enumerate(signal.events):
                state = apply_event(state, event)
                if account is None:
                    continue  # deleted between the frame and the commit: stored, never forwarded
                decision = decide(
                    event,
                    account.forwarding,
                    state,
                    server_generated=signal.transport is Transport.SERVER,
                    dialer_failed=signal.dialer_failed,
                )
                assert row.signal_id is not None
                d_ids.append(row.signal_id)
                d_index.append(index)
                d_at.append(signal.received_at)
                d_account.append(signal.account)
                d_forward.append(decision.forward)
                d_reason.append(decision.reason.value)
                d_category.append(decision.category.value)
                d_voice.append(decision.two_way_voice.value)
                metrics.DECISIONS.labels(str(decision.forward).lower(), decision.reason.value).inc()
                if decision.forward:
                    outbox.append((signal, row, index, event, decision))
            if signal.account in states:
                states[signal.account] = state

        if d_ids:
            await conn.execute(
                """
                INSERT INTO decisions (signal_id, event_index, received_at, account, forward, reason, category, two_way_voice)
                SELECT * FROM unnest($1::bigint[], $2::smallint[], $3::timestamptz[], $4::text[], $5::boolean[],
                                     $6::text[], $7::text[], $8::text[])
                ON CONFLICT DO NOTHING
                """,
                d_ids,
                d_index,
                d_at,
                d_account,
                d_forward,
                d_reason,
                d_category,
                d_voice,
            )
        if outbox:
            ids = await conn.fetchval(
                "SELECT array_agg(nextval('deliveries_id_seq')) FROM generate_series(1, $1)",
                len(outbox),
            )
            await conn.execute(
                """
                INSERT INTO deliveries (id, signal_id, event_index, account, lane, station_account, priority, event,
                                        primary_receiver, backup_receiver, seq, received_at, two_way_voice)
                SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::smallint[], $4::text[], $5::text[], $6::text[],
                                     $7::smallint[], $8::jsonb[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],
                                     $13::boolean[])
                """,
                ids,
                [row.signal_id for _, row, _, _, _ in outbox],
                [index for _, _, index, _, _ in outbox],
                [signal.account for signal, _, _, _, _ in outbox],
                [f"{d.station_account}@{d.primary_receiver}" for *_, d in outbox],
                [d.station_account for *_, d in outbox],
                [priority_of(event, d.category) for _, _, _, event, d in outbox],
                [_encoder.encode(event).decode() for _, _, _, event, _ in outbox],
                [d.primary_receiver for *_, d in outbox],
                [d.backup_receiver for *_, d in outbox],
                [delivery_seq(i) for i in ids],
                [signal.received_at for signal, _, _, _, _ in outbox],
                [d.two_way_voice is TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY for *_, d in outbox],
            )
        changed = [
            a for a in accounts if a in states and states[a] != before.get(a, AccountState())
        ]
        if changed:
            await conn.execute(
                """
                INSERT INTO account_state (account, phone_line_failed, panel_not_responding, updated_at)
                SELECT a, p, n, now() FROM unnest($1::text[], $2::boolean[], $3::boolean[]) AS t(a, p, n)
                ON CONFLICT (account) DO UPDATE SET phone_line_failed = EXCLUDED.phone_line_failed,
                    panel_not_responding = EXCLUDED.panel_not_responding, updated_at = now()
                """,
                changed,
                [states[a].phone_line_failed for a in changed],
                [states[a].panel_not_responding for a in changed],
            )
        self.enqueued += len(outbox)
        return len(outbox)
