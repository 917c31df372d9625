"""RFC 9457 problem details: every error the API returns is one ``application/problem+json`` document.

Validation problems list each failing field with the rule it broke, so a client can show every
mistake of a step at once instead of one per round trip.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    ValidationException,
)
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Reference, Schema

from engine.api.decode_messages import plain_message
from engine.errors import is_database_unreachable

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger("engine.api")


class FieldError(msgspec.Struct, frozen=True, kw_only=True):
    """One field that broke one rule."""

    field: str  # dotted path in the request, e.g. "customer.email_confirm"
    rule: str  # a stable machine name, e.g. "emails_match"
    message: str  # what a person reads


class Problem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)


class ProblemError(Exception):
    """Raised by handlers; rendered as a problem document with ``status``."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[FieldError] | None = None,
        warnings: list[str] | None = None,
        type_: str = "about:blank",
    ) -> None:
        super().__init__(detail or title)
        self.problem = Problem(
            type=type_,
            title=title,
            status=status,
            detail=detail,
            errors=errors or [],
            warnings=warnings or [],
        )


def not_found(what: str) -> ProblemError:
    """404 for a resource that does not exist or that the caller may not see (same answer)."""
    return ProblemError(404, "Not Found", f"{what} not found")


def invalid(errors: list[FieldError], *, warnings: list[str] | None = None) -> ProblemError:
    """422 listing every field error."""
    return ProblemError(
        422,
        "Validation failed",
        "; ".join(f"{e.field}: {e.message}" for e in errors),
        errors=errors,
        warnings=warnings,
        type_="urn:alarmrelay:problem:validation",
    )


def conflict(field: str, rule: str, message: str) -> ProblemError:
    """409 for a uniqueness rule (login name, module serial, …)."""
    return ProblemError(
        409,
        "Conflict",
        f"{field}: {message}",
        errors=[FieldError(field=field, rule=rule, message=message)],
        type_="urn:alarmrelay:problem:conflict",
    )


def bad_query_parameter(name: str, rule: str, message: str) -> ProblemError:
    """400 for one query parameter that broke ``rule``."""
    return ProblemError(
        400,
        "Bad Request",
        f"query parameter {name}: {message}",
        errors=[FieldError(field=name, rule=rule, message=message)],
        type_="urn:alarmrelay:problem:bad-request",
    )


def unsupported_media_type(given: str, expected: str) -> ProblemError:
    """415 for a request body of a type (``given``, the header as sent) other than ``expected``."""
    shown = given.strip()[:100] or "none"
    message = f"the body must be sent as Content-Type: {expected} (this one: {shown})"
    return ProblemError(
        415,
        "Unsupported Media Type",
        message,
        errors=[FieldError(field="Content-Type", rule="media_type", message=message)],
        type_="urn:alarmrelay:problem:unsupported-media-type",
    )


_CHALLENGE = 'Bearer realm="alarmrelay"'


def _response(problem: Problem) -> Response[Any]:
    response: Response[Any] = Response(
        content=msgspec.json.encode(problem),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
    )
    if problem.status == 401:  # RFC 9110 §15.5.2: a 401 names the scheme to authenticate with
        response.headers["WWW-Authenticate"] = _CHALLENGE
    return response


def problem_handler(_: Request[Any, Any, Any], exc: ProblemError) -> Response[Any]:
    """Render a :class:`ProblemError`."""
    return _response(exc.problem)


