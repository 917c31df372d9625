"""Delivery lanes: deliveries go strictly in order per station account at a primary receiver."""

from __future__ import annotations


def lane_for(station_account: str | None, primary_receiver: str | None) -> str:
    """The lane of deliveries to ``station_account`` at ``primary_receiver``."""
    return f"{station_account}@{primary_receiver}"
