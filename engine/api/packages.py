# ruff: noqa: S608  # SQL is built only from module constants (column lists), never from input
"""``/v1/packages``: service packages (base and add-ons) with prices and features; templates; quotes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

import asyncpg
import msgspec
from litestar import get, post, put
from litestar.datastructures import State
from litestar.params import Parameter

from engine.api import audit
from engine.api.auth import Caller, require_admin, require_write
from engine.api.pagination import Page, clamp_limit
from engine.api.problems import FieldError, conflict, invalid, not_found
from engine.api.tenancy import dealer_ancestors, visible_dealers

AccountType = Literal["security_system", "video_access", "automation"]
Feature = Literal[
    "two_way_voice", "supervision_6h", "video", "images", "energy_management", "enterprise"
]


class PackageIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A base package or an add-on."""

    code: str = msgspec.field()  # lower-case letters, digits, - and _
    name: str
    kind: Literal["base", "addon"]
    account_types: list[AccountType]
    commercial: bool = False  # a commercial (business) package: enterprise groups need one
    monthly_price_cents: int = 0
    includes: list[Feature] = msgspec.field(default_factory=list)
    description: str = ""
    active: bool = True


class Package(PackageIn, frozen=True, kw_only=True):
    """A stored package."""

    created_at: datetime
    updated_at: datetime


class TemplateIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A package template: a base package and its add-ons, picked in one go."""

    name: str
    base: str
    addons: list[str] = msgspec.field(default_factory=list)
    dealer_id: int | None = None  # None: offered to every dealer


class Template(TemplateIn, frozen=True, kw_only=True):
    """A stored package template."""

    id: int


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    """The package summary shown in the flow: what is included and the monthly price."""

    base: str
    addons: list[str]
    summary: str
    includes: list[str]
    commercial: bool
    monthly_price_cents: int


SUPERVISION_6H_S = 6 * 3600  # with a package or add-on that includes supervision_6h
SUPERVISION_DEFAULT_S = 86_400

_COLUMNS = "code, name, kind, account_types, commercial, monthly_price_cents, includes, description, active, created_at, updated_at"


def _package(row: asyncpg.Record) -> Package:
    return msgspec.convert(dict(row), Package)


def _check_package(data: PackageIn) -> None:
    errors: list[FieldError] = []
    import re  # noqa: PLC0415

    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", data.code):
        errors.append(
            FieldError(
                field="code", rule="format", message="lower-case letters, digits, - and _ (1-64)"
            )
        )
    if not data.name.strip():
        errors.append(FieldError(field="name", rule="required", message="a name is required"))
    if not data.account_types:
        errors.append(
            FieldError(field="account_types", rule="required", message="at least one account type")
        )
    if data.monthly_price_cents < 0 or data.monthly_price_cents > 10_000_000:
        errors.append(FieldError(field="monthly_price_cents", rule="range", message="0-10000000"))
    if errors:
        raise invalid(errors)


async def load_packages(
    conn: asyncpg.Connection | asyncpg.Pool, codes: Sequence[str], *, for_share: bool = False
) -> dict[str, Package]:
    """The packages with these codes (missing ones are simply absent). ``for_share``: locked
    until the transaction ends, so a concurrent PUT /packages waits and then sees what this one
    wrote (two-way voice eligibility rests on the package's features)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM service_packages WHERE code = ANY($1)"
        + (" FOR SHARE" if for_share else ""),
        list(codes),
    )
    return {r["code"]: _package(r) for r in rows}


def quote(base: Package, addons: Sequence[Package]) -> Quote:
    """The summary and total of a base package with add-ons."""
    includes: list[str] = sorted({*base.includes, *(f for a in addons for f in a.includes)})
    price = base.monthly_price_cents + sum(a.monthly_price_cents for a in addons)
    names = ", ".join(a.name for a in addons)
    summary = f"{base.name}" + (f" with {names}" if names else "") + f": ${price / 100:.2f}/month"
    return Quote(
        base=base.code,
        addons=[a.code for a in addons],
        summary=summary,
        includes=includes,
        commercial=base.commercial,
        monthly_price_cents=price,
    )


def enterprise_eligible(base: Package | None, addons: Sequence[Package]) -> bool:
    """An enterprise group needs a commercial base package and an add-on including enterprise."""
    return (
        base is not None
        and base.commercial
        and any(a.kind == "addon" and "enterprise" in a.includes for a in addons)
    )


