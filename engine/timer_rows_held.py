"""Due timer rows another transaction holds: logged and counted once per hold, never waited for.

A timer round locks its due rows ``FOR UPDATE SKIP LOCKED`` and, in the same statement, reads the
due rows it could not lock (an operator's transaction left open in psql, a stuck admin call, a
commit of that account in progress). Those are not fired in that round and not waited for: the
other rows fire on time. :class:`HeldTimerRows` remembers them from round to round, so each hold
is logged once (``<timer>_row_held``, warning) and counted once
(``alarmrelay_timer_rows_held_total{timer}``) when a second round finds it still held, and its
end is logged when the row is no longer found held (``<timer>_row_released``, info). While rows
are held the timer looks again every ``max_sleep_s`` instead of waking for their passed
deadlines (which would spin).

A due row whose alarm goes to a delivery lane another transaction holds (the lane's advisory lock:
a dispatcher recording a failure while it waits for a row) is left pending and reported the same
way (``lock="lane"``): the round's commit would wait for that lock, and past the lock timeout
fail, with every other row of the round (:func:`on_held_lanes`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime

import asyncpg
import structlog

from engine.deadline_timer import TIMER_ROWS_HELD
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal
from engine.store.held_rows import held_lanes

log = structlog.get_logger("engine.timers")


class HeldTimerRows:
    """The due rows of one timer found held in its latest rounds, by key (account, partition).

    A row is reported held when two rounds in a row found it so: the rounds are at least
    ``max_sleep_s`` apart while rows are held, and a row locked only for a moment (another
    engine's timer firing it, a commit of its account) is fired or free by the second one.
    """

    def __init__(self, timer: str) -> None:
        self._timer = timer
        self._seen: set[Hashable] = set()  # found held by the latest round
        self._reported: dict[Hashable, Mapping[str, object]] = {}

    def __bool__(self) -> bool:
        """Whether the latest round found due rows it could not lock."""
        return bool(self._seen)

    def found(self, held: Mapping[Hashable, tuple[Mapping[str, object], datetime]]) -> None:
        """The latest round found ``held``: key → (the fields that name the row in the log, never
        a secret; its deadline)."""
        for key in [k for k in self._reported if k not in held]:
            log.info(f"{self._timer}_row_released", **self._reported.pop(key))
        for key, (fields, deadline) in held.items():
            if key not in self._seen or key in self._reported:
                continue
            self._reported[key] = fields
            TIMER_ROWS_HELD.labels(self._timer).inc()
            log.warning(
                f"{self._timer}_row_held",
                **fields,
                deadline=deadline.isoformat(),
                reason="the row (lock=row) or its alarm's delivery lane (lock=lane) is held by "
                "another transaction: the other due rows fire on time, this one once it is free",
            )
        self._seen = set(held)


async def on_held_lanes(
    conn: asyncpg.Connection, forwarding: ForwardingStage, signals: Sequence[InboundSignal]
) -> dict[int, str]:
    """Positions of ``signals`` (server-generated) whose delivery goes to a lane another
    transaction holds now, each with that lane. The other lanes' locks are taken until the
    caller's transaction ends, so its commit of their rows waits for none of them."""
    outbox = forwarding.plan(signals, range(len(signals))).outbox
    held = await held_lanes(conn, {row.lane for row in outbox})
    return {row.o: row.lane for row in outbox if row.lane in held and row.o is not None}
