# ruff: noqa: PERF401  # each rule appends its error in a loop of its own: clearer than comprehensions
"""Validation of the account-creation flow: every step's rules, all errors at once.

Input is the request as a plain document (a draft holds the same document, possibly partial),
so each step is decoded on its own and a broken step does not hide another step's errors.
The output is a :class:`Plan`: what to write (customer row and the engine's ``accounts`` row) and
the confirmation summary.
"""

from __future__ import annotations

import calendar
import re
import secrets
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import msgspec

from engine.account_model import (
    STATION_ACCOUNT,
    Account,
    ForwardingMode,
    ForwardingSettings,
    KeyFormat,
)
from engine.api.auth import Caller
from engine.api.catalog import offered_installation_templates
from engine.api.customer_model import (
    REQUIRED_STEPS,
    STEP_TYPES,
    Address,
    CustomerInfo,
    DealerStep,
    ForwardingStep,
    InstallationStep,
    LoginStep,
    Operations,
    PackageStep,
    Summary,
    SystemInfo,
)
from engine.api.login_names import login_problem, suggest_login
from engine.api.packages import (
    SUPERVISION_6H_S,
    SUPERVISION_DEFAULT_S,
    Package,
    Quote,
    check_selection,
    enterprise_eligible,
    load_packages,
    offered_templates,
    quote,
)
from engine.api.problems import FieldError, decode_error
from engine.api.serials import (
    MAX_SERIAL_LENGTH,
    MODULE_TYPES,
    PANEL_TYPES,
    ModuleType,
    derived_account,
    detect_module_type,
    normalize_serial,
    serial_problem,
)
from engine.api.station_access import stations_of, usable_receivers
from engine.api.tenancy import visible_dealers
from engine.api.timezones import valid_zone, zone_for_zip
from engine.policy import TwoWayVoiceRequirement, check_two_way_voice_eligibility
from engine.station_model import PHONE_WARNING
from protocols.signal import DEFAULT_FORWARDED_CATEGORIES, FORWARDING_CATEGORIES, Category

NO_STATION_WARNING = "no monitoring station or receiver number registered"
BACKUP_WITHOUT_VOICE_WARNING = (
    "backup receiver '{name}' has no two-way voice: after a failover to it, alarms are delivered "
    "but no voice session is started"
)
BACKUP_AT_OTHER_STATION_WARNING = (
    "backup receiver '{backup}' is at station '{backup_station}', the primary at "
    "'{primary_station}': after a failover, and for each alarm the primary refuses (DUH), the "
    "backup gets the same station account number {account}, so it must be this customer's number "
    "at '{backup_station}' too"
)
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_HEX_ACCOUNT = re.compile(r"[0-9A-F]{3,16}")


_VOICE_MISSING = {
    TwoWayVoiceRequirement.MODULE: "the module is not two-way-voice capable",
    TwoWayVoiceRequirement.RECEIVER: "the receiver does not support two-way voice",
    TwoWayVoiceRequirement.PACKAGE: "the service package does not include two-way voice",
}


def supervision_interval_for(package: Quote) -> int:
    """The module's supervision interval: 6 h with the 6-hour supervision add-on, else 24 h."""
    return SUPERVISION_6H_S if "supervision_6h" in package.includes else SUPERVISION_DEFAULT_S


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """A validated creation: the rows to write and the summary to show."""

    account_type: str
    dealer_id: int
    sub_dealer_id: int | None
    login_name: str
    document: dict[str, Any]  # the request as validated, with defaults and detections filled in
    account: Account | None  # None for a commitment
    module_type: str | None
    summary: Summary
    warnings: list[str]


