"""Query parameters an endpoint does not take are refused (400, rule ``unknown``), and so are
parameters of one value given more than once (rule ``repeated``).

Unknown body fields already are. A mistyped filter (``?categroy=alarms``, ``?dealer=5`` on a
list that has no such filter) was ignored, so the answer looked filtered and was not: while
investigating an alarm that reads as "these are all of them". A filter given twice
(``?category=alarms&category=panics``) was answered with one of the two, which reads as both.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.params import BodyKwarg, DependencyKwarg, ParameterKwarg

from engine.api.auth import presented_key
from engine.api.problems import FieldError, ProblemError

# Handler parameters litestar fills from the request itself, never from the query string.
_RESERVED = frozenset(
    {"request", "state", "scope", "headers", "cookies", "query", "data", "socket", "body"}
)
_PATH_PARAMETER = re.compile(r"\{(\w+)(?::[^}]*)?\}")
# By the handler's function and paths, not by id(handler): each app has its own copies of the
# handlers, and an id freed with an app is soon another handler's (tests and tools build several
# apps), which then answered with that one's parameters.
_taken: dict[tuple[Any, frozenset[str]], frozenset[str]] = {}
_lists: dict[tuple[Any, frozenset[str]], frozenset[str]] = {}


def list_parameters(handler: Any) -> frozenset[str]:
    """The query parameters of ``handler`` that take several values (a list type)."""
    key = (handler.fn, frozenset(handler.paths))
    names = _lists.get(key)
    if names is None:
        taken = query_parameters(handler)
        names = _lists[key] = frozenset(
            name
            for name, parameter in handler.parsed_fn_signature.parameters.items()
            if name in taken and parameter.is_non_string_sequence
        )
    return names


def query_parameters(handler: Any) -> frozenset[str]:
    """The query parameter names ``handler`` takes (cached per handler function and paths)."""
    key = (handler.fn, frozenset(handler.paths))
    names = _taken.get(key)
    if names is None:
        skip = set(_RESERVED) | set(handler.resolve_dependencies())
        for path in handler.paths:
            skip.update(_PATH_PARAMETER.findall(path))
        taken: set[str] = set()
        for name, parameter in handler.parsed_fn_signature.parameters.items():
            kwarg = parameter.kwarg_definition
            if name in skip or isinstance(kwarg, BodyKwarg | DependencyKwarg):
                continue
            if isinstance(kwarg, ParameterKwarg):
                if kwarg.header or kwarg.cookie:
                    continue
                taken.add(kwarg.query or name)
            else:
                taken.add(name)
        names = _taken[key] = frozenset(taken)
    return names


async def refuse_unknown_query_parameters(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of the ``/v1`` router. A request without a key is left to the
    authentication's 401 (a mistyped parameter must not hide that the key is missing)."""
    if not request.scope.get("query_string") or presented_key(request) is None:
        return
    taken = query_parameters(request.route_handler)
    unknown = sorted(set(request.query_params) - taken)
    if not unknown:
        _refuse_repeated(request)
        return
    accepted = ", ".join(sorted(taken)) or "none"
    raise ProblemError(
        400,
        "Bad Request",
        f"unknown query parameter{'s' * (len(unknown) > 1)}: {', '.join(unknown)} "
        f"(this endpoint takes: {accepted})",
        errors=[
            FieldError(
                field=name[:100],
                rule="unknown",
                message=f"unknown query parameter (this endpoint takes: {accepted})",
            )
            for name in unknown[:20]
        ],
        type_="urn:alarmrelay:problem:bad-request",
    )


def _refuse_repeated(request: Request[Any, Any, Any]) -> None:
    """400 for a parameter of one value given more than once (litestar would take one)."""
    several = list_parameters(request.route_handler)
    repeated = sorted(
        name
        for name in set(request.query_params)
        if name not in several and len(request.query_params.getall(name)) > 1
    )
    if not repeated:
        return
    message = "given more than once; this parameter takes one value"
    raise ProblemError(
        400,
        "Bad Request",
        f"query parameter{'s' * (len(repeated) > 1)} {', '.join(repeated)}: {message}",
        errors=[FieldError(field=name, rule="repeated", message=message) for name in repeated],
        type_="urn:alarmrelay:problem:bad-request",
    )
