"""Two-way voice after a delivered fire or CO alarm (PRODUCT.md "Two-way voice").

Once the station has acknowledged the alarm, :meth:`VoiceSessions.after_delivery`

1. sends listen-in-to-follow (Contact ID 606 / SIA LF) to **the receiver that acknowledged the
   alarm**, on that receiver's own connections. Not through the primary/backup group: the group may
   fail back to the primary in between, and the 606 would reach operators who never got the alarm;
2. publishes ``start_voice_session`` with ``siren_off: true`` on the module's command topic;
3. records the outcome on the alarm's delivery (``voice_session_state``, ``voice_session_at``,
   ``voice_session_error``, ``voice_command_attempts``; migration 0430).

**A receiver without two-way voice.** Eligibility is checked against the selected (primary)
receiver when the option is set; after a failover the alarm may be acknowledged by a backup that has
no two-way voice. Then neither is sent. A 606 there announces audio that no operator can take, and
the command would turn the siren off with nobody listening (FIELD_NOTES §4: the siren is shut off
*so that the call can be heard*). The delivery records ``not_started`` and why,
``voice_session_not_started`` is logged (warning) and
``alarmrelay_voice_sessions_total{result="receiver_unsupported"}`` counts it (``receiver_unknown``
when the receiver was removed since).

**A module that can never get the command** (MQTT disabled, an account without a module serial):
the listen-in is not sent either. It would tell the operator to wait for audio that cannot come,
and the operator would not call the premises meanwhile. The delivery records ``not_started``
(``alarmrelay_voice_sessions_total{result="command_impossible"}``).

**A listen-in the receiver did not acknowledge.** The command still goes, so the module calls
the station, but with ``siren_off: false``: nobody is known to be listening, and the siren is
the occupants' fire or CO warning (it is silenced only so that a call can be heard). Recorded as
``incomplete``, with why and "siren left on".

**A command that cannot be published** (broker unreachable, connection lost before the PUBACK, no
PUBACK, refused) is not dropped. Each failed attempt is logged (``voice_command_failed``) and
counted (``alarmrelay_voice_commands_total{result="failed"}``); the delivery shows
``command_retrying`` with the error; the command is retried with backoff for
``mqtt.command_retry_s``. A session is only worth starting while the operator handles the alarm:
panels end sessions after 90 s, and operators move on to the call list when 2WV does not answer
(§4). The final outcome is recorded as ``started`` (a command sent after retries keeps its earlier
failure in ``voice_session_error``) or ``incomplete``. Retries run in this process
only: an engine stopped during them leaves ``command_retrying`` on the delivery (unfinished and
visible, not lost silently). The lane does not wait for them: the listen-in is sent before the
lane moves on, the command in a task of its own (a new event goes first, as DSC panels do, §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import structlog

from engine import metrics
from engine.errors import DATABASE_ERRORS
from engine.forwarding_stage import OwnedDelivery
from engine.station_model import ReceiverConfig
from protocols.signal import Category, Classification, Event, Family

log = structlog.get_logger("engine.voice_session")


_RECORD_SQL = """
UPDATE deliveries SET voice_session_state = $2, voice_session_error = $3,
    voice_command_attempts = $4,
    voice_session_at = CASE WHEN $2 IN ('started', 'incomplete') THEN now() END
WHERE id = $1
"""


# A session is worth starting only while the alarm is being handled: panels end a session after
# 90 s, and operators move on to the call list when two-way voice does not answer (FIELD_NOTES
# §4). An alarm delivered later (requeued, or retried through a station outage) goes alone: a
# listen-in would announce audio nobody expects, and the command would silence the siren.
MAX_ALARM_AGE_S = 120


class VoiceCommandImpossible(Exception):
    """The command cannot be sent at all (MQTT disabled, no module serial): never retried."""


# (account, signal id, siren off): publish the module's start_voice_session command.
VoiceCommand = Callable[[str, int, bool], Awaitable[None]]
# Why the account's module cannot be sent a voice command at all (MQTT disabled, no module
# serial), or None.
VoiceCommandProblem = Callable[[str], str | None]


class VoiceReceiver(Protocol):
    """One receiver's connections (receivers.Dc09ReceiverPool)."""

    @property
    def config(self) -> ReceiverConfig: ...

    async def send(self, *, account: str, event: Event, seq: str | None = None) -> Any: ...


class VoiceRegistry(Protocol):
    def client(self, name: str) -> VoiceReceiver: ...


def listen_in_event(alarm: Event) -> Event:
    """Listen-in to follow (Contact ID 606 / SIA LF) for the alarm's zone and partition."""
    if alarm.family is Family.SIA:
        return Event(
            family=Family.SIA,
            code="LF",
            zone=alarm.zone,
            partition=alarm.partition,
            classification=Classification(category=Category.OTHER),
        )
    return Event(
        family=Family.CID,
        code="606",
        qualifier="1",
        zone=alarm.zone,
        partition=alarm.partition,
        classification=Classification(category=Category.OTHER),
    )