class Invalid(Exception):
    """Validation failed: every field error, plus the warnings that were found on the way."""

    def __init__(self, errors: list[FieldError], warnings: list[str]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors
        self.warnings = warnings


def _decode_steps(
    document: dict[str, Any],
    errors: list[FieldError],
    *,
    required: frozenset[str],
) -> dict[str, Any]:
    """Each known step decoded on its own; unknown keys and structural errors become field errors.
    A value of another JSON type than its field's is one ("3" for 3, 1 for true)."""
    steps: dict[str, Any] = {}
    for key in document:
        if key not in STEP_TYPES:
            errors.append(FieldError(field=key, rule="unknown", message="unknown field"))
    for name, step_type in STEP_TYPES.items():
        if name not in document:
            if name in required:
                errors.append(
                    FieldError(field=name, rule="required", message="this step is required")
                )
            continue
        try:
            steps[name] = msgspec.convert(document[name], step_type)
        except msgspec.ValidationError as exc:
            path = str(exc).rsplit(" - at `$", 1)
            where = name + (path[1].rstrip("`") if len(path) == 2 else "")
            errors.append(decode_error(where, path[0]))
    return steps


def decode_errors(document: dict[str, Any]) -> list[FieldError]:
    """Every step's decoding error of a creation request (each step decoded on its own, so one
    broken step does not hide another's)."""
    errors: list[FieldError] = []
    _decode_steps(document, errors, required=REQUIRED_STEPS)
    return errors


def add_months(start: date, months: int) -> date:
    """The same day ``months`` later (the month's last day when it has no such day)."""
    month = start.month - 1 + months
    year, month = start.year + month // 12, month % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def _address(address: Address, field: str, errors: list[FieldError]) -> Address:
    for name in ("street1", "city", "state", "zip"):
        value = getattr(address, name)
        if not value.strip() or len(value) > 200:
            errors.append(
                FieldError(
                    field=f"{field}.{name}",
                    rule="required",
                    message=f"{name} is required (at most 200 characters)",
                )
            )
    if address.country.upper() in {"US", "USA"} and not re.fullmatch(
        r"[0-9]{5}(-?[0-9]{4})?", address.zip.strip()
    ):
        errors.append(
            FieldError(
                field=f"{field}.zip", rule="format", message="a US ZIP code is 5 digits (or ZIP+4)"
            )
        )
    zone = address.time_zone
    if zone is not None:
        if not valid_zone(zone):
            errors.append(
                FieldError(
                    field=f"{field}.time_zone", rule="time_zone", message="not an IANA time zone"
                )
            )
    else:
        zone = zone_for_zip(address.zip, address.country)
        if zone is None:
            errors.append(
                FieldError(
                    field=f"{field}.time_zone",
                    rule="required",
                    message="cannot detect the time zone from this ZIP: choose one",
                )
            )
    return msgspec.structs.replace(address, time_zone=zone)


def check_customer(info: CustomerInfo, errors: list[FieldError]) -> CustomerInfo:
    """Step 2b's rules (names, email pair, phone, addresses and time zone); the info with the
    detected time zones filled in. Also used when a live customer's contact details change."""
    for name in ("first_name", "last_name"):
        value = getattr(info, name).strip()
        if not value or len(value) > 100:
            errors.append(
                FieldError(
                    field=f"customer.{name}",
                    rule="required",
                    message=f"{name} is required (at most 100 characters)",
                )
            )
    if not _EMAIL.fullmatch(info.email) or len(info.email) > 254:
        errors.append(
            FieldError(field="customer.email", rule="email", message="not an email address")
        )
    if info.email.strip().lower() != info.email_confirm.strip().lower():
        errors.append(
            FieldError(
                field="customer.email_confirm",
                rule="emails_match",
                message="the two email addresses do not match",
            )
        )
    digits = re.sub(r"[\s().+-]", "", info.phone)
    if not (digits.isascii() and digits.isdigit()) or not 7 <= len(digits) <= 15:
        errors.append(
            FieldError(
                field="customer.phone", rule="phone", message="a phone number has 7-15 digits"
            )
        )
    address = _address(info.address, "customer.address", errors)
    installation = info.installation_address
    if not info.installed_at_primary_address:
        if installation is None:
            errors.append(
                FieldError(
                    field="customer.installation_address",
                    rule="required",
                    message="required when the system is not installed at the primary contact's address",
                )
            )
        else:
            installation = _address(installation, "customer.installation_address", errors)
    return msgspec.structs.replace(info, address=address, installation_address=installation)


def _operations(ops: Operations, today: date, errors: list[FieldError]) -> Operations:
    end = ops.contract_end_date
    if ops.contract_length_months is not None:
        if not 1 <= ops.contract_length_months <= 120:
            errors.append(
                FieldError(
                    field="operations.contract_length_months", rule="range", message="1-120 months"
                )
            )
        elif end is None:
            end = add_months(today, ops.contract_length_months)
    if end is not None and end <= today:
        errors.append(
            FieldError(
                field="operations.contract_end_date",
                rule="future",
                message="the contract end date must be in the future",
            )
        )
    for name in ("alternate_id", "sales_rep", "installer_rep", "customer_source"):
        value = getattr(ops, name)
        if value is not None and len(value) > 200:
            errors.append(
                FieldError(
                    field=f"operations.{name}", rule="length", message="at most 200 characters"
                )
            )
    return msgspec.structs.replace(ops, contract_end_date=end)


async def _dealer(
    conn: asyncpg.Connection,
    caller: Caller,
    step: DealerStep,
    errors: list[FieldError],
    *,
    check_visible: bool = True,
) -> DealerStep | None:
    dealer_id = step.dealer_id if step.dealer_id is not None else caller.dealer_id
    if dealer_id is None:
        errors.append(
            FieldError(field="dealer.dealer_id", rule="required", message="choose the dealer")
        )
        return None
    visible = await visible_dealers(conn, caller) if check_visible else None
    exists = await conn.fetchval("SELECT true FROM dealers WHERE id = $1", dealer_id)
    if not exists or (visible is not None and dealer_id not in visible):
        errors.append(
            FieldError(
                field="dealer.dealer_id", rule="exists", message="no such dealer among yours"
            )
        )
        return None
    if step.sub_dealer_id is not None:
        parent = await conn.fetchval(
            "SELECT parent_id FROM dealers WHERE id = $1", step.sub_dealer_id
        )
        if parent != dealer_id:
            errors.append(
                FieldError(
                    field="dealer.sub_dealer_id",
                    rule="sub_dealer",
                    message="not a sub-dealer of this dealer",
                )
            )
    return msgspec.structs.replace(step, dealer_id=dealer_id)


async def _login(
    conn: asyncpg.Connection,
    step: LoginStep,
    info: CustomerInfo | None,
    exclude: int | None,
    errors: list[FieldError],
) -> str | None:
    name = step.login_name
    if name is None:
        if info is None:
            return None
        return await suggest_login(conn, info.first_name, info.last_name)
    problem = login_problem(name)
    if problem is not None:
        errors.append(FieldError(field="login.login_name", rule=problem[0], message=problem[1]))
        return None
    taken = await conn.fetchval(
        "SELECT true FROM customers WHERE lower(login_name) = lower($1) AND id IS DISTINCT FROM $2",
        name,
        exclude,
    )
    if taken:
        errors.append(
            FieldError(field="login.login_name", rule="unique", message="login already in use")
        )
    return name


async def check_system(
    conn: asyncpg.Connection,
    system: SystemInfo,
    account_type: str | None,
    virtual: bool,
    errors: list[FieldError],
) -> tuple[SystemInfo, ModuleType | None]:
    serial = normalize_serial(system.serial) if system.serial else None
    module: ModuleType | None = None
    if system.module_type is not None:
        module = MODULE_TYPES.get(system.module_type)
        if module is None:
            errors.append(
                FieldError(
                    field="system.module_type",
                    rule="exists",
                    message=f"unknown module type; one of {', '.join(MODULE_TYPES)}",
                )
            )
    elif serial is not None:
        module = detect_module_type(serial)
        if module is None:
            errors.append(
                FieldError(
                    field="system.module_type",
                    rule="required",
                    message="cannot tell the module type from this serial (IMEI modules: choose lte or lte-voice)",
                )
            )
    elif virtual:
        module = MODULE_TYPES["lte"]
    else:
        errors.append(
            FieldError(
                field="system.serial",
                rule="required",
                message="module serial number or IMEI is required",
            )
        )
    if module is not None and account_type is not None and account_type not in module.account_types:
        errors.append(
            FieldError(
                field="system.module_type",
                rule="account_type",
                message=f"{module.name} is not used for {account_type}",
            )
        )
    if serial is not None and len(serial) > MAX_SERIAL_LENGTH:
        errors.append(
            FieldError(
                field="system.serial",
                rule="max_length",
                message=f"a module serial has at most {MAX_SERIAL_LENGTH} characters",
            )
        )
        serial = None
    elif serial is None and virtual:
        serial = "VIRT" + secrets.token_hex(6).upper()  # simulated module
    elif serial is not None and module is not None and not virtual:
        problem = serial_problem(module, serial)
        if problem is not None:
            errors.append(FieldError(field="system.serial", rule=problem[0], message=problem[1]))
            serial = None
    if serial is not None and await conn.fetchval(
        "SELECT true FROM accounts WHERE module_serial = $1", serial
    ):
        errors.append(
            FieldError(
                field="system.serial",
                rule="unique",
                message="this module serial already belongs to a live account",
            )
        )
    account = (
        system.dc09_account.upper()
        if system.dc09_account
        else (derived_account(serial) if serial else None)
    )
    if account is not None:
        if not _HEX_ACCOUNT.fullmatch(account):
            errors.append(
                FieldError(
                    field="system.dc09_account",
                    rule="format",
                    message="a DC-09 account number is 3-16 hex digits",
                )
            )
        elif await conn.fetchval("SELECT true FROM accounts WHERE account = $1", account):
            errors.append(
                FieldError(
                    field="system.dc09_account",
                    rule="unique",
                    message="this DC-09 account number is already in use",
                )
            )
    panel = system.panel_type
    if module is not None and module.panel_type is not None:
        if panel is not None and panel != module.panel_type:
            errors.append(
                FieldError(
                    field="system.panel_type",
                    rule="panel_mismatch",
                    message=f"this module is built into a {module.panel_type}",
                )
            )
        panel = module.panel_type
    elif panel is None:
        if account_type in {"video_access", "automation"}:
            panel = "no-panel"
        elif virtual:
            panel = "wireless-panel"  # a simulated module reports as a plain wireless panel
        else:
            errors.append(
                FieldError(
                    field="system.panel_type",
                    rule="required",
                    message="choose the control panel type (it cannot be detected from this serial)",
                )
            )
    elif panel not in PANEL_TYPES:
        errors.append(
            FieldError(
                field="system.panel_type", rule="exists", message=f"one of {', '.join(PANEL_TYPES)}"
            )
        )
    if system.key is not None:
        from protocols.dc09_crypto import AesKey  # noqa: PLC0415

        try:
            AesKey.parse(system.key, system.key_format)
        except ValueError as exc:
            errors.append(FieldError(field="system.key", rule="aes_key", message=str(exc)))
    resolved = msgspec.structs.replace(
        system,
        serial=serial,
        module_type=module.code if module else None,
        panel_type=panel,
        dc09_account=account,
    )
    return resolved, module


async def check_package(
    conn: asyncpg.Connection,
    step: PackageStep,
    account_type: str | None,
    dealer_id: int | None,
    errors: list[FieldError],
    kept: frozenset[str] = frozenset(),
) -> tuple[PackageStep, Quote | None, dict[str, Package]]:
    base, addons = step.base, list(step.addons)
    if step.template_id is not None:
        templates = {t.id: t for t in await offered_templates(conn, dealer_id)}
        template = templates.get(step.template_id)
        if template is None:
            errors.append(
                FieldError(
                    field="package.template_id", rule="exists", message="no such package template"
                )
            )
        elif base is None:
            base, addons = template.base, list(template.addons)
    if base is None:
        errors.append(
            FieldError(field="package.base", rule="required", message="choose a service package")
        )
        return step, None, {}
    packages = await load_packages(conn, [base, *addons], for_share=True)
    problems = check_selection(base, addons, packages, account_type, kept=kept)
    errors.extend(problems)
    selected = msgspec.structs.replace(step, base=base, addons=addons)
    if problems:
        return selected, None, packages
    return selected, quote(packages[base], [packages[a] for a in addons]), packages


async def check_forwarding(
    conn: asyncpg.Connection,
    step: ForwardingStep,
    *,
    account_type: str | None,
    dealer_id: int | None,
    module: ModuleType | None,
    package: Quote | None,
    check_module: bool,
    errors: list[FieldError],
    warnings: list[str],
) -> ForwardingSettings:
    categories = (
        frozenset(step.categories) if step.categories is not None else DEFAULT_FORWARDED_CATEGORIES
    )
    for category in categories - set(FORWARDING_CATEGORIES):
        errors.append(
            FieldError(
                field="forwarding.categories",
                rule="forwardable",
                message=f"{category} is not a forwarding category",
            )
        )
    receivers = await usable_receivers(conn, dealer_id) if dealer_id is not None else {}
    if account_type == "security_system" and dealer_id is not None and not receivers:
        warnings.append(NO_STATION_WARNING)
    if (
        account_type is not None
        and account_type != "security_system"
        and step.mode != ForwardingMode.NEVER
    ):
        errors.append(
            FieldError(
                field="forwarding.mode",
                rule="not_monitored",
                message=f"{account_type} accounts are not forwarded to a monitoring station: use never",
            )
        )
    if step.mode != ForwardingMode.NEVER:
        if not receivers and dealer_id is not None:
            errors.append(
                FieldError(
                    field="forwarding.mode",
                    rule="no_station",
                    message=f"{NO_STATION_WARNING}: only self-monitored accounts (mode never) can be created",
                )
            )
        if step.primary_receiver is None:
            errors.append(
                FieldError(
                    field="forwarding.primary_receiver",
                    rule="required",
                    message="choose the receiver",
                )
            )
        if step.station_account is None:
            errors.append(
                FieldError(
                    field="forwarding.station_account",
                    rule="required",
                    message="the customer's account number at the monitoring station is required",
                )
            )
    if step.primary_receiver is not None and step.primary_receiver not in receivers:
        errors.append(
            FieldError(
                field="forwarding.primary_receiver",
                rule="exists",
                message="no such receiver at your monitoring stations",
            )
        )
    if step.backup_receiver is not None and (
        step.backup_receiver not in receivers or step.backup_receiver == step.primary_receiver
    ):
        errors.append(
            FieldError(
                field="forwarding.backup_receiver",
                rule="exists",
                message="no such receiver (and not the primary one)",
            )
        )
    for chosen in (step.primary_receiver, step.backup_receiver):
        if chosen in receivers and receivers[chosen].kind == "phone":
            warnings.append(PHONE_WARNING.format(name=chosen))
    if (
        step.primary_receiver in receivers
        and step.backup_receiver in receivers
        and step.station_account is not None
    ):
        stations = await stations_of(conn, [step.primary_receiver, step.backup_receiver])
        primary_station = stations.get(step.primary_receiver)
        backup_station = stations.get(step.backup_receiver)
        if primary_station != backup_station:
            # One station account number goes to both (engine/delivery.py): at another station
            # it may be another customer's.
            warnings.append(
                BACKUP_AT_OTHER_STATION_WARNING.format(
                    backup=step.backup_receiver,
                    backup_station=backup_station,
                    primary_station=primary_station,
                    account=step.station_account.upper(),
                )
            )
    if step.station_account is not None and not STATION_ACCOUNT.fullmatch(step.station_account):
        errors.append(
            FieldError(field="forwarding.station_account", rule="format", message="3-16 hex digits")
        )
    if step.ul_listed:
        # PRODUCT.md: on a UL/ETL installation Alarms and Panel Not Responding cannot be deselected.
        for required in (Category.ALARMS, Category.PANEL_NOT_RESPONDING):
            if required not in categories:
                errors.append(
                    FieldError(
                        field="forwarding.categories",
                        rule="ul_required",
                        message=f"a UL/ETL installation must forward {required.value}",
                    )
                )
    if step.two_way_voice:
        receiver = receivers.get(step.primary_receiver or "")
        missing = check_two_way_voice_eligibility(
            module_capable=not check_module or (module is not None and module.two_way_voice),
            receiver_supports=receiver is not None and receiver.two_way_voice,
            package_includes=package is not None and "two_way_voice" in package.includes,
        )
        if missing:
            errors.append(
                FieldError(
                    field="forwarding.two_way_voice",
                    rule="two_way_voice_eligible",
                    message="two-way voice is not available: "
                    + "; ".join(_VOICE_MISSING[m] for m in missing),
                )
            )
        backup = receivers.get(step.backup_receiver or "")
        if not missing and backup is not None and not backup.two_way_voice:
            # Listen-in goes to the receiver that acknowledged the alarm (engine/voice_session.py):
            # after a failover to this one, no voice session is started.
            warnings.append(BACKUP_WITHOUT_VOICE_WARNING.format(name=backup.name))
    return ForwardingSettings(
        mode=step.mode,
        phone_line_connected=step.phone_line_connected,
        categories=categories,
        station_account=step.station_account.upper() if step.station_account else None,
        primary_receiver=step.primary_receiver,
        backup_receiver=step.backup_receiver,
        ul_listed=step.ul_listed,
        two_way_voice=step.two_way_voice,
    )


async def _installation(
    conn: asyncpg.Connection,
    step: InstallationStep,
    dealer_id: int | None,
    errors: list[FieldError],
) -> None:
    templates = {t.id: t for t in await offered_installation_templates(conn, dealer_id)}
    for field, kind in (
        ("notifications_template_id", "notifications"),
        ("panel_template_id", "panel"),
    ):
        wanted = getattr(step, field)
        if wanted is not None and (wanted not in templates or templates[wanted].kind != kind):
            errors.append(
                FieldError(
                    field=f"installation.{field}", rule="exists", message=f"no such {kind} template"
                )
            )


async def plan_creation(
    conn: asyncpg.Connection,
    caller: Caller,
    document: dict[str, Any],
    *,
    commitment: bool = False,
    exclude_customer: int | None = None,
    today: date | None = None,
    dealer_checked: bool = False,
    kept_packages: frozenset[str] = frozenset(),
) -> Plan:
    """Validate a creation document; the Plan, or :class:`Invalid` with every field error.

    ``dealer_checked``: the caller may act for the document's dealer already (a commitment it
    sees, possibly as the sub-dealer serving it): the dealer step is not checked against the
    caller's own dealers again. ``kept_packages``: package codes already sold to this customer
    (a commitment's), accepted even if deactivated since."""
    errors: list[FieldError] = []
    warnings: list[str] = []
    today = today or datetime.now(UTC).date()
    steps = _decode_steps(document, errors, required=REQUIRED_STEPS)
    account_type: str | None = steps.get("account_type")
    virtual = bool(steps.get("virtual", False))
    dealer = await _dealer(
        conn, caller, steps.get("dealer", DealerStep()), errors, check_visible=not dealer_checked
    )
    dealer_id = dealer.dealer_id if dealer else None
    info = check_customer(steps["customer"], errors) if "customer" in steps else None
    ops = _operations(steps.get("operations", Operations()), today, errors)
    login = await _login(conn, steps.get("login", LoginStep()), info, exclude_customer, errors)
    system: SystemInfo | None = steps.get("system")
    module: ModuleType | None = None
    if commitment:
        if system is not None:
            errors.append(
                FieldError(
                    field="system",
                    rule="commitment",
                    message="a commitment has no module yet: give it at activation",
                )
            )
    elif system is None and not virtual:
        errors.append(
            FieldError(
                field="system",
                rule="required",
                message="system information (module serial or IMEI) is required",
            )
        )
    else:
        system, module = await check_system(
            conn, system or SystemInfo(), account_type, virtual, errors
        )
    pathway = steps.get("pathway")
    if module is not None:
        pathway = pathway or module.default_pathway
        if pathway not in module.pathways:
            errors.append(
                FieldError(
                    field="pathway",
                    rule="module_pathway",
                    message=f"{module.name} supports {', '.join(module.pathways)}",
                )
            )
    package_step, package_quote, packages = await check_package(
        conn, steps.get("package", PackageStep()), account_type, dealer_id, errors, kept_packages
    )
    forwarding = await check_forwarding(
        conn,
        steps.get("forwarding", ForwardingStep()),
        account_type=account_type,
        dealer_id=dealer_id,
        module=module,
        package=package_quote,
        check_module=not commitment,
        errors=errors,
        warnings=warnings,
    )
    await _installation(conn, steps.get("installation", InstallationStep()), dealer_id, errors)
    group = steps.get("enterprise_group")
    if group is not None:
        if not group.strip() or len(group) > 100:
            errors.append(
                FieldError(field="enterprise_group", rule="length", message="1-100 characters")
            )
        if package_quote is None or not enterprise_eligible(
            packages.get(package_step.base or ""),
            [packages[a] for a in package_step.addons if a in packages],
        ):
            errors.append(
                FieldError(
                    field="enterprise_group",
                    rule="enterprise_eligible",
                    message="an enterprise group needs a commercial package and the enterprise add-on",
                )
            )
    if errors:
        raise Invalid(errors, warnings)
    assert info is not None
    assert dealer is not None
    assert dealer_id is not None
    assert login is not None
    assert account_type is not None
    assert package_quote is not None
    supervision = supervision_interval_for(package_quote)
    account: Account | None = None
    if system is not None and not commitment:
        assert system.dc09_account is not None
        account = Account(
            account=system.dc09_account,
            module_serial=system.serial,
            name=f"{info.first_name} {info.last_name}",
            key=system.key,
            key_format=KeyFormat(system.key_format),
            supervision_interval_s=supervision,
            two_way_voice_capable=bool(module and module.two_way_voice),
            virtual=virtual,
            forwarding=forwarding,
        )
    resolved: dict[str, Any] = {
        "account_type": account_type,
        "dealer": dealer,
        "customer": info,
        "operations": ops,
        "login": LoginStep(login_name=login),
        "system": system,
        "pathway": pathway,
        "package": package_step,
        "forwarding": steps.get("forwarding", ForwardingStep()),
        "installation": steps.get("installation", InstallationStep()),
        "enterprise_group": group,
        "virtual": virtual,
    }
    doc = msgspec.to_builtins(resolved)
    if doc.get("system"):
        doc["system"].pop("key", None)  # the AES key lives only in the accounts row
    doc["customer"].pop("email_confirm", None)
    time_zone = info.address.time_zone
    assert time_zone is not None
    summary = Summary(
        account_type=account_type,
        dealer_id=dealer_id,
        sub_dealer_id=dealer.sub_dealer_id,
        customer_name=f"{info.first_name} {info.last_name}",
        email=info.email,
        login_name=login,
        time_zone=time_zone,
        module_type=module.code if module else None,
        module_serial=system.serial if system else None,
        dc09_account=system.dc09_account if system else None,
        panel_type=system.panel_type if system else None,
        pathway=pathway,
        package=package_quote,
        supervision_interval_s=supervision,
        forwarding_mode=forwarding.mode.value,
        primary_receiver=forwarding.primary_receiver,
        station_account=forwarding.station_account,
        categories=sorted(c.value for c in forwarding.categories),
        two_way_voice=forwarding.two_way_voice,
        enterprise_group=group,
        virtual=virtual,
        contract_end_date=ops.contract_end_date,
    )
    return Plan(
        account_type=account_type,
        dealer_id=dealer_id,
        sub_dealer_id=dealer.sub_dealer_id,
        login_name=login,
        document=doc,
        account=account,
        module_type=module.code if module else None,
        summary=summary,
        warnings=warnings,
    )
