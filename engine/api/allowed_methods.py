"""``OPTIONS`` answers every method its path takes, as a 405's ``Allow`` does.

litestar answers ``OPTIONS`` with a handler it makes for a path's first group of handlers; a path
whose handlers come from several modules (``GET`` and ``POST /v1/stations``, ``GET``, ``PATCH``
and ``DELETE /v1/drafts/{id}``) keeps that first handler, and its ``Allow`` listed only the
methods of that group (``OPTIONS, POST``). The answer is made here from every route of the path,
the routes the 405's ``Allow`` is made from.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response
from litestar.status_codes import HTTP_204_NO_CONTENT


def allowed_methods(app: Litestar, path_template: str) -> list[str]:
    """Every method the app's routes of ``path_template`` (as litestar puts it in the scope:
    ``/v1/dealers/{dealer_id}``) take, OPTIONS included, sorted."""
    methods: set[str] = set()
    for route in app.routes:
        if route.path_format == path_template:
            methods.update(route.methods)
    return sorted(methods)


def answer_options(request: Request[Any, Any, Any]) -> Response[None] | None:
    """The answer to an ``OPTIONS`` request (204 with ``Allow``); None for any other method."""
    template = request.scope.get("path_template")
    if request.method != "OPTIONS" or not template:
        return None
    methods = allowed_methods(request.app, template)
    if not methods:
        return None  # not a path of the app's routes: litestar's own answer
    allow = ", ".join(methods)
    return Response(content=None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": allow})