class VoiceSessions:
    """Starts the voice session of each delivered fire/CO alarm; owns the command retries."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        command: VoiceCommand | None,
        *,
        command_problem: VoiceCommandProblem | None = None,
        retry_s: float = 60.0,
        retry_base_s: float = 1.0,
        retry_max_s: float = 10.0,
    ) -> None:
        self._pool = pool
        self._command = command
        self._command_problem = command_problem
        self._retry_s = retry_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._tasks: set[asyncio.Task[None]] = set()

    async def after_delivery(
        self, row: OwnedDelivery, receiver: str, registry: VoiceRegistry, bound: Any
    ) -> None:
        """The alarm of ``row`` was acknowledged by ``receiver``: send the listen-in there and
        start the module's command (returns once the listen-in is answered)."""
        age = (datetime.now(UTC) - row.received_at).total_seconds()
        if age > MAX_ALARM_AGE_S:
            await self._not_started(
                row,
                "too_late",
                f"the alarm reached the station {age:.0f} s after it came in (a requeue, or "
                f"retries while the station was out of reach; more than {MAX_ALARM_AGE_S} s): "
                "no listen-in sent, no voice command",
                bound,
            )
            return
        try:
            client = registry.client(receiver)
        except KeyError as exc:  # the receiver was removed since the alarm was sent
            await self._not_started(row, "receiver_unknown", f"{exc}: no listen-in sent", bound)
            return
        if not client.config.two_way_voice:
            role = "backup" if receiver == row.backup_receiver else "receiver"
            await self._not_started(
                row,
                "receiver_unsupported",
                f"the alarm was delivered to {role} {receiver!r}, which does not support "
                "two-way voice: no listen-in sent, no voice command",
                bound,
            )
            return
        impossible = self._impossible(row.account)
        if impossible is not None:
            await self._not_started(
                row,
                "command_impossible",
                f"voice command not possible: {impossible}: no listen-in sent",
                bound,
            )
            return
        listen_in = listen_in_event(row.event)
        problems: list[str] = []
        try:
            attempt = await client.send(account=row.station_account, event=listen_in)
        except Exception as exc:  # the alarm is delivered: a connector bug must not undo that
            problems.append(f"listen-in not sent: {type(exc).__name__}: {exc}")
        else:
            if str(getattr(attempt, "outcome", "failed")) != "acked":
                problems.append(f"listen-in not acknowledged: {getattr(attempt, 'error', None)}")
        task = asyncio.create_task(
            self._command_with_retries(row, receiver, problems, bound),
            name=f"voice-command-{row.id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Give the commands under way a moment, then cancel their retries (recorded as retrying)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _command_with_retries(
        self, row: OwnedDelivery, receiver: str, problems: list[str], bound: Any
    ) -> None:
        give_up_at = time.monotonic() + self._retry_s
        attempts = 0
        last_failure: str | None = None
        sent = False
        try:
            while True:
                attempts += 1
                failure = await self._send_command(row, siren_off=not problems)
                if failure is None:
                    sent = True
                    metrics.VOICE_COMMANDS.labels("sent").inc()
                    break
                last_failure, permanent = failure
                metrics.VOICE_COMMANDS.labels("failed").inc()
                delay = min(self._retry_max_s, self._retry_base_s * 2 ** (attempts - 1))
                retrying = not permanent and time.monotonic() + delay <= give_up_at
                bound.warning(
                    "voice_command_failed", error=last_failure, attempts=attempts, retrying=retrying
                )
                if not retrying:
                    break
                # Visible while it is retried (and if this engine stops meanwhile).
                if attempts == 1:
                    await self._record(
                        row, "command_retrying", "; ".join([*problems, last_failure]), 1
                    )
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            # The engine stops while the command is under way (even its first attempt, which
            # can wait 10 s for the PUBACK): leave it visible, never a delivery without a record,
            # and keep why the attempts made so far failed.
            stopped = "the engine stopped before the voice command was confirmed"
            notes = [*problems, *([last_failure] if last_failure else []), stopped]
            await self._record(row, "command_retrying", "; ".join(notes), attempts)
            raise
        notes = list(problems)
        if sent and problems:
            notes.append("siren left on: no operator is known to be listening")
        if not sent:
            notes.append(f"{last_failure} (gave up after {attempts} attempt{'s' * (attempts > 1)})")
        elif last_failure is not None:  # sent in the end: the failures stay on record
            notes.append(f"voice command sent on attempt {attempts}, after: {last_failure}")
        state = "started" if sent and not problems else "incomplete"
        await self._record(row, state, "; ".join(notes) or None, attempts)
        metrics.VOICE_SESSIONS.labels(state).inc()
        bound.info(
            "voice_session", receiver=receiver, state=state, errors=notes or None,
            command_attempts=attempts,
        )  # fmt: skip

    def _impossible(self, account: str) -> str | None:
        if self._command is None:
            return "MQTT is disabled"
        return self._command_problem(account) if self._command_problem is not None else None

    async def _send_command(
        self, row: OwnedDelivery, *, siren_off: bool
    ) -> tuple[str, bool] | None:
        """None when the module's command was published (PUBACKed), else (why not, permanent)."""
        if self._command is None:
            return "voice command not sent: MQTT is disabled", True
        try:
            await self._command(row.account, row.signal_id, siren_off)
        except VoiceCommandImpossible as exc:
            return f"voice command not sent: {exc}", True
        except Exception as exc:  # any publish failure is retried
            return f"voice command not sent: {type(exc).__name__}: {exc}", False
        return None

    async def _not_started(self, row: OwnedDelivery, result: str, reason: str, bound: Any) -> None:
        await self._record(row, "not_started", reason, 0)
        metrics.VOICE_SESSIONS.labels(result).inc()
        bound.warning("voice_session_not_started", result=result, reason=reason)

    async def _record(
        self, row: OwnedDelivery, state: str, error: str | None, attempts: int
    ) -> None:
        # As the delivery's own outcome: retried through a short database blip.
        for attempt in range(5):
            try:
                await self._pool.execute(_RECORD_SQL, row.id, state, error, attempts)
            except DATABASE_ERRORS as exc:
                log.warning("voice_session_record_failed", error=repr(exc), attempt=attempt)
                await asyncio.sleep(0.2 * (attempt + 1))
            else:
                return
