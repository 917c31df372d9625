"""The checks every ``/v1`` request passes before its handler runs (the router's
``before_request``), and the answer to ``OPTIONS``.

litestar runs the nearest layer's ``before_request`` only: a route with its own hook (the
creation routes' :func:`engine.api.creation_body.report_decode_errors`) calls
:func:`check_before_decoding` first, so no route skips the checks the router's others get.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from engine.api.allowed_methods import answer_options
from engine.api.duplicate_keys import refuse_repeated_keys
from engine.api.media_type import refuse_other_media_types
from engine.api.query_params import refuse_unknown_query_parameters
from engine.api.strict_body import refuse_lax_values


async def check_before_decoding(request: Request[Any, Any, Any]) -> None:
    """Refuse what the handler would misread: unknown or repeated query parameters, a body that
    is not said to be JSON, a key given twice in one of its objects."""
    await refuse_unknown_query_parameters(request)
    await refuse_other_media_types(request)
    await refuse_repeated_keys(request)


async def check_request(request: Request[Any, Any, Any]) -> Response[None] | None:
    """:func:`check_before_decoding`, then a body value of another type than its field's. An
    ``OPTIONS`` request is answered here (litestar's own answer lists some methods only)."""
    options = answer_options(request)
    if options is not None:
        return options
    await check_before_decoding(request)
    await refuse_lax_values(request)
    return None
