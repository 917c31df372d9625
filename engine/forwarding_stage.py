"""Forwarding decisions for a batch: every committed event gets a decision, in its own commit.

The stage plans, the batch's write (engine/store/ingest_batch.py) stores: for each event of the
batch's signals the pure policy decides, and each forwarded event becomes an outbox row. The
decisions and outbox rows are written by the same statement as the signals, so a signal is never
ACKed without its decision and, when forwarded, its place in the outbox; a duplicate's rows are
dropped by that statement.

Accounts whose decisions depend on state (the phone line: "only if the phone line fails" mode, or
a batch carrying a phone-line event) take the careful path: in one transaction their state rows
are locked (sorted, so engines never deadlock), the signals are stored, each event is applied to
the state in order (a phone-line fault updates the state before its own decision), the decisions
written, and the state saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import asyncpg
import msgspec

from engine import metrics
from engine.account_directory import AccountDirectory
from engine.account_model import ForwardingMode
from engine.account_state import UNKNOWN_FAULT, AccountState, apply_event, changes_state
from engine.delivery_lane import lane_for
from engine.ingest_types import InboundSignal, IngestResult, SignalKind, Transport
from engine.policy import Decision, TwoWayVoiceAction, decide
from engine.store.ingest_batch import BatchDone, BatchWrite, DecisionRow, OutboxRow, write_batch
from engine.store.signals import StoredSignal
from protocols.signal import Category, Event

_DEFAULT_STATE = AccountState()
# The line of an "only if the phone line fails" account whose state this batch did not read (its
# settings changed to that mode after the batch chose the accounts to lock): not known to work,
# so its signals are forwarded rather than held back as phone_line_ok. Never saved.
_UNREAD_LINE = AccountState(line_faults=frozenset({UNKNOWN_FAULT}))
_PHONE_LINE_FAILURE = ForwardingMode.PHONE_LINE_FAILURE
_SERVER = Transport.SERVER
_LISTEN_IN = TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY


class OwnedDelivery(msgspec.Struct, kw_only=True):
    """An outbox row this engine holds the lease of (inserted leased, or claimed)."""

    id: int
    signal_id: int
    account: str
    lane: str
    station_account: str
    priority: int
    event: Event
    primary_receiver: str
    backup_receiver: str | None
    seq: str
    attempts: int
    received_at: datetime
    two_way_voice: bool


class Handover(msgspec.Struct):
    """What a batch's commit leaves its dispatcher: rows leased to it, lanes it could not lease."""

    leased: list[OwnedDelivery] = msgspec.field(default_factory=list)
    unleased_lanes: set[str] = msgspec.field(default_factory=set)


class ForwardingPlan(msgspec.Struct, kw_only=True):
    """A batch's decisions and outbox rows, and the account states after it."""

    decisions: list[DecisionRow]
    decided: list[Decision]  # the policy's decision of each row of ``decisions``
    outbox: list[OutboxRow]
    states: dict[str, AccountState]  # the accounts whose state changed


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


def lane_of(decision: Decision) -> str:
    """The delivery lane: order holds per station account at the primary receiver."""
    return lane_for(decision.station_account, decision.primary_receiver)


