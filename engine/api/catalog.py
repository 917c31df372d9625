"""Look-ups the creation flow offers: module and panel types, time zone from ZIP, login names,
installation templates (default notifications, panel templates)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import get, post
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api import audit
from engine.api.auth import Caller, require_write
from engine.api.login_names import login_problem, login_taken, suggest_login
from engine.api.pagination import Page
from engine.api.problems import FieldError, invalid
from engine.api.serials import MODULE_TYPES, PANEL_TYPES, ModuleType
from engine.api.tenancy import dealer_ancestors, visible_dealers
from engine.api.timezones import zone_for_zip


class TimeZoneAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The detected zone (None: choose one) and that detection is approximate."""

    zip: str
    country: str
    time_zone: str | None
    approximate: bool = True


class LoginAvailability(msgspec.Struct, frozen=True, kw_only=True):
    """Whether a login name can be used, why not, and a suggestion."""

    login_name: str | None
    available: bool
    problem: str | None
    suggestion: str | None


class InstallationTemplateIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A default-notifications or panel template (step 8)."""

    kind: Literal["notifications", "panel"]
    name: str
    body: dict[str, Any] = msgspec.field(default_factory=dict)
    dealer_id: int | None = None  # None: offered to every dealer


class InstallationTemplate(InstallationTemplateIn, frozen=True, kw_only=True):
    """A stored installation template."""

    id: int


@get("/catalog/module-types", summary="Module types, their serial formats and pathways")
async def module_types(caller: Caller) -> list[ModuleType]:
    """Every module type the flow accepts."""
    del caller
    return list(MODULE_TYPES.values())


@get("/catalog/panel-types", summary="Control panel types")
async def panel_types(caller: Caller) -> list[str]:
    """Panel types that can be chosen (or are detected from a built-in module's serial)."""
    del caller
    return list(PANEL_TYPES)


@get("/time-zone", summary="Time zone detected from a ZIP code (approximate)")
async def time_zone(
    caller: Caller, zip_code: str = Parameter(query="zip", max_length=10), country: str = "US"
) -> TimeZoneAnswer:
    """US ZIP prefixes only; anything else answers time_zone null (the dealer chooses)."""
    del caller
    return TimeZoneAnswer(zip=zip_code, country=country, time_zone=zone_for_zip(zip_code, country))


@get("/login-names/availability", summary="Check a login name, or get a suggestion")
async def login_availability(
    state: State,
    caller: Caller,
    login_name: str | None = Parameter(default=None, max_length=200),
    first_name: str = Parameter(default="", max_length=100),
    last_name: str = Parameter(default="", max_length=100),
) -> LoginAvailability:
    """With ``login_name``: whether it is valid and free. With names: a suggested free login."""
    del caller
    suggestion = (
        await suggest_login(state.pool, first_name, last_name)
        if (first_name or last_name)
        else None
    )
    if login_name is None:
        return LoginAvailability(
            login_name=None, available=False, problem=None, suggestion=suggestion
        )
    problem = login_problem(login_name)
    if problem is None and await login_taken(state.pool, login_name):
        problem = ("unique", "login already in use")
    return LoginAvailability(
        login_name=login_name,
        available=problem is None,
        problem=problem[1] if problem else None,
        suggestion=suggestion,
    )


@post("/installation-templates", summary="Create an installation template")
async def create_installation_template(
    state: State, caller: Caller, data: InstallationTemplateIn
) -> InstallationTemplate:
    """Admin: shared or per dealer. Dealer: its own (dealer_id defaults to itself)."""
    require_write(caller)
    dealer_id = data.dealer_id
    if caller.role != "admin":
        dealer_id = dealer_id if dealer_id is not None else caller.dealer_id
        visible = await visible_dealers(state.pool, caller)
        if visible is not None and dealer_id not in visible:
            raise invalid([FieldError(field="dealer_id", rule="exists", message="no such dealer")])
    if not data.name.strip():
        raise invalid([FieldError(field="name", rule="required", message="a name is required")])
    async with state.pool.acquire() as conn, conn.transaction():
        if dealer_id is not None and not await conn.fetchval(
            "SELECT true FROM dealers WHERE id = $1", dealer_id
        ):
            raise invalid([FieldError(field="dealer_id", rule="exists", message="no such dealer")])
        template_id = await conn.fetchval(
            "INSERT INTO installation_templates (kind, name, dealer_id, body) VALUES ($1, $2, $3, $4::jsonb) RETURNING id",
            data.kind,
            data.name,
            dealer_id,
            msgspec.json.encode(data.body).decode(),
        )
        template = InstallationTemplate(
            id=template_id, kind=data.kind, name=data.name, body=data.body, dealer_id=dealer_id
        )
        await audit.record(
            conn,
            caller,
            action="create",
            resource="installation_template",
            resource_id=template_id,
            dealer_id=dealer_id,
            after=template,
        )
    return template


async def offered_installation_templates(
    conn: Any, dealer_id: int | None
) -> list[InstallationTemplate]:
    """Shared templates plus those of the dealer and the dealers above it (admin: all)."""
    dealers = await dealer_ancestors(conn, dealer_id) if dealer_id is not None else None
    rows = await conn.fetch(
        "SELECT id, kind, name, dealer_id, body::text AS body FROM installation_templates "
        "WHERE $1::bigint[] IS NULL OR dealer_id IS NULL OR dealer_id = ANY($1) ORDER BY id",
        dealers,
    )
    return [
        InstallationTemplate(
            id=r["id"],
            kind=r["kind"],
            name=r["name"],
            dealer_id=r["dealer_id"],
            body=msgspec.json.decode(r["body"]),
        )
        for r in rows
    ]


@get("/installation-templates", summary="Installation templates offered to the caller")
async def list_installation_templates(state: State, caller: Caller) -> Page[InstallationTemplate]:
    """Shared ones and the caller's dealer's (and its parents')."""
    return Page(items=await offered_installation_templates(state.pool, caller.dealer_id))


CATALOG_HANDLERS = [
    module_types,
    panel_types,
    time_zone,
    login_availability,
    create_installation_template,
    list_installation_templates,
]
