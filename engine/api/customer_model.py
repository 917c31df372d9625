"""The customer account-creation request, step by step (each step one section), and its answers."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import msgspec

from engine.account_model import ForwardingMode
from engine.api.packages import AccountType, Quote
from engine.api.serials import Pathway
from protocols.signal import Category


class _Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DealerStep(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 2a: whose customer it is and what is installed where."""

    dealer_id: int | None = None  # default: the caller's dealer (admin keys must give one)
    sub_dealer_id: int | None = None
    property_type: Literal["residential", "commercial"] = "residential"
    install_type: Literal["new", "takeover", "self_install"] = "new"


class Address(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A postal address; ``time_zone`` is detected from a US ZIP when not chosen."""

    country: str = "US"
    street1: str
    street2: str | None = None
    city: str
    state: str
    zip: str
    time_zone: str | None = None


class CustomerInfo(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 2b: the primary contact. First and last name cannot be changed after creation."""

    first_name: str
    last_name: str
    email: str
    email_confirm: str  # entered twice: must match
    phone: str
    phone_type: Literal["mobile", "home", "work"] = "mobile"
    language: Literal["en", "es", "fr"] = "en"
    address: Address
    installed_at_primary_address: bool = True
    installation_address: Address | None = (
        None  # required when not installed at the primary address
    )


class Operations(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 2c: operations fields."""

    alternate_id: str | None = None
    sales_rep: str | None = None
    installer_rep: str | None = None
    contract_length_months: int | None = None
    contract_end_date: date | None = None  # derived from the length when not given
    customer_source: str | None = None


class LoginStep(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 3: the login name (suggested when not given)."""

    login_name: str | None = None


class SystemInfo(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 4: the module and the panel."""

    serial: str | None = None  # module serial or IMEI (virtual customers: generated when absent)
    module_type: str | None = None  # detected from the serial format when absent (not for IMEIs)
    panel_type: str | None = None  # detected for panels with a built-in module
    dc09_account: str | None = None  # the module's DC-09 #acct; derived from the serial when absent
    key: str | None = None  # DC-09 AES key the module encrypts with (never returned)
    key_format: Literal["hex", "ascii"] = "hex"


class PackageStep(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 6: service package and add-ons (or a package template)."""

    base: str | None = None
    addons: list[str] = msgspec.field(default_factory=list)
    template_id: int | None = None  # fills base and add-ons when they are not given


class ForwardingStep(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 7: monitoring-station forwarding (PRODUCT.md "Forwarding semantics")."""

    mode: ForwardingMode = ForwardingMode.NEVER
    phone_line_connected: bool = False
    primary_receiver: str | None = None
    backup_receiver: str | None = None
    station_account: str | None = None  # the customer's account number at the station
    ul_listed: bool = False
    categories: list[Category] | None = None  # None: the defaults
    two_way_voice: bool = False


class InstallationStep(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Step 8: installation templates."""

    notifications_template_id: int | None = None
    panel_template_id: int | None = None


class CustomerCreate(_Step, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole creation request (steps 1-8, the enterprise group, virtual)."""

    account_type: AccountType
    dealer: DealerStep = msgspec.field(default_factory=DealerStep)
    customer: CustomerInfo
    operations: Operations = msgspec.field(default_factory=Operations)
    login: LoginStep = msgspec.field(default_factory=LoginStep)
    system: SystemInfo | None = None  # absent only for commitments
    pathway: Pathway | None = None  # default: the module's
    package: PackageStep = msgspec.field(default_factory=PackageStep)
    forwarding: ForwardingStep = msgspec.field(default_factory=ForwardingStep)
    installation: InstallationStep = msgspec.field(default_factory=InstallationStep)
    enterprise_group: str | None = None
    virtual: bool = False  # a demo customer; its module is simulated by the engine


STEP_TYPES: dict[str, Any] = {
    "account_type": AccountType,
    "dealer": DealerStep,
    "customer": CustomerInfo,
    "operations": Operations,
    "login": LoginStep,
    "system": SystemInfo | None,
    "pathway": Pathway | None,
    "package": PackageStep,
    "forwarding": ForwardingStep,
    "installation": InstallationStep,
    "enterprise_group": str | None,
    "virtual": bool,
}
STEP_ORDER = tuple(STEP_TYPES)
REQUIRED_STEPS = frozenset({"account_type", "customer"})


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """Step 9: the confirmation summary."""

    account_type: str
    dealer_id: int
    sub_dealer_id: int | None
    customer_name: str
    email: str
    login_name: str
    time_zone: str
    module_type: str | None
    module_serial: str | None
    dc09_account: str | None  # program the module with this account number
    panel_type: str | None
    pathway: str | None
    package: Quote | None
    supervision_interval_s: int
    forwarding_mode: str
    primary_receiver: str | None
    station_account: str | None
    categories: list[str]
    two_way_voice: bool
    enterprise_group: str | None
    virtual: bool
    contract_end_date: date | None


class Customer(msgspec.Struct, frozen=True, kw_only=True):
    """A customer as stored; ``can_log_in`` only once the panel has communicated."""

    id: int
    status: Literal["active", "commitment", "terminated"]
    commitment_id: str | None
    account_type: str
    dealer_id: int
    sub_dealer_id: int | None
    account: str | None
    module_serial: str | None
    login_name: str
    virtual: bool
    enterprise_group: str | None
    first_contact_at: datetime | None
    last_contact_at: datetime | None
    can_log_in: bool
    billing_started_at: datetime | None
    billing_ended_at: datetime | None
    terminated_at: datetime | None
    document: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class CustomerCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a creation: the customer, its summary and the warnings shown."""

    customer: Customer
    summary: Summary
    warnings: list[str]


class Validation(msgspec.Struct, frozen=True, kw_only=True):
    """A dry run: the summary when valid, each field error otherwise."""

    valid: bool
    summary: Summary | None
    warnings: list[str]
    errors: list[dict[str, str]]