def check_selection(
    base_code: str | None,
    addon_codes: Sequence[str],
    packages: dict[str, Package],
    account_type: str | None,
    field: str = "package",
    kept: frozenset[str] = frozenset(),
) -> list[FieldError]:
    """Errors of a package selection: base exists and is a base, add-ons are add-ons, types fit.
    ``kept``: codes the customer already has, which count even if deactivated since (that only
    stops new sales)."""
    errors: list[FieldError] = []
    base = packages.get(base_code) if base_code else None
    if base is None or base.kind != "base" or not (base.active or base.code in kept):
        errors.append(
            FieldError(field=f"{field}.base", rule="exists", message="no such active base package")
        )
    elif account_type and account_type not in base.account_types:
        errors.append(
            FieldError(
                field=f"{field}.base",
                rule="account_type",
                message=f"package {base.code!r} is not offered for {account_type}",
            )
        )
    for i, code in enumerate(addon_codes):
        addon = packages.get(code)
        if addon is None or addon.kind != "addon" or not (addon.active or addon.code in kept):
            errors.append(
                FieldError(
                    field=f"{field}.addons[{i}]",
                    rule="exists",
                    message=f"no such active add-on {code!r}",
                )
            )
        elif account_type and account_type not in addon.account_types:
            errors.append(
                FieldError(
                    field=f"{field}.addons[{i}]",
                    rule="account_type",
                    message=f"add-on {code!r} is not offered for {account_type}",
                )
            )
    if len(set(addon_codes)) != len(addon_codes):
        errors.append(
            FieldError(field=f"{field}.addons", rule="unique", message="an add-on is listed twice")
        )
    return errors


# The supervision interval of the live customers with this package (base or add-on) follows
# their package as stored now; an interval of the account's own (not 6 h or 24 h) is kept.
_SUPERVISION_FOLLOWS_PACKAGE = """
UPDATE accounts a SET supervision_interval_s = f.interval, updated_at = now()
FROM (
    SELECT c.account,
           CASE WHEN EXISTS (
               SELECT 1 FROM service_packages p
               WHERE 'supervision_6h' = ANY(p.includes)
                 AND (p.code = c.document->'package'->>'base'
                      OR p.code IN (SELECT jsonb_array_elements_text(
                                        coalesce(c.document->'package'->'addons', '[]'::jsonb)))))
                THEN $2::integer ELSE $3::integer END AS interval
    FROM customers c
    WHERE c.status = 'active' AND c.account IS NOT NULL
      AND (c.document->'package'->>'base' = $1
           OR coalesce(c.document->'package'->'addons', '[]'::jsonb) ? $1)
) f
WHERE a.account = f.account AND a.supervision_interval_s IN ($2, $3)
  AND a.supervision_interval_s <> f.interval
"""

# Customers (not terminated) in an enterprise group with this package (base or add-on) whose
# package, as stored now, no longer allows one (commercial base + enterprise add-on).
_GROUP_WITHOUT_PACKAGE = """
SELECT count(*) FROM customers c
WHERE c.status <> 'terminated' AND c.enterprise_group IS NOT NULL
  AND (c.document->'package'->>'base' = $1
       OR coalesce(c.document->'package'->'addons', '[]'::jsonb) ? $1)
  AND NOT (
      EXISTS (SELECT 1 FROM service_packages p
              WHERE p.code = c.document->'package'->>'base' AND p.commercial)
      AND EXISTS (SELECT 1 FROM service_packages p
                  WHERE p.kind = 'addon' AND 'enterprise' = ANY(p.includes)
                    AND p.code IN (SELECT jsonb_array_elements_text(
                                       coalesce(c.document->'package'->'addons', '[]'::jsonb)))))
"""

# Live customers with this package (base or add-on) and two-way voice on whose package, as
# stored now, no longer includes two-way voice.
_VOICE_WITHOUT_PACKAGE = """
SELECT count(*) FROM customers c JOIN accounts a ON a.account = c.account
WHERE c.status = 'active' AND (a.forwarding->>'two_way_voice')::boolean
  AND (c.document->'package'->>'base' = $1
       OR coalesce(c.document->'package'->'addons', '[]'::jsonb) ? $1)
  AND NOT EXISTS (
      SELECT 1 FROM service_packages p
      WHERE 'two_way_voice' = ANY(p.includes)
        AND (p.code = c.document->'package'->>'base'
             OR p.code IN (SELECT jsonb_array_elements_text(
                               coalesce(c.document->'package'->'addons', '[]'::jsonb)))))
"""


