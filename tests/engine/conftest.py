"""Fixtures shared by the engine's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from engine.station_sim import StationSimulator


@pytest.fixture
async def station() -> AsyncIterator[StationSimulator]:
    """A station simulator (DC-09 TCP and UDP on a free port), ACKing everything."""
    sim = StationSimulator()
    await sim.start()
    yield sim
    await sim.stop()
