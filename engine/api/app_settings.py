"""Settings of the admin API (what it needs beyond the database pool)."""

from __future__ import annotations

from typing import Any

import msgspec


class SmtpSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where welcome letters are sent from. Without it, letters are rendered but not emailed."""

    host: str
    port: int = 587
    sender: str = "noreply@localhost"
    username: str | None = None
    password: str | None = None  # never logged
    starttls: bool = True
    timeout_s: float = 10.0


class ApiSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the admin API needs beyond the database pool."""

    # Base of the one-time set-up link printed in welcome letters: <portal_url>/setup/<token>.
    portal_url: str = "http://127.0.0.1:8080/portal"
    setup_link_ttl_h: int = 168
    smtp: SmtpSettings | None = None


def api_settings(settings: Any | None) -> ApiSettings:
    """ApiSettings from ``create_app``'s ``settings``: an ApiSettings, or the engine's Settings
    (its flat ``[api]`` section), or None for the defaults."""
    if isinstance(settings, ApiSettings):
        return settings
    section = getattr(settings, "api", None)
    if section is None:
        return ApiSettings()
    smtp = None
    if section.smtp_host:
        smtp = SmtpSettings(
            host=section.smtp_host,
            port=section.smtp_port,
            sender=section.smtp_sender,
            username=section.smtp_username,
            password=section.smtp_password,
            starttls=section.smtp_starttls,
            timeout_s=section.smtp_timeout_s,
        )
    return ApiSettings(
        portal_url=section.portal_url, setup_link_ttl_h=section.setup_link_ttl_h, smtp=smtp
    )
