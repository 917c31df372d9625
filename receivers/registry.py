"""All IP receivers the engine can deliver to, and the primary/backup groups built from them."""

from __future__ import annotations

from collections.abc import Iterable

from engine.station_model import ReceiverConfig
from receivers.dc09_client import Dc09ReceiverPool
from receivers.receiver_group import ReceiverGroup


class ReceiverRegistry:
    """Clients by receiver name; ``group(primary, backup)`` is cached per pair."""

    def __init__(
        self, receivers: Iterable[ReceiverConfig], *, failover_after: int = 3, connections: int = 4
    ) -> None:
        self._clients = {
            r.name: Dc09ReceiverPool(r, connections=connections)
            for r in receivers
            if r.kind == "ip"
        }
        self._groups: dict[tuple[str, str | None], ReceiverGroup] = {}
        self._failover_after = failover_after

    @property
    def names(self) -> list[str]:
        return sorted(self._clients)

    def client(self, name: str) -> Dc09ReceiverPool:
        try:
            return self._clients[name]
        except KeyError:
            raise KeyError(
                f"no IP receiver named {name!r} (phone receivers cannot be delivered to)"
            ) from None

    def group(self, primary: str, backup: str | None) -> ReceiverGroup:
        key = (primary, backup)
        group = self._groups.get(key)
        if group is None:
            group = ReceiverGroup(
                self.client(primary),
                self.client(backup) if backup else None,
                failover_after=self._failover_after,
            )
            self._groups[key] = group
        return group

    def start(self) -> None:
        for client in self._clients.values():
            client.start()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
