"""A primary receiver with an optional backup: fail over after N consecutive failures, fail back
when the primary's link is healthy again (a successful NULL poll). A frame the primary refuses
(DUH) goes to the backup in the same delivery, without failing over."""

from __future__ import annotations

import msgspec
import structlog

from protocols.signal import Event
from receivers import metrics
from receivers.dc09_client import Dc09ReceiverClient, Dc09ReceiverPool, DeliveryAttempt

log = structlog.get_logger("receivers.group")


class ReceiverGroup:
    """Delivers through the primary, or the backup while the primary is failed over."""

    def __init__(
        self,
        primary: Dc09ReceiverClient | Dc09ReceiverPool,
        backup: Dc09ReceiverClient | Dc09ReceiverPool | None,
        *,
        failover_after: int = 3,
    ) -> None:
        self.primary = primary
        self.backup = backup
        self.failover_after = failover_after
        self._failures = 0
        self.failed_over = False

    @property
    def on_backup(self) -> bool:
        """Whether the next delivery goes to the backup: failed over, and the primary's link
        is not up again (the next delivery fails back then)."""
        return self.failed_over and self.backup is not None and not self.primary.link_up

    async def deliver(
        self, *, account: str, event: Event, seq: str | None = None, priority: int = 0
    ) -> DeliveryAttempt:
        """Send ``event`` to the active receiver (and to the backup at once when failing over).

        ``priority`` (0 first): the order in which deliveries waiting for one of a receiver's
        connections get it (the outbox row's)."""
        if self.failed_over and self.primary.link_up:
            self.failed_over = False
            self._failures = 0
            metrics.FAILBACKS.labels(self.primary.name).inc()
            log.info("receiver_failback", primary=self.primary.name)
        if self.failed_over and self.backup is not None:
            return await _send(self.backup, account, event, seq, priority)
        if self.backup is None:
            attempt = await _send(self.primary, account, event, seq, priority)
        else:
            maybe = await self._send_to_primary(
                account=account, event=event, seq=seq, priority=priority
            )
            if maybe is None:  # failed over while it waited for a connection to the primary
                return await _send(self.backup, account, event, seq, priority)
            attempt = maybe
        if attempt.outcome == "unsendable":
            return attempt  # nothing was sent: says nothing about the primary's link
        if attempt.outcome == "duh" and self.backup is not None:
            # The primary refuses this frame (an account or key only the backup has, data it
            # cannot read): its link works, so no failover, but the backup may take it. The
            # delivery is dead only when the backup refuses it too.
            self._failures = 0
            moved = await _send(self.backup, account, event, seq, priority)
            return msgspec.structs.replace(moved, failed_over_from=attempt)
        if attempt.outcome != "failed":
            self._failures = 0
            return attempt
        self._failures += 1
        if self.backup is not None and self._failures >= self.failover_after:
            if not self.failed_over:  # one switch, however many sends failed together
                self.failed_over = True
                metrics.FAILOVERS.labels(self.primary.name).inc()
                log.warning(
                    "receiver_failover",
                    primary=self.primary.name,
                    backup=self.backup.name,
                    failures=self._failures,
                )
            moved = await _send(self.backup, account, event, seq, priority)
            return msgspec.structs.replace(moved, failed_over_from=attempt)
        return attempt

    async def _send_to_primary(
        self, *, account: str, event: Event, seq: str | None, priority: int
    ) -> DeliveryAttempt | None:
        """The primary's attempt; None when the group failed over while this send waited for
        one of the primary's connections (the others' timeouts): it goes to the backup at once
        instead of waiting out its own timeout on a receiver known to be down."""
        if isinstance(self.primary, Dc09ReceiverPool):
            return await self.primary.send_unless(
                lambda: self.failed_over, account=account, event=event, seq=seq, priority=priority
            )
        return await self.primary.send(account=account, event=event, seq=seq)


async def _send(
    target: Dc09ReceiverClient | Dc09ReceiverPool,
    account: str,
    event: Event,
    seq: str | None,
    priority: int,
) -> DeliveryAttempt:
    """``target.send``; a pool's callers waiting for a connection go by ``priority`` (one
    connection's go in call order)."""
    if isinstance(target, Dc09ReceiverPool):
        return await target.send(account=account, event=event, seq=seq, priority=priority)
    return await target.send(account=account, event=event, seq=seq)
