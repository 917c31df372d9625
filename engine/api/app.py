"""The admin API application: every resource under ``/v1``, the OpenAPI document and docs.

``create_app`` is mounted by ``serve`` on the engine's HTTP port together with /metrics,
/healthz and /readyz (passed in ``extra_route_handlers``). The OpenAPI document is at
``/schema/openapi.json``; interactive docs at ``/schema/swagger`` and ``/schema/redoc``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import LitestarDeprecationWarning
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from engine.api.api_keys import API_KEY_HANDLERS
from engine.api.app_settings import ApiSettings, SmtpSettings, api_settings
from engine.api.audit import AUDIT_HANDLERS
from engine.api.auth import Caller, provide_caller
from engine.api.catalog import CATALOG_HANDLERS
from engine.api.closed_schemas import ClosedStructSchemaPlugin
from engine.api.commitments import COMMITMENT_HANDLERS
from engine.api.customer_changes import CUSTOMER_CHANGE_HANDLERS
from engine.api.customers import CUSTOMER_HANDLERS
from engine.api.dealers import DEALER_HANDLERS
from engine.api.drafts import DRAFT_HANDLERS
from engine.api.history import HISTORY_HANDLERS
from engine.api.live_state import LIVE_STATE_HANDLERS
from engine.api.packages import PACKAGE_HANDLERS
from engine.api.problems import EXCEPTION_HANDLERS, document_problems
from engine.api.request_checks import check_request
from engine.api.stations import STATION_HANDLERS
from engine.api.virtual_signals import VIRTUAL_SIGNAL_HANDLERS
from engine.api.welcome_letter import WELCOME_LETTER_HANDLERS, document_letter_responses
from receivers.registry import LinkState


class Me(msgspec.Struct, frozen=True, kw_only=True):
    """The caller's own key."""

    key_id: int
    role: str
    dealer_id: int | None


@get("/me", summary="Who am I (the caller's key)")
async def whoami(caller: Caller) -> Me:
    """The role and dealer of the key used for this request."""
    return Me(key_id=caller.key_id, role=caller.role, dealer_id=caller.dealer_id)


def v1_handlers() -> list[Any]:
    """Every ``/v1`` route handler."""
    return [
        whoami,
        *API_KEY_HANDLERS,
        *AUDIT_HANDLERS,
        *DEALER_HANDLERS,
        *PACKAGE_HANDLERS,
        *CATALOG_HANDLERS,
        *CUSTOMER_HANDLERS,
        *CUSTOMER_CHANGE_HANDLERS,
        *VIRTUAL_SIGNAL_HANDLERS,
        *LIVE_STATE_HANDLERS,
        *DRAFT_HANDLERS,
        *COMMITMENT_HANDLERS,
        *STATION_HANDLERS,
        *HISTORY_HANDLERS,
        *WELCOME_LETTER_HANDLERS,
    ]


def create_app(
    *,
    pool: asyncpg.Pool,
    extra_route_handlers: Sequence[Any] = (),
    settings: Any | None = None,
    receiver_links: Callable[[], Mapping[str, LinkState]] | None = None,
) -> Litestar:
    """The litestar application of the admin API (plus ``extra_route_handlers`` at the root).

    ``receiver_links`` gives the live link state of the engine's receivers (``serve`` passes its
    receiver registry's); without it, station status shows the queues only (``link_up`` null).
    """
    v1 = Router(
        path="/v1",
        route_handlers=v1_handlers(),
        dependencies={"caller": Provide(provide_caller)},
        before_request=check_request,
        security=[{"bearer": []}, {"apiKey": []}],
    )
    openapi = OpenAPIConfig(
        title="alarmrelay admin API",
        version="1",
        description="Dealers, API keys, monitoring stations, service packages and customer accounts. "
        "Errors are RFC 9457 problem documents (application/problem+json).",
        path="/schema",
        render_plugins=[
            JsonRenderPlugin(path="/openapi.json"),
            SwaggerRenderPlugin(path="/swagger"),
            RedocRenderPlugin(path="/redoc"),
        ],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http", scheme="bearer", description="Authorization: Bearer <API key>"
                ),
                "apiKey": SecurityScheme(
                    type="apiKey", name="X-API-Key", security_scheme_in="header"
                ),
            }
        ),
    )
    with warnings.catch_warnings():
        # The handlers use litestar 2's inferred path-parameter style (kept while pyproject allows
        # litestar 2.12+, older than the markers the 3.0 deprecation asks for); the warning would
        # otherwise be printed at every start of `serve`.
        warnings.simplefilter("ignore", LitestarDeprecationWarning)
        app = Litestar(
            route_handlers=[v1, *extra_route_handlers],
            state=State(
                {
                    "pool": pool,
                    "api_settings": api_settings(settings),
                    "receiver_links": receiver_links,
                }
            ),
            exception_handlers=EXCEPTION_HANDLERS,
            openapi_config=openapi,
            plugins=[ClosedStructSchemaPlugin()],
            # Litestar's default config would replace the root handler: every library record
            # (asyncpg's, uvicorn's) would come out as a plain line and a bare traceback.
            logging_config=None,
            debug=False,
        )
    document_problems(app.openapi_schema)
    document_letter_responses(app.openapi_schema)
    return app


__all__ = ["ApiSettings", "SmtpSettings", "create_app"]
