"""Keyset pagination: ``?limit=N&cursor=C``; a page carries ``next_cursor`` (None on the last)."""

from __future__ import annotations

from typing import Generic, TypeVar

import msgspec

T = TypeVar("T")
MAX_LIMIT = 500


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One page of a list, newest or lowest id first as the endpoint says."""

    items: list[T]
    next_cursor: int | None = None


def clamp_limit(limit: int) -> int:
    """A page size within 1..MAX_LIMIT."""
    return max(1, min(limit, MAX_LIMIT))