def validation_handler(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Body, query or path parameters that do not decode: 400 with each field litestar names."""
    errors: list[FieldError] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if isinstance(item, dict):
            raw_key = str(item.get("key") or item.get("source") or "body")
            # litestar names the request body "data" (the handler's parameter) for errors of
            # its top-level object: the field paths of the body itself are what a client knows.
            key = "body" if raw_key == "data" else raw_key.removeprefix("data.")
            message = str(item.get("message", ""))
            if raw_key == "data" and message == "'data'":
                # No body at all: litestar's message is the KeyError of its missing "data".
                errors.append(
                    FieldError(
                        field="body", rule="required", message="the request needs a JSON body"
                    )
                )
                continue
            errors.append(decode_error(key, message))
    missing = _MISSING_PARAMETER.match(str(exc.detail))
    if missing and not errors:
        errors.append(
            FieldError(
                field=missing.group(1),
                rule="required",
                message=f"the query parameter {missing.group(1)} is required",
            )
        )
    return _response(
        Problem(
            type="urn:alarmrelay:problem:bad-request",
            title="Bad Request",
            status=400,
            detail=str(exc.detail),
            errors=errors,
        )
    )


_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_MISSING_PARAMETER = re.compile(r"Missing required query parameter '([^']+)'")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")  # "" is a name a body can use


def decode_error(key: str, message: str) -> FieldError:
    """A decoding error (msgspec's ``message``) as field + rule, in plain words. msgspec names a
    missing or unknown field in its message with the enclosing object as the path; the field
    itself is appended so the error points at it."""
    for pattern, rule in ((_MISSING, "required"), (_UNKNOWN, "unknown")):
        match = pattern.fullmatch(message)
        if match:
            name = match.group(1)
            field = name if key in {"body", ""} else f"{key}.{name}"
            if not name:  # {"": …}: the object holding it is what a client can find
                field = key or "body"
            return FieldError(field=field, rule=rule, message=plain_message(message))
    rule = "enum" if message.startswith("Invalid enum value") else "type"
    return FieldError(field=key, rule=rule, message=plain_message(message))


def http_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    """Any other litestar HTTP error (404 route, 405, 401, …) as a problem document."""
    if type(exc) is ClientException and exc.status_code == 400:
        return _bad_body("json", str(exc.detail))  # the body is not JSON (truncated, malformed)
    response = _response(
        Problem(title=_title(exc.status_code), status=exc.status_code, detail=str(exc.detail))
    )
    # litestar's own headers belong to the answer: a 405's Allow (RFC 9110 §15.5.6 requires it).
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


def _bad_body(rule: str, message: str) -> Response[Any]:
    return _response(
        Problem(
            type="urn:alarmrelay:problem:bad-request",
            title="Bad Request",
            status=400,
            detail=message,
            errors=[FieldError(field="body", rule=rule, message=message)],
        )
    )


def recursion_handler(_: Request[Any, Any, Any], __: RecursionError) -> Response[Any]:
    """A body nested deeper than the decoder follows (``[[[[…``): the client's mistake."""
    return _bad_body("depth", "the body is nested too deeply")


_INT64 = range(-(2**63), 2**63)


def _beyond_int64(text: str) -> bool:
    """``text`` is an integer (ASCII digits) that a bigint cannot hold. Never raises: ``int()``
    refuses other digits ("²") and more than 4,300 of them."""
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        return False
    return len(digits) > 19 or int(text) not in _INT64


def data_error_handler(request: Request[Any, Any, Any], exc: asyncpg.DataError) -> Response[Any]:
    """Input the database cannot hold: a path id beyond 64 bits names nothing (404); a NUL
    character or another value out of range is the client's mistake (400). Never the SQL."""
    too_big = [k for k, v in request.path_params.items() if isinstance(v, int) and v not in _INT64]
    if too_big:
        return _response(not_found(too_big[0].removesuffix("_id")).problem)
    if isinstance(
        exc, asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError
    ):
        detail = "a value contains a NUL character (U+0000), which cannot be stored"
    else:
        names = [k for k, v in request.query_params.items() if _beyond_int64(v)]
        detail = (
            f"query parameter {names[0]} is out of range" if names else "a value is out of range"
        )
    return _response(
        Problem(
            type="urn:alarmrelay:problem:bad-request",
            title="Bad Request",
            status=400,
            detail=detail,
        )
    )


def server_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """An unexpected error: logged with its type, answered as a 500 problem without internals;
    the database out of reach is a 503 the client may retry."""
    if is_database_unreachable(exc):
        log.warning("api_database_unavailable", path=request.url.path, error=type(exc).__name__)
        response = _response(
            Problem(
                type="urn:alarmrelay:problem:unavailable",
                title="Service Unavailable",
                status=503,
                detail="the database is unavailable; retry later",
            )
        )
        response.headers["Retry-After"] = "5"
        return response
    log.error(
        "api_error", path=request.url.path, error=type(exc).__name__, message=str(exc), exc_info=exc
    )
    return _response(Problem(title="Internal Server Error", status=500))


def _title(status: int) -> str:
    from http import HTTPStatus  # noqa: PLC0415

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ProblemError: problem_handler,
    ValidationException: validation_handler,
    HTTPException: http_handler,
    asyncpg.DataError: data_error_handler,
    RecursionError: recursion_handler,
    Exception: server_error_handler,
}


_PROBLEM_STATUSES = {
    "400": "The body or a parameter does not decode",
    "401": "No API key, or an unknown or revoked one",
    "403": "The key's role may not do this",
    "404": "Not found, or not the caller's",
    "409": "A uniqueness conflict",
    "422": "Validation failed: each field and rule",
    "503": "The database is unavailable; retry after the Retry-After seconds",
}


def document_problems(openapi: Any) -> None:
    """Add the problem document schema and the error responses to every operation of ``openapi``
    (an ``litestar.openapi.spec.OpenAPI``), so clients and schemathesis know the error shapes."""

    text = Schema(type=OpenAPIType.STRING)
    field_error = Schema(
        type=OpenAPIType.OBJECT,
        required=["field", "rule", "message"],
        properties={"field": text, "rule": text, "message": text},
    )
    problem = Schema(
        type=OpenAPIType.OBJECT,
        required=["title", "status"],
        properties={
            "type": text,
            "title": text,
            "status": Schema(type=OpenAPIType.INTEGER),
            "detail": Schema(one_of=[text, Schema(type=OpenAPIType.NULL)]),
            "errors": Schema(type=OpenAPIType.ARRAY, items=field_error),
            "warnings": Schema(type=OpenAPIType.ARRAY, items=text),
        },
    )
    components = openapi.components
    if components.schemas is None:
        components.schemas = {}
    components.schemas["Problem"] = problem
    content = {
        PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
    }
    for path, item in (openapi.paths or {}).items():
        if not path.startswith("/v1"):
            continue
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses if operation.responses is not None else {}
            for status, description in _PROBLEM_STATUSES.items():
                responses[status] = OpenAPIResponse(description=description, content=content)
            if operation.request_body is not None:
                responses["415"] = OpenAPIResponse(
                    description="The body is not sent as Content-Type: application/json",
                    content=content,
                )
            operation.responses = responses
