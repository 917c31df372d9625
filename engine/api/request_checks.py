"""The checks every ``/v1`` request passes before its handler runs (the router's
``before_request``).

litestar runs the nearest layer's ``before_request`` only: a route with its own hook (the
creation routes' :func:`engine.api.creation_body.report_decode_errors`) calls
:func:`check_request` first, so no route skips the checks the router's others get.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from engine.api.media_type import refuse_other_media_types
from engine.api.query_params import refuse_unknown_query_parameters


async def check_request(request: Request[Any, Any, Any]) -> None:
    """Refuse what the handler would misread: unknown or repeated query parameters, a body that
    is not said to be JSON."""
    await refuse_unknown_query_parameters(request)
    await refuse_other_media_types(request)