@post("/packages", summary="Create a service package or add-on")
async def create_package(state: State, caller: Caller, data: PackageIn) -> Package:
    """Admin only."""
    require_admin(caller)
    _check_package(data)
    async with state.pool.acquire() as conn, conn.transaction():
        try:
            row = await conn.fetchrow(
                f"""INSERT INTO service_packages (code, name, kind, account_types, commercial, monthly_price_cents, includes, description, active)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}""",
                data.code,
                data.name,
                data.kind,
                list(data.account_types),
                data.commercial,
                data.monthly_price_cents,
                list(data.includes),
                data.description,
                data.active,
            )
        except asyncpg.UniqueViolationError:
            raise conflict("code", "unique", "a package with this code exists") from None
        package = _package(row)
        await audit.record(
            conn,
            caller,
            action="create",
            resource="package",
            resource_id=data.code,
            dealer_id=None,
            after=package,
        )
    return package


@put("/packages/{code:str}", summary="Replace a service package")
async def update_package(state: State, caller: Caller, code: str, data: PackageIn) -> Package:
    """Admin only; ``code`` in the body must match the path. A package cannot lose
    ``two_way_voice`` while a live account relying on it has two-way voice on, nor what allows
    the enterprise group of a customer that has one. When it gains or
    loses ``supervision_6h``, its live customers' supervision interval follows (6 h or 24 h)."""
    require_admin(caller)
    _check_package(data)
    if data.code != code:
        raise invalid([FieldError(field="code", rule="matches_path", message="code cannot change")])
    async with state.pool.acquire() as conn, conn.transaction():
        before = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM service_packages WHERE code = $1 FOR UPDATE", code
        )
        if before is None:
            raise not_found("package")
        if before["kind"] != data.kind:
            raise invalid(
                [FieldError(field="kind", rule="immutable", message="kind cannot change")]
            )
        row = await conn.fetchrow(
            f"""UPDATE service_packages SET name = $2, account_types = $3, commercial = $4, monthly_price_cents = $5,
                includes = $6, description = $7, active = $8, updated_at = now() WHERE code = $1 RETURNING {_COLUMNS}""",
            code,
            data.name,
            list(data.account_types),
            data.commercial,
            data.monthly_price_cents,
            list(data.includes),
            data.description,
            data.active,
        )
        if "two_way_voice" in before["includes"] and "two_way_voice" not in data.includes:
            using = await conn.fetchval(_VOICE_WITHOUT_PACKAGE, code)
            if using:
                # PRODUCT.md: two-way voice needs a package that includes it; it stays included.
                raise invalid(
                    [
                        FieldError(
                            field="includes",
                            rule="two_way_voice_in_use",
                            message=f"{using} account(s) with this package use two-way voice: "
                            "turn it off in their forwarding first",
                        )
                    ]
                )
        lost_commercial = before["commercial"] and not data.commercial
        if lost_commercial or (
            "enterprise" in before["includes"] and "enterprise" not in data.includes
        ):
            grouped = await conn.fetchval(_GROUP_WITHOUT_PACKAGE, code)
            if grouped:
                raise invalid(
                    [
                        FieldError(
                            field="commercial" if lost_commercial else "includes",
                            rule="enterprise_group_in_use",
                            message=f"{grouped} customer(s) with this package are in an "
                            "enterprise group, which needs a commercial package and the "
                            "enterprise add-on: clear their groups first",
                        )
                    ]
                )
        if ("supervision_6h" in before["includes"]) != ("supervision_6h" in data.includes):
            # Like PUT /customers/{id}/package: 6 h with supervision_6h, else 24 h (the pending
            # deadlines move with the interval: 0352_supervision_interval.sql).
            await conn.execute(
                _SUPERVISION_FOLLOWS_PACKAGE, code, SUPERVISION_6H_S, SUPERVISION_DEFAULT_S
            )
        package = _package(row)
        await audit.record(
            conn,
            caller,
            action="update",
            resource="package",
            resource_id=code,
            dealer_id=None,
            before=_package(before),
            after=package,
        )
    return package


@get("/packages", summary="List service packages and add-ons")
async def list_packages(
    state: State,
    caller: Caller,
    kind: Literal["base", "addon"] | None = None,
    account_type: AccountType | None = None,
) -> Page[Package]:
    """Every package (a short catalogue, one page), filtered by kind and account type."""
    del caller
    rows = await state.pool.fetch(
        f"SELECT {_COLUMNS} FROM service_packages WHERE ($1::text IS NULL OR kind = $1) "
        "AND ($2::text IS NULL OR $2 = ANY(account_types)) ORDER BY kind, code",
        kind,
        account_type,
    )
    return Page(items=[_package(r) for r in rows])