class ForwardingStage:
    """Plans decisions and outbox rows; with an owner, rows on clear lanes come back leased."""

    def __init__(
        self, directory: AccountDirectory, *, owner: str | None = None, lease_s: float = 6.0
    ) -> None:
        self._directory = directory
        self.owner = owner
        self.lease_s = lease_s
        self.enqueued = 0

    # -- planning -------------------------------------------------------------------------------

    def state_accounts(self, signals: Sequence[InboundSignal]) -> list[str]:
        """Accounts of the batch whose decisions need their (locked) state, sorted."""
        out = set()
        for signal in signals:
            if signal.kind is not SignalKind.EVENT or signal.transport is _SERVER:
                continue  # server-generated signals need only rules 1 and 2
            account = self._directory.get(signal.account)
            plf = account is not None and account.forwarding.mode is _PHONE_LINE_FAILURE
            if plf or any(changes_state(event) for event in signal.events):
                out.add(signal.account)
        return sorted(out)

    def plan(
        self,
        signals: Sequence[InboundSignal],
        positions: Iterable[int],
        *,
        ids: Mapping[int, int] | None = None,
        states: Mapping[str, AccountState] | None = None,
    ) -> ForwardingPlan:
        """Decide every event of the signals at ``positions`` (in order).

        With ``ids`` the rows name their stored signal by id; without, by position (the same
        write stores the signals). ``states`` holds the locked states of :meth:`state_accounts`.
        """
        current = dict(states or {})
        changed: dict[str, AccountState] = {}
        decisions: list[DecisionRow] = []
        decided: list[Decision] = []
        outbox: list[OutboxRow] = []
        directory = self._directory
        for o in positions:
            signal = signals[o]
            if signal.kind is not SignalKind.EVENT:
                continue
            name = signal.account
            account = directory.get(name)
            tracked = name in current
            if tracked:
                state = current[name]
            elif account is not None and account.forwarding.mode is _PHONE_LINE_FAILURE:
                state = _UNREAD_LINE
            else:
                state = _DEFAULT_STATE
            signal_id = ids[o] if ids is not None else None
            position = None if ids is not None else o
            server = signal.transport is _SERVER
            for index, event in enumerate(signal.events):
                state = apply_event(state, event)
                if account is None:
                    continue  # deleted between the frame and the commit: stored, never forwarded
                decision = decide(
                    event,
                    account.forwarding,
                    state,
                    server_generated=server,
                    dialer_failed=signal.dialer_failed,
                )
                decisions.append(
                    DecisionRow(
                        o=position,
                        s=signal_id,
                        i=index,
                        at=signal.received_at,
                        a=name,
                        f=decision.forward,
                        # StrEnum members: msgspec writes their values (no .value lookups)
                        r=decision.reason,
                        c=decision.category,
                        v=decision.two_way_voice,
                    )
                )
                decided.append(decision)
                if decision.forward:
                    outbox.append(
                        OutboxRow(
                            q=len(outbox),
                            o=position,
                            s=signal_id,
                            i=index,
                            a=name,
                            lane=lane_of(decision),
                            sa=decision.station_account or "",
                            pr=priority_of(event, decision.category),
                            ev=event,
                            rx=decision.primary_receiver or "",
                            bx=decision.backup_receiver,
                            at=signal.received_at,
                            v=decision.two_way_voice is _LISTEN_IN,
                        )
                    )
            if tracked and state != current[name]:
                current[name] = state
                changed[name] = state
        return ForwardingPlan(decisions=decisions, decided=decided, outbox=outbox, states=changed)

    def finish(
        self, plan: ForwardingPlan, done: BatchDone, handover: Handover | None = None
    ) -> int:
        """After the write: count the decisions stored, hand leased rows over; returns how many
        deliveries were enqueued."""
        kept = done.kept
        counts: dict[tuple[bool, str], int] = {}  # counted per batch: one inc per label pair
        for decision_row, decision in zip(plan.decisions, plan.decided, strict=True):
            if decision_row.o is None or decision_row.o in kept:
                key = (decision.forward, decision.reason)
                counts[key] = counts.get(key, 0) + 1
        for (forward, reason), n in counts.items():
            metrics.child(metrics.DECISIONS, "true" if forward else "false", reason).inc(n)
        if handover is not None:
            outbox = plan.outbox
            for delivered in done.deliveries:
                row = outbox[delivered.q]
                if not delivered.leased:
                    handover.unleased_lanes.add(row.lane)
                    continue
                if row.s is not None:
                    signal_id = row.s
                else:
                    assert row.o is not None
                    signal_id = kept[row.o]
                handover.leased.append(
                    OwnedDelivery(
                        id=delivered.id,
                        signal_id=signal_id,
                        account=row.a,
                        lane=row.lane,
                        station_account=row.sa,
                        priority=row.pr,
                        event=row.ev,
                        primary_receiver=row.rx,
                        backup_receiver=row.bx,
                        seq=delivery_seq(delivered.id),
                        attempts=1,
                        received_at=row.at,
                        two_way_voice=row.v,
                    )
                )
        self.enqueued += len(done.deliveries)
        return len(done.deliveries)

    # -- state ----------------------------------------------------------------------------------

    @staticmethod
    async def lock_states(
        conn: asyncpg.Connection, accounts: Sequence[str]
    ) -> dict[str, AccountState]:
        """Lock (creating when missing) the state rows of ``accounts``, in account order."""
        if not accounts:
            return {}
        # Make sure every account has a state row to lock, so two engines serialise on it.
        await conn.execute(
            "INSERT INTO account_state (account) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            accounts,
        )
        rows = await conn.fetch(
            "SELECT account, line_faults FROM account_state "
            "WHERE account = ANY($1::text[]) ORDER BY account FOR UPDATE",
            accounts,
        )
        return {r["account"]: AccountState(line_faults=frozenset(r["line_faults"])) for r in rows}

    @staticmethod
    async def save_states(conn: asyncpg.Connection, states: Mapping[str, AccountState]) -> None:
        if not states:
            return
        accounts = sorted(states)
        await conn.execute(
            """
            INSERT INTO account_state (account, phone_line_failed, line_faults, updated_at)
            SELECT a, cardinality(f) > 0, f, now()
            FROM unnest($1::text[], $2::text[]) AS t(a, faults),
                 LATERAL (SELECT string_to_array(faults, ',') AS f) s
            ON CONFLICT (account) DO UPDATE SET phone_line_failed = EXCLUDED.phone_line_failed,
                line_faults = EXCLUDED.line_faults, updated_at = now()
            """,
            accounts,
            [",".join(sorted(states[a].line_faults)) for a in accounts],
        )

    # -- for signals already stored (the timers) ------------------------------------------------

    async def __call__(
        self,
        conn: asyncpg.Connection,
        signals: Sequence[InboundSignal],
        stored: Sequence[StoredSignal],
        *,
        duplicate_window_s: int = 0,
    ) -> int:
        """Decide and enqueue the newly stored ones of ``signals`` (inside the caller's
        transaction); returns how many deliveries were enqueued. Rows are left to the claim
        loop (the caller wakes its dispatcher after the commit)."""
        ids = {
            i: row.signal_id
            for i, (signal, row) in enumerate(zip(signals, stored, strict=True))
            if signal.kind is SignalKind.EVENT
            and row.result is IngestResult.ACCEPTED
            and row.signal_id is not None
        }
        if not ids:
            return 0
        states = await self.lock_states(conn, self.state_accounts([signals[i] for i in ids]))
        plan = self.plan(signals, sorted(ids), ids=ids, states=states)
        done = await write_batch(
            conn,
            BatchWrite(decisions=plan.decisions, outbox=plan.outbox),
            duplicate_window_s=duplicate_window_s,
        )
        await self.save_states(conn, plan.states)
        return self.finish(plan, done)
