"""What the engine knows about a customer account (one premises module) and its forwarding.

This is the contract shared by the store, ``accounts import/export``, the DC-09 account
directory, the policy and the admin API. JSON import/export uses exactly these field names.
"""

from __future__ import annotations

import re
from enum import StrEnum

import msgspec

from protocols.signal import DEFAULT_FORWARDED_CATEGORIES, Category

# The customer's account number at the monitoring station, as every frame to it carries it:
# 3-16 hex digits (stored upper case). The admin API and `accounts import` both check it.
STATION_ACCOUNT = re.compile(r"[0-9A-Fa-f]{3,16}")


class KeyFormat(StrEnum):
    """How a DC-09 AES key was entered (PROTOCOLS.md §1.12)."""

    HEX = "hex"  # 32/48/64 hex characters decoded to 16/24/32 bytes
    ASCII = "ascii"  # the ASCII bytes of a 16/24/32-character string (Ajax, pysiaalarm)


class ForwardingMode(StrEnum):
    """When signals go to the monitoring station."""

    ALWAYS = "always"
    PHONE_LINE_FAILURE = "phone_line_failure"  # only if the phone line fails
    NEVER = "never"  # self-monitored


class ForwardingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An account's monitoring-station forwarding settings (PRODUCT.md "Forwarding semantics")."""

    mode: ForwardingMode = ForwardingMode.NEVER
    phone_line_connected: bool = False
    categories: frozenset[Category] = DEFAULT_FORWARDED_CATEGORIES
    station_account: str | None = None  # the customer's account number at the station
    primary_receiver: str | None = None  # receiver name (see stations)
    backup_receiver: str | None = None
    ul_listed: bool = False
    two_way_voice: bool = False  # "initiate a two-way-voice call for fire and CO alarms"


class Account(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One premises module as the engine sees it."""

    account: str  # the DC-09 #acct the module sends (3-16 hex chars), upper case
    module_serial: str | None = None  # serial or IMEI; the MQTT identity of the module
    name: str | None = None  # customer display name
    key: str | None = None  # DC-09 AES key as entered (never logged)
    key_format: KeyFormat = KeyFormat.HEX
    timestamp_past_s: int | None = None  # window override, seconds before now
    timestamp_future_s: int | None = None  # window override, seconds after now
    local_time_zone: str | None = None  # IANA zone when the panel sends local time, not UTC
    supervision_interval_s: int = 86_400
    two_way_voice_capable: bool = False
    virtual: bool = False
    forwarding: ForwardingSettings = ForwardingSettings()
    dialer_delay_s: int | None = (
        None  # the panel's dialer delay for Crash & Smash; None: the default
    )
