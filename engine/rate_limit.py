"""Rate limits of the DC-09 listener: a token bucket per TCP connection, one per UDP source.

A UDP source is its address and port (one module; modules behind one NAT keep apart by port).
Its table is bounded: past ``max_sources`` the source heard from longest ago is forgotten (it
starts again with a full bucket), so a flood from many addresses costs memory only up to the
bound.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable


class TokenBucket:
    """``rate`` frames per second with a burst of ``burst``. ``shed`` counts the frames dropped
    since the last one let through (one log line per run of drops)."""

    __slots__ = ("_last", "_rate", "_tokens", "burst", "shed")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self._rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic() if now is None else now
        self.shed = 0

    def take(self, now: float) -> bool:
        """Take one token; False when the bucket is empty."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def empty(self, now: float) -> bool:
        """Whether the next frame would be refused (nothing taken): a datagram can be dropped
        before it is parsed or decrypted."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens < 1.0


class SourceRateLimit:
    """The buckets of the sources heard from most recently, at most ``max_sources``."""

    def __init__(self, rate: float, burst: float, *, max_sources: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max_sources = max(1, max_sources)
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, source: Hashable, now: float) -> TokenBucket:
        """The source's bucket, a full one for a source not (or no longer) in the table."""
        found = self._buckets.get(source)
        if found is not None:
            self._buckets.move_to_end(source)
            return found
        if len(self._buckets) >= self._max_sources:
            self._buckets.popitem(last=False)
        made = self._buckets[source] = TokenBucket(self._rate, self._burst, now)
        return made
