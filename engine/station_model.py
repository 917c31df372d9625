"""Monitoring stations and their receivers, as imported, exported and stored."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from typing import Literal

import msgspec


class ReceiverConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One receiver of a station: an IP receiver (DC-09) or a phone receiver (stored only)."""

    name: str
    kind: Literal["ip", "phone"] = "ip"
    host: str | None = None
    port: int | None = None
    protocol: Literal["tcp", "udp"] = "tcp"
    receiver_number: str | None = None  # DC-09 R, 1-6 hex digits
    line_prefix: str | None = None  # DC-09 L, 1-6 hex digits
    key: str | None = None  # never logged
    key_format: Literal["hex", "ascii"] = "hex"
    families: Literal["cid", "sia", "both"] = "both"
    two_way_voice: bool = False
    null_poll_interval_s: float = 60.0
    # The account NULL polls carry: one the receiver knows, for a receiver that ignores others.
    poll_account: str = "0000"
    ack_timeout_s: float = 5.0
    phone_number: str | None = None
    connections: int = 4  # DC-09 connections kept open (deliveries of different lanes in flight)

    def __repr__(self) -> str:
        return f"ReceiverConfig(name={self.name!r}, kind={self.kind!r}, host={self.host!r}, port={self.port})"


class Station(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A monitoring station with its receivers."""

    name: str
    own: bool = False  # the provider's own station
    receivers: tuple[ReceiverConfig, ...] = ()


def receiver_problem(receiver: ReceiverConfig) -> str | None:
    """Why a receiver cannot be stored as given, or None."""
    hexdigits = set("0123456789ABCDEFabcdef")
    if receiver.kind == "phone":
        if not receiver.phone_number:
            return "a phone receiver needs phone_number"
        return None
    if not receiver.host or receiver.port is None:
        return "an IP receiver needs host and port"
    if not _is_host(receiver.host):
        # A pasted space or a typo like "station..example.com" was stored and then failed every
        # delivery to the receiver.
        return (
            f"host {receiver.host[:80]!r} is neither an IP address nor a host name (labels of "
            "1-63 letters, digits, '-' or '_', separated by '.')"
        )
    if not 1 <= receiver.port <= 65535:
        return "port must be 1-65535"
    if not 1 <= receiver.connections <= 64:
        return "connections must be 1-64"
    for field in ("receiver_number", "line_prefix"):
        value = getattr(receiver, field)
        if value is not None and not (1 <= len(value) <= 6 and set(value) <= hexdigits):
            return f"{field} must be 1-6 hex digits"
    if receiver.key is not None:
        from protocols.dc09_crypto import AesKey  # noqa: PLC0415

        try:
            AesKey.parse(receiver.key, receiver.key_format)
        except ValueError as exc:
            return f"key: {exc}"
    if not 0 < receiver.ack_timeout_s <= 300:
        # a receiver that never answered would never be failed over from
        return "ack_timeout_s must be above 0 and at most 300 seconds"
    if not 0 < receiver.null_poll_interval_s <= 86_400:
        return "null_poll_interval_s must be above 0 and at most 86400 seconds (a day)"
    if not _POLL_ACCOUNT.fullmatch(receiver.poll_account):
        return "poll_account must be 1-16 characters 0-9, A-Z (a DC-09 account)"
    return None


NAME_RULE = "must be 1-100 characters, not blank"


def name_problem(name: str) -> str | None:
    """Why a station or receiver name cannot be stored (the admin API's rule), or None."""
    return NAME_RULE if not name.strip() or len(name) > 100 else None


_POLL_ACCOUNT = re.compile(r"[0-9A-Za-z]{1,16}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _is_host(host: str) -> bool:
    """An IPv4/IPv6 address, or a DNS name the resolver can take."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    name = host.removesuffix(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


PHONE_WARNING = (
    "receiver {name!r} is a phone receiver: it is stored and listed, but alarmrelay cannot deliver "
    "to it without a telephony gateway; accounts that use it will not be forwarded"
)
