"""A body field takes a value of its own JSON type only: ``1`` or ``"true"`` is not ``true``,
``"5"`` or ``5.0`` is not ``5``.

litestar converts the handler's arguments with msgspec's lax mode (which query and path
parameters, all text, need) and the body with them, so ``{"own": 1}`` was taken as true and
``{"port": "9100"}`` as 9100: a tool that sends the wrong type has a bug the answer hid. The body
is decoded strictly against the handler's type first; a value of another type is a 400 naming
the field (rule ``type``), as litestar's own errors are.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException

from engine.api.auth import provide_caller
from engine.api.media_type import takes_body

# msgspec's message and where it is: "Expected `bool`, got `int` - at `$.receivers[0].own`".
_AT = re.compile(r" - at `\$(.*)`$")


def body_error(exc: msgspec.ValidationError) -> dict[str, str]:
    """msgspec's error as one item of litestar's ``ValidationException.extra`` (the key named
    after the handler's ``data`` parameter, which the problem handler turns into the body's own
    path)."""
    text = str(exc)
    at = _AT.search(text)
    where = at.group(1) if at else ""
    message = text[: at.start()] if at else text
    key = "data" + (f".{where.removeprefix('.')}" if where.startswith(".") else "")
    return {"key": key, "message": message, "source": "body"}


def strict_errors(body: bytes, body_type: Any) -> list[dict[str, str]]:
    """The error of ``body`` decoded strictly as ``body_type`` (none when it decodes, or when it
    is not JSON at all: litestar's own 400 answers that, rule json or depth)."""
    try:
        msgspec.json.decode(body, type=body_type, strict=True)
    except msgspec.ValidationError as exc:
        # The typed decoder stops at the first value of a wrong type, before it has seen
        # whether the rest is JSON ("[" * 100_000 is an array where an object belongs).
        return [body_error(exc)] if _is_json(body) else []
    except msgspec.DecodeError:
        return []
    return []


def _is_json(body: bytes) -> bool:
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


async def refuse_lax_values(request: Request[Any, Any, Any]) -> None:
    """400 for a body value litestar would only take by converting it from another type (a
    caller without a valid key gets its 401 first)."""
    handler = request.route_handler
    if not takes_body(handler):
        return
    body = await request.body()
    if not body:
        return
    errors = strict_errors(body, handler.parsed_fn_signature.parameters["data"].annotation)
    if not errors:
        return
    await provide_caller(request, request.app.state)
    query = f"?{request.url.query}" if request.url.query else ""
    raise ValidationException(
        detail=f"Validation failed for {request.method} {request.url.path}{query}", extra=errors
    )
