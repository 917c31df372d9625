"""A JSON object that gives one key twice is refused (400, rule ``duplicate``).

JSON decoders keep one of the values, msgspec and litestar the last: ``{"mode": "never",
"mode": "always"}`` set forwarding to always without a word, while the tool that sent it meant
one of the two and has a bug. Which value counts is a guess the API does not make: every key
given more than once is named by its path in the body, and nothing is changed.
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Request

from engine.api.auth import provide_caller
from engine.api.media_type import takes_body
from engine.api.problems import FieldError, ProblemError

_LISTED = 20  # keys named at most in one answer
_MESSAGE = "given more than once in this object; send each key once"


class _Repeated(dict[str, Any]):
    """A decoded JSON object that gave the keys in ``repeated`` more than once."""

    repeated: list[str]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    repeated: list[str] = []
    for key, value in pairs:
        if key in found and key not in repeated:
            repeated.append(key)
        found[key] = value
    if not repeated:
        return found
    marked = _Repeated(found)
    marked.repeated = repeated
    return marked


def _not_json(constant: str) -> Any:
    raise ValueError(constant)  # NaN, Infinity: Python's json takes them, JSON does not


def repeated_keys(body: bytes) -> list[str]:
    """The paths (``forwarding.mode``, ``receivers[0].name``) of every key ``body`` gives twice
    in one object; none when ``body`` is not JSON (litestar's own 400 answers that)."""
    try:
        document = json.loads(
            body.decode("utf-8"), object_pairs_hook=_object, parse_constant=_not_json
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return []
    paths: list[str] = []
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _Repeated):
            paths.extend(_inside(path, key) for key in value.repeated)
        if isinstance(value, dict):
            pending.extend((_inside(path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            pending.extend((f"{path}[{n}]", item) for n, item in enumerate(value))
    return sorted(paths)


def _inside(path: str, key: str) -> str:
    if not key:
        return path or "body"  # {"": …}: the object holding it, as for unknown fields
    return f"{path}.{key}" if path else key


async def refuse_repeated_keys(request: Request[Any, Any, Any]) -> None:
    """400 naming each key a body gives twice in one object (a caller without a valid key gets
    its 401 first)."""
    if not takes_body(request.route_handler):
        return
    paths = repeated_keys(await request.body())
    if not paths:
        return
    await provide_caller(request, request.app.state)
    raise ProblemError(
        400,
        "Bad Request",
        f"{', '.join(p[:100] for p in paths[:_LISTED])}: {_MESSAGE}",
        errors=[
            FieldError(field=path[:100], rule="duplicate", message=_MESSAGE)
            for path in paths[:_LISTED]
        ],
        type_="urn:alarmrelay:problem:bad-request",
    )
