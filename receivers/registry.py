"""All IP receivers the engine can deliver to, and the primary/backup groups built from them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from engine.station_model import ReceiverConfig, receiver_problem
from receivers import metrics
from receivers.dc09_client import Dc09ReceiverPool
from receivers.receiver_group import ReceiverGroup

log = structlog.get_logger("receivers.registry")


class UnknownReceiverError(KeyError):
    """No IP receiver by that name (a typo, a deleted receiver or a phone receiver)."""

    def __str__(self) -> str:
        return str(self.args[0])  # KeyError would quote the message


@dataclass(frozen=True, slots=True)
class LinkState:
    """A receiver's link as this process sees it right now."""

    link_up: bool  # the most recent exchange (frame or NULL poll) was answered
    failed_over: bool  # a group with this receiver as primary is delivering to its backup


class ReceiverRegistry:
    """Clients by receiver name; ``group(primary, backup)`` is cached per pair."""

    def __init__(
        self,
        receivers: Iterable[ReceiverConfig],
        *,
        failover_after: int = 3,
        connections: int | None = None,
        previous: ReceiverRegistry | None = None,
    ) -> None:
        """``connections``: per receiver, overriding each receiver's own ``connections``.

        ``previous``: the registry this one replaces. A receiver whose settings did not change
        keeps its connections, link state and NULL polls, and a group whose receivers all did
        keeps its failover state: a change to another station's receivers must not send alarms
        back to a primary known to be down (each would wait out its ACK timeouts again)."""
        before = previous._clients if previous is not None else {}
        self._clients: dict[str, Dc09ReceiverPool] = {}
        for r in receivers:
            if r.kind != "ip":
                continue
            count = connections if connections is not None else r.connections
            old = before.get(r.name)
            if old is not None and old.config == r and len(old.connections) == count:
                self._clients[r.name] = old
                continue
            problem = receiver_problem(r)
            if problem is not None:
                # A row no validated path writes (a manual edit): left out, as if deleted, so
                # that the others load (and the engine starts); never logs the key.
                log.error("receiver_row_invalid", receiver=r.name, error=problem)
                continue
            self._clients[r.name] = Dc09ReceiverPool(r, connections=count)
        self._groups: dict[tuple[str, str | None], ReceiverGroup] = {}
        self._failover_after = failover_after
        if previous is not None and previous._failover_after == failover_after:
            for key, group in previous._groups.items():
                if self._members(*key) == (group.primary, group.backup):
                    self._groups[key] = group

    def _members(
        self, primary: str, backup: str | None
    ) -> tuple[Dc09ReceiverPool | None, Dc09ReceiverPool | None]:
        """The (delivering, backup) receivers of a pair's group, as :meth:`group` builds it."""
        first = self._clients.get(primary)
        second = self._clients.get(backup) if backup else None
        return (first or second, second if first is not None else None)

    @property
    def names(self) -> list[str]:
        return sorted(self._clients)

    def client(self, name: str) -> Dc09ReceiverPool:
        """The connections to receiver ``name``; :class:`UnknownReceiverError` if there is none."""
        try:
            return self._clients[name]
        except KeyError:
            known = ", ".join(self.names) or "none"
            raise UnknownReceiverError(
                f"no IP receiver named {name!r} (known: {known}; phone receivers cannot be "
                "delivered to)"
            ) from None

    def group(self, primary: str, backup: str | None) -> ReceiverGroup:
        """The group for this primary/backup pair (one per pair, so failover state is shared).

        A pair with one receiver unknown (not added yet, deleted, a typo) delivers through the
        other alone, logged once (``receiver_group_incomplete``): an alarm is not held back by a
        receiver it would only need if the other failed. Both unknown:
        :class:`UnknownReceiverError`, naming the primary.
        """
        key = (primary, backup)
        group = self._groups.get(key)
        if group is None:
            first = self._clients.get(primary)
            second = self._clients.get(backup) if backup else None
            if first is None and second is None:
                self.client(primary)  # raises, naming it and the known receivers
            missing = [n for n, c in ((primary, first), (backup, second)) if n and c is None]
            if missing:
                log.warning(
                    "receiver_group_incomplete",
                    primary=primary,
                    backup=backup,
                    missing=missing,
                    known=self.names,
                )
            only, behind = self._members(primary, backup)
            assert only is not None
            group = ReceiverGroup(only, behind, failover_after=self._failover_after)
            self._groups[key] = group
        return group

    def link_states(self) -> dict[str, LinkState]:
        """Each IP receiver's current link state (for the admin API's station status)."""
        # Where the next delivery goes: a group whose primary is back is no longer failed over,
        # even before a delivery has come to fail it back.
        failed_over = {primary for (primary, _), g in self._groups.items() if g.on_backup}
        return {
            name: LinkState(link_up=client.link_up, failed_over=name in failed_over)
            for name, client in self._clients.items()
        }

    def start(self) -> None:
        """Start every receiver's NULL polls (they drive link state and fail-back)."""
        for client in self._clients.values():
            client.start()

    def pools(self) -> list[Dc09ReceiverPool]:
        """Every IP receiver's connections (shared with a successor that kept them)."""
        return list(self._clients.values())

    async def close(self, *, keep: Iterable[Dc09ReceiverPool] = ()) -> None:
        """Stop polls and close every connection, except those of ``keep`` (still in use by
        the registry that replaced this one)."""
        kept = list(keep)
        kept_ids = {id(pool) for pool in kept}
        kept_names = {pool.name for pool in kept}
        for client in self._clients.values():
            if id(client) not in kept_ids:
                await client.close()
                if client.name not in kept_names:
                    # Deleted (or no longer an IP receiver): its series go too, rather than
                    # keep their last values (a 0 would keep the receiver-down alert firing).
                    metrics.forget_receiver(client.name)
