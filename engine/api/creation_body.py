"""Every decoding error of a creation request at once.

litestar decodes a request body into its struct before the handler runs and stops at the first
error, so a request with a wrong type in two steps would need two round trips. This hook runs
before that decoding on the creation routes (customers, their dry run, commitments): it decodes
each step on its own and answers one 400 problem listing every field that does not decode. A body
that decodes is left to litestar and the handler as before. Each step is decoded strictly (a
value of another JSON type than its field's is an error), as the router's hook decodes the other
bodies. The router's checks that come before decoding
(:func:`engine.api.request_checks.check_before_decoding`) run first: litestar runs one hook only.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import SerializationException

from engine.api.auth import provide_caller
from engine.api.creation import decode_errors
from engine.api.problems import ProblemError
from engine.api.request_checks import check_before_decoding


async def report_decode_errors(request: Request[Any, Any, Any]) -> None:
    """before_request hook: the router's checks (this hook replaces its), then a 400 naming each
    undecodable field of every step (401 first)."""
    await check_before_decoding(request)
    try:
        document = await request.json()
    except SerializationException:
        return  # not JSON: litestar's own 400
    if not isinstance(document, dict):
        return
    errors = decode_errors(document)
    if not errors:
        return
    await provide_caller(request, request.app.state)  # an unauthenticated caller learns nothing
    raise ProblemError(
        400,
        "Bad Request",
        "; ".join(f"{e.field}: {e.message}" for e in errors),
        errors=errors,
        type_="urn:alarmrelay:problem:bad-request",
    )
