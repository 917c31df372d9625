"""One typed settings object: TOML file, then ``ALARMRELAY_*`` environment variables.

Every section is a frozen msgspec struct that rejects unknown keys. Environment variables map to
keys with ``__`` between section and key (``ALARMRELAY_DC09__PORT=10009``); top-level keys and the
common shortcut ``ALARMRELAY_DATABASE_URL`` work too. Errors name the key and the file.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from engine.errors import UserFacingError

ENV_PREFIX = "ALARMRELAY_"


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DatabaseSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None  # None: start the embedded PostgreSQL under data_dir
    pool_min: int = 2
    pool_max: int = 10
    commit_batch_max: int = 256  # signals per group-commit transaction
    commit_window_ms: float = 1.0  # wait this long for stragglers before committing a small batch
    command_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0

    def __repr__(self) -> str:
        return f"DatabaseSettings(url={redact_url(self.url)!r}, pool_max={self.pool_max})"


class Dc09Settings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 10009  # TCP and UDP on the same port
    timestamp_past_s: int = 40
    timestamp_future_s: int = 20
    check_plain_timestamps: bool = True
    unknown_account: Literal["duh", "silent"] = "duh"
    duplicate_window_s: int = 600
    idle_timeout_s: float = 300.0
    max_connections: int = 10_000
    rate_limit_per_s: float = 50.0
    max_frame_bytes: int = 4096
    max_pending_commits: int = 10_000


class MqttSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str = "alarmrelay-engine"
    shared_group: str = "alarmrelay"
    topic_prefix: str = "alarmrelay/v1"
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_inflight: int = 1000
    max_payload_bytes: int = 16_384

    def __repr__(self) -> str:
        secret = "<hidden>" if self.password else None
        return f"MqttSettings(host={self.host!r}, port={self.port}, username={self.username!r}, password={secret})"


class HttpSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8080


class LoggingSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class RetentionSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    signals_days: int = 90
    partitions_ahead_days: int = 3


class Settings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = "./var"
    database: DatabaseSettings = DatabaseSettings()
    dc09: Dc09Settings = Dc09Settings()
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()
    retention: RetentionSettings = RetentionSettings()


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced (for logs and errors)."""
    if url is None:
        return None
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def _sections() -> dict[str, type[_Section]]:
    return {
        "database": DatabaseSettings,
        "dc09": Dc09Settings,
        "mqtt": MqttSettings,
        "http": HttpSettings,
        "logging": LoggingSettings,
        "retention": RetentionSettings,
    }


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sections = _sections()
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key == "database_url":
            out.setdefault("database", {})["url"] = value
        elif "__" in key:
            section, field = key.split("__", 1)
            if section not in sections:
                raise UserFacingError(f"environment variable {name}: unknown section {section!r}")
            out.setdefault(section, {})[field] = value
        else:
            out[key] = value
    return out


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _suggest(path: str) -> str:
    *parents, leaf = path.split(".")
    fields: tuple[str, ...]
    if not parents:
        fields = Settings.__struct_fields__
    else:
        section = _sections().get(parents[0])
        fields = section.__struct_fields__ if section else ()
    close = difflib.get_close_matches(leaf, fields, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: msgspec.ValidationError, source: str) -> str:
    message = str(error)
    unknown = re.match(r"Object contains unknown field `([^`]+)`(?: - at `\$\.?([^`]*)`)?", message)
    if unknown:
        field, where = unknown.group(1), unknown.group(2) or ""
        path = f"{where}.{field}" if where else field
        return f"{source}: unknown key {path!r}{_suggest(path)}"
    located = re.match(r"(.*) - at `\$\.?([^`]*)`", message)
    if located:
        return f"{source}: {located.group(2)}: {located.group(1)}"
    return f"{source}: {message}"


def load_settings(path: Path | None, environ: Mapping[str, str] = os.environ) -> Settings:
    """Read ``path`` (optional) and the environment into :class:`Settings`.

    Raises UserFacingError with a message naming the key and the file on any problem.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise UserFacingError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            decoded = msgspec.toml.decode(text)
        except msgspec.DecodeError as exc:
            raise UserFacingError(f"{path}: invalid TOML: {exc}") from None
        if not isinstance(decoded, dict):
            raise UserFacingError(f"{path}: expected a TOML table at the top")
        raw = decoded
    env = _env_overrides(environ)
    try:
        # Validate the file alone first so its errors name the file, then with the environment.
        msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise UserFacingError(_describe(exc, source)) from None
    try:
        return msgspec.convert(_merge(raw, env), Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise UserFacingError(_describe(exc, "environment (ALARMRELAY_*)")) from None
