"""Module types, their serial formats, and IMEI validation (Luhn).

A cellular-only module is identified by its IMEI (15 digits, the last a Luhn check digit, as
3GPP TS 23.003 §6.2.1 defines it). Other modules carry a printed serial whose format depends on
the module type. The module type also says which pathways it supports, its default pathway,
whether it can do two-way voice, and (for panels with the module built in) the panel type,
which is how the panel type is "auto-detected from the serial".
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import msgspec

Pathway = Literal["cellular", "broadband", "dual_path"]


class ModuleType(msgspec.Struct, frozen=True, kw_only=True):
    """What the flow knows about one kind of communicator module."""

    code: str
    name: str
    identifier: Literal["imei", "serial"]
    serial_pattern: str | None  # regex for "serial" modules
    serial_example: str
    pathways: tuple[Pathway, ...]
    default_pathway: Pathway
    two_way_voice: bool
    account_types: tuple[str, ...]
    panel_type: str | None = None  # set: the module is built into this panel (auto-detected)


MODULE_TYPES: dict[str, ModuleType] = {
    m.code: m
    for m in (
        ModuleType(
            code="lte",
            name="LTE universal communicator",
            identifier="imei",
            serial_pattern=None,
            serial_example="490154203237518",
            pathways=("cellular",),
            default_pathway="cellular",
            two_way_voice=False,
            account_types=("security_system", "automation"),
        ),
        ModuleType(
            code="lte-voice",
            name="LTE communicator with two-way voice",
            identifier="imei",
            serial_pattern=None,
            serial_example="356938035643809",
            pathways=("cellular",),
            default_pathway="cellular",
            two_way_voice=True,
            account_types=("security_system",),
        ),
        ModuleType(
            code="dual-path",
            name="Dual-path (broadband + LTE) communicator",
            identifier="serial",
            serial_pattern=r"DP[0-9A-F]{10}",
            serial_example="DP00A1B2C3D4",
            pathways=("cellular", "broadband", "dual_path"),
            default_pathway="dual_path",
            two_way_voice=True,
            account_types=("security_system",),
        ),
        ModuleType(
            code="broadband",
            name="Broadband (IP) communicator",
            identifier="serial",
            serial_pattern=r"BB[0-9A-F]{10}",
            serial_example="BB0012AB34CD",
            pathways=("broadband",),
            default_pathway="broadband",
            two_way_voice=False,
            account_types=("security_system", "automation"),
        ),
        ModuleType(
            code="touchscreen",
            name="Touchscreen panel with built-in dual-path module",
            identifier="serial",
            serial_pattern=r"TS[0-9]{10}",
            serial_example="TS0123456789",
            pathways=("cellular", "broadband", "dual_path"),
            default_pathway="dual_path",
            two_way_voice=True,
            account_types=("security_system",),
            panel_type="touchscreen-panel",
        ),
        ModuleType(
            code="video-hub",
            name="Video / access control hub",
            identifier="serial",
            serial_pattern=r"VH[0-9A-F]{10}",
            serial_example="VH00FF00AA11",
            pathways=("broadband", "dual_path"),
            default_pathway="broadband",
            two_way_voice=False,
            account_types=("video_access",),
        ),
        ModuleType(
            code="automation-hub",
            name="Automation and awareness hub",
            identifier="serial",
            serial_pattern=r"AH[0-9A-F]{10}",
            serial_example="AH0123456789",
            pathways=("cellular", "broadband"),
            default_pathway="broadband",
            two_way_voice=False,
            account_types=("automation",),
        ),
    )
}

PANEL_TYPES: tuple[str, ...] = (
    "touchscreen-panel",
    "hybrid-wired-panel",
    "wireless-panel",
    "commercial-panel",
    "no-panel",  # video/access or automation only
)


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn check (its last digit is the check digit)."""
    if not digits.isdigit() or not digits.isascii():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


MAX_SERIAL_LENGTH = 64  # any real serial is far shorter; a virtual module's is free-form


def normalize_serial(serial: str) -> str:
    """Upper case without spaces or dashes (how serials are printed varies)."""
    return re.sub(r"[\s-]", "", serial).upper()


def serial_problem(module: ModuleType, serial: str) -> tuple[str, str] | None:
    """(rule, message) when ``serial`` (normalised) is not valid for the module type, else None."""
    if module.identifier == "imei":
        if not re.fullmatch(r"[0-9]{15}", serial):
            return "imei_format", "an IMEI has 15 digits"
        if not luhn_ok(serial):
            return "imei_luhn", "IMEI check digit (Luhn) is wrong"
        return None
    assert module.serial_pattern is not None
    if not re.fullmatch(module.serial_pattern, serial):
        return "serial_format", f"a {module.name} serial looks like {module.serial_example}"
    return None


def derived_account(serial: str) -> str:
    """The module's DC-09 account number when none is given.

    A serial that is already 3-16 hex characters (every IMEI, most printed serials) is its own
    account number; anything else maps to 12 hex characters of its SHA-256, stable and
    collision-unlikely. The module must be programmed with the same number (shown in the summary).
    """
    if re.fullmatch(r"[0-9A-F]{3,16}", serial):
        return serial
    return hashlib.sha256(serial.encode()).hexdigest()[:12].upper()


def detect_module_type(serial: str) -> ModuleType | None:
    """The serial-format module type a serial belongs to (IMEIs are ambiguous: None)."""
    for module in MODULE_TYPES.values():
        if module.serial_pattern and re.fullmatch(module.serial_pattern, serial):
            return module
    return None
