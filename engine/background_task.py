"""Engine tasks that must outlive their own failures (the outbox dispatcher, the lease renewal,
the durable timers).

Such a loop catches the database errors it expects and tries again. One that ended on an error
nobody foresaw would stop forwarding alarms with the process still up and nothing said:
:func:`restart_on_failure` logs that error with its traceback (``background_task_failed``),
counts it (``alarmrelay_background_task_failures_total{task}``) and starts the loop again after a
pause. Cancellation (the engine stopping) ends it as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from engine import metrics

log = structlog.get_logger("engine.background_task")


async def restart_on_failure(
    task: str, loop: Callable[[], Awaitable[None]], *, pause_s: float = 1.0
) -> None:
    """Run ``loop()`` until it returns; after an unexpected exception, log it and run it again."""
    # The task's series exists at 0 before its first failure, or increase() would not see it.
    failures = metrics.BACKGROUND_TASK_FAILURES.labels(task=task)
    while True:
        try:
            await loop()
        except Exception as exc:
            log.error("background_task_failed", task=task, error=repr(exc), exc_info=True)
            failures.inc()
            await asyncio.sleep(pause_s)
        else:
            return
