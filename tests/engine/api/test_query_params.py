"""The query parameters each endpoint takes, as the unknown-parameter check sees them."""

from __future__ import annotations

import gc
from typing import Any

from engine.api import query_params
from engine.api.app import create_app


def _handlers() -> list[Any]:
    app = create_app(pool=None)  # type: ignore[arg-type]  # never queried here
    return [h for r in app.routes if hasattr(r, "route_handlers") for h in r.route_handlers]


def test_each_apps_handlers_have_their_own_parameters() -> None:
    """Every app has its own copies of the handlers; one built after another was freed (the
    tests build one per test) must not get the parameters an earlier app's handler had at the
    same address: a valid filter answered 400 unknown, or a mistyped one was taken."""
    first = {
        str(sorted(h.paths)) + str(sorted(h.http_methods)): query_params.query_parameters(h)
        for h in _handlers()
    }
    for _ in range(10):
        gc.collect()
        for handler in _handlers():
            key = str(sorted(handler.paths)) + str(sorted(handler.http_methods))
            assert query_params.query_parameters(handler) == first[key], key
