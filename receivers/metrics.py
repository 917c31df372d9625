"""Metrics of the station-side connectors (labels: receiver or group name, never an account)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

LINK_UP = Gauge(
    "alarmrelay_receiver_link_up",
    "1 while the last exchange with the receiver succeeded.",
    ["receiver"],
)
POLLS = Counter(
    "alarmrelay_receiver_polls_total",
    "NULL link polls sent to receivers, by result.",
    ["receiver", "result"],
)
FAILOVERS = Counter(
    "alarmrelay_receiver_failovers_total",
    "Switches from a primary receiver to its backup.",
    ["primary"],
)
FAILBACKS = Counter(
    "alarmrelay_receiver_failbacks_total",
    "Returns from the backup to the primary receiver.",
    ["primary"],
)


def forget_receiver(name: str) -> None:
    """Drop a receiver's series once it is no longer configured (deleted, renamed, made a phone
    receiver): its last link state would otherwise stay exported, a 0 paging "receiver down"
    until the engine restarts."""
    for metric in (LINK_UP, FAILOVERS, FAILBACKS):
        with contextlib.suppress(KeyError):
            metric.remove(name)
