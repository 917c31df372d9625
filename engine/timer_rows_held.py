"""Due timer rows another transaction holds: logged and counted once per hold, never waited for.

A timer round locks its due rows ``FOR UPDATE SKIP LOCKED`` and, in the same statement, reads the
due rows it could not lock (an operator's transaction left open in psql, a stuck admin call, a
commit of that account in progress). Those are not fired in that round and not waited for: the
other rows fire on time. :class:`HeldTimerRows` remembers them from round to round, so each hold
is logged once (``<timer>_row_held``, warning) and counted once
(``alarmrelay_timer_rows_held_total{timer}``) when a round ``max_sleep_s`` or more after the
first that found it held finds it still held, and its end is logged when the row is no longer
found held (``<timer>_row_released``, info). While rows are held the timer looks again every
``max_sleep_s`` instead of waking for their passed deadlines (which would spin).

A due row whose alarm goes to a delivery lane another transaction holds (the lane's advisory lock:
a dispatcher recording a failure while it waits for a row) is left pending and reported the same
way (``lock="lane"``): the round's commit would wait for that lock, and past the lock timeout
fail, with every other row of the round (:func:`on_held_lanes`); :func:`fire_round` tries the
round again without them, and while lanes are found held goes without them at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from datetime import datetime, timedelta

import asyncpg
import structlog

from engine.deadline_timer import TIMER_ROWS_HELD
from engine.forwarding_stage import ForwardingStage
from engine.ingest_types import InboundSignal
from engine.store.held_rows import held_lanes

log = structlog.get_logger("engine.timers")


class HeldTimerRows:
    """The due rows of one timer found held in its latest rounds, by key (account, partition).

    A row is reported held when the rounds found it so for ``report_after_s`` (the timer's
    ``max_sleep_s``: while rows are held it looks again that often) or more. A round that fired
    something is followed at once by another: a row locked only for a moment (another engine's
    timer firing it, a commit of its account) may be found held by both, and is fired or free
    by the time a round that much later looks.
    """

    def __init__(self, timer: str, *, report_after_s: float) -> None:
        self._timer = timer
        self._report_after = timedelta(seconds=report_after_s)
        # found held by the latest round: key → (its fields, the first round's instant, of the
        # rounds in a row that found it)
        self._seen: dict[Hashable, tuple[Mapping[str, object], datetime]] = {}
        self._reported: dict[Hashable, Mapping[str, object]] = {}

    def __bool__(self) -> bool:
        """Whether the latest round found due rows it could not lock."""
        return bool(self._seen)

    @property
    def on_lanes(self) -> bool:
        """Whether the latest round found due rows whose delivery lane was held."""
        return any(fields.get("lock") == "lane" for fields, _ in self._seen.values())

    def found(
        self, held: Mapping[Hashable, tuple[Mapping[str, object], datetime]], now: datetime
    ) -> None:
        """The latest round, at ``now``, found ``held``: key → (the fields that name the row in
        the log, never a secret; its deadline)."""
        for key in [k for k in self._reported if k not in held]:
            log.info(f"{self._timer}_row_released", **self._reported.pop(key))
        seen: dict[Hashable, tuple[Mapping[str, object], datetime]] = {}
        for key, (fields, deadline) in held.items():
            first = self._seen[key][1] if key in self._seen else now
            seen[key] = (fields, min(first, now))  # (the clock set back: from now)
            if key in self._reported or now - first < self._report_after:
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
        self._seen = seen


async def fire_round(round_: Callable[[bool], Awaitable[int]], held: HeldTimerRows) -> int:
    """Run a timer's round, ``round_(lanes)``: one transaction firing the due rows it locked,
    leaving those held; with ``lanes`` also those whose delivery lane another transaction holds
    (:func:`on_held_lanes`). Its commit waits for no lane it was told of: a round is tried
    without ``lanes`` first (nothing more to look at), and once more with them when its commit
    waited past its lock timeout for a lane; while the latest round found lanes held, with them
    at once (else every round would wait that timeout again, the due rows locked meanwhile)."""
    if held.on_lanes:
        return await round_(True)
    try:
        return await round_(False)
    except asyncpg.LockNotAvailableError:
        return await round_(True)


async def on_held_lanes(
    conn: asyncpg.Connection, forwarding: ForwardingStage, signals: Sequence[InboundSignal]
) -> dict[int, str]:
    """Positions of ``signals`` (server-generated) whose delivery goes to a lane another
    transaction holds now, each with that lane. The other lanes' locks are taken until the
    caller's transaction ends, so its commit of their rows waits for none of them."""
    outbox = forwarding.plan(signals, range(len(signals))).outbox
    held = await held_lanes(conn, {row.lane for row in outbox})
    return {row.o: row.lane for row in outbox if row.lane in held and row.o is not None}
