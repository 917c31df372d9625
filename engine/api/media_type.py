"""A request body is read as JSON only when its ``Content-Type`` says it is JSON.

litestar decodes the body of a handler's ``data`` parameter as JSON whatever the request says
it is: a form (``application/x-www-form-urlencoded``), ``text/plain`` or no type at all was
taken as JSON when it parsed as such. A body that says it is something else is refused (415),
naming the type the API takes; a request without a body is left alone.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from engine.api.auth import provide_caller
from engine.api.problems import unsupported_media_type

JSON_MEDIA_TYPE = "application/json"
# RFC 8259 §8.1: JSON text is UTF-8; the parameter is tolerated when it says so and refused
# when it names another charset, which the decoder would misread.
_UTF_8 = frozenset({"utf-8", "utf8"})


def takes_body(handler: Any) -> bool:
    """``handler`` (a litestar route handler) reads the request body into ``data``."""
    return "data" in handler.parsed_fn_signature.parameters


def is_json(content_type: tuple[str, dict[str, str]]) -> bool:
    """A parsed ``Content-Type`` (litestar's ``request.content_type``) says UTF-8 JSON."""
    media_type, options = content_type
    return media_type == JSON_MEDIA_TYPE and options.get("charset", "utf-8").lower() in _UTF_8


async def refuse_other_media_types(request: Request[Any, Any, Any]) -> None:
    """415 for a body sent to a handler that reads JSON under another ``Content-Type`` (a
    caller without a valid key gets its 401 first)."""
    if not takes_body(request.route_handler) or is_json(request.content_type):
        return
    if not await request.body():
        return  # no body: the handler's own answer (400 body required)
    await provide_caller(request, request.app.state)
    raise unsupported_media_type(request.headers.get("Content-Type", ""), JSON_MEDIA_TYPE)