@get("/packages/{code:str}", summary="Get a service package")
async def get_package(state: State, caller: Caller, code: str) -> Package:
    """One package by code."""
    del caller
    row = await state.pool.fetchrow(
        f"SELECT {_COLUMNS} FROM service_packages WHERE code = $1", code
    )
    if row is None:
        raise not_found("package")
    return _package(row)


@get("/package-quote", summary="Package summary and price for a base package with add-ons")
async def package_quote(
    state: State,
    caller: Caller,
    base: str,
    addons: Annotated[
        list[str] | None, Parameter(description="add-on codes (repeat the parameter)")
    ] = None,
    account_type: AccountType | None = None,
) -> Quote:
    """What the flow shows at step 6."""
    del caller
    codes = [base, *(addons or [])]
    packages = await load_packages(state.pool, codes)
    errors = check_selection(base, addons or [], packages, account_type, field="query")
    if errors:
        raise invalid(errors)
    return quote(packages[base], [packages[a] for a in addons or []])


@post("/package-templates", summary="Create a package template")
async def create_template(state: State, caller: Caller, data: TemplateIn) -> Template:
    """Admin: for everyone or one dealer. Dealer: for itself (dealer_id defaults to its own)."""
    require_write(caller)
    dealer_id = data.dealer_id
    if caller.role != "admin":
        dealer_id = dealer_id if dealer_id is not None else caller.dealer_id
        visible = await visible_dealers(state.pool, caller)
        if visible is not None and dealer_id not in visible:
            raise invalid([FieldError(field="dealer_id", rule="exists", message="no such dealer")])
    async with state.pool.acquire() as conn, conn.transaction():
        packages = await load_packages(conn, [data.base, *data.addons])
        errors = check_selection(data.base, data.addons, packages, None, field="template")
        if not data.name.strip():
            errors.append(FieldError(field="name", rule="required", message="a name is required"))
        if dealer_id is not None and not await conn.fetchval(
            "SELECT true FROM dealers WHERE id = $1", dealer_id
        ):
            errors.append(FieldError(field="dealer_id", rule="exists", message="no such dealer"))
        if errors:
            raise invalid(errors)
        template_id = await conn.fetchval(
            "INSERT INTO package_templates (name, dealer_id, base, addons) VALUES ($1, $2, $3, $4) RETURNING id",
            data.name,
            dealer_id,
            data.base,
            list(data.addons),
        )
        template = Template(
            id=template_id,
            name=data.name,
            base=data.base,
            addons=list(data.addons),
            dealer_id=dealer_id,
        )
        await audit.record(
            conn,
            caller,
            action="create",
            resource="package_template",
            resource_id=template_id,
            dealer_id=dealer_id,
            after=template,
        )
    return template


async def offered_templates(
    conn: asyncpg.Connection | asyncpg.Pool, dealer_id: int | None
) -> list[Template]:
    """Templates for every dealer plus those of the dealer and the dealers above it."""
    dealers = await dealer_ancestors(conn, dealer_id) if dealer_id is not None else []
    rows = await conn.fetch(
        "SELECT id, name, dealer_id, base, addons FROM package_templates WHERE dealer_id IS NULL OR dealer_id = ANY($1) ORDER BY id",
        dealers,
    )
    return [Template(**dict(r)) for r in rows]


@get("/package-templates", summary="List package templates offered to the caller")
async def list_templates(
    state: State,
    caller: Caller,
    limit: int = Parameter(default=100, ge=1, le=500),
) -> Page[Template]:
    """Admin: all. Dealer: the shared ones and its own (and its parents')."""
    if caller.dealer_id is None:
        rows = await state.pool.fetch(
            "SELECT id, name, dealer_id, base, addons FROM package_templates ORDER BY id LIMIT $1",
            clamp_limit(limit),
        )
        return Page(items=[Template(**dict(r)) for r in rows])
    return Page(items=(await offered_templates(state.pool, caller.dealer_id))[: clamp_limit(limit)])


PACKAGE_HANDLERS = [
    create_package,
    update_package,
    list_packages,
    get_package,
    package_quote,
    create_template,
    list_templates,
]
