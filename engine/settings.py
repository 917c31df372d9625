"""One typed settings object: defaults, then a TOML file, then ``ALARMRELAY_*`` environment variables.

Every section is a frozen msgspec struct that rejects unknown keys, decoded once at the entry point
and passed explicitly (STYLE.md #7). Environment variables name a key with ``__`` between section
and key (``ALARMRELAY_DC09__PORT=10009`` → ``dc09.port``), top-level keys directly
(``ALARMRELAY_DATA_DIR``), and ``ALARMRELAY_DATABASE_URL`` is the usual shortcut for
``database.url``. Every problem becomes a :class:`UserFacingError` naming the file or the variable
and the key. Reference: docs/configuration.md.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec

from engine.errors import UTF8_BOM, UserFacingError
from protocols.dc09_frame import MAX_FRAME_BYTES

ENV_PREFIX = "ALARMRELAY_"
# The one shortcut without "__": the most common override in containers and CI.
ENV_DATABASE_URL = "ALARMRELAY_DATABASE_URL"

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0: an ephemeral port (tests)
Positive = Annotated[int, msgspec.Meta(gt=0)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
TEN_YEARS_S = 315_576_000
# A duration added to the time of a frame or signal (a timestamp window edge, the duplicate
# window, a supervision or Crash & Smash margin): up to ten years. A larger one has no use, and
# far larger ones put dates outside what Python or PostgreSQL hold: every frame or batch failed.
DurationSeconds = Annotated[int, msgspec.Meta(ge=0, le=TEN_YEARS_S)]
WindowSeconds = DurationSeconds
# Seconds (or a rate) as a finite positive number, at most a year: TOML and the environment
# also read "inf", which made a sleep last for ever (maintenance never ran again, a timer with no
# deadline never woke for a new one, MQTT never reconnected).
ONE_YEAR_S = 31_557_600
PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=ONE_YEAR_S)]
# A DC-09 event code: "cid:" and three digits, or "sia:" and two capital letters.
_ENTRY_CODE = r"^(cid:[0-9]{3}|sia:[A-Z]{2})$"
EntryCode = Annotated[str, msgspec.Meta(pattern=_ENTRY_CODE)]
# An MQTT shared subscription's group (MQTT 5 §4.8.2: no '/', '+' or '#'). With a '/' the broker
# reads the group as ending there and the rest as the topic filter: the engine subscribed, but to
# topics no module publishes on, and showed as connected while it received nothing.
_SHARE_NAME = r"^[^/+#]*$"
ShareName = Annotated[str, msgspec.Meta(pattern=_SHARE_NAME)]
# A topic prefix is a topic name (the acks and commands are published under it): no wildcards.
_TOPIC_PREFIX = r"^[^+#]+$"
TopicPrefix = Annotated[str, msgspec.Meta(pattern=_TOPIC_PREFIX)]
# What a person is told instead of a pattern's regex.
_PATTERN_WORDS = {
    _ENTRY_CODE: "expected 'cid:' and a 3-digit Contact ID code (cid:134), or 'sia:' and a 2-letter SIA code (sia:BA)",
    _SHARE_NAME: "expected a share group name without '/', '+' or '#' (it is the <group> of $share/<group>/…)",
    _TOPIC_PREFIX: "expected a topic prefix without the wildcards '+' and '#' (e.g. alarmrelay/v1)",
}


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A settings table whose secret fields never show in repr (logs, tracebacks)."""

    _secret_fields: ClassVar[frozenset[str]] = frozenset()

    def _shown(self) -> Iterator[tuple[str, Any]]:
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in self._secret_fields and value is not None:
                value = "<hidden>"
            elif name == "url" and isinstance(value, str):
                value = redact_url(value)
            yield name, value

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._shown())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(self._shown())


class DatabaseSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[database]``: the PostgreSQL server and the group-commit writer."""

    url: str | None = None  # None: start the embedded PostgreSQL under data_dir
    pool_min: NonNegative = 2
    pool_max: Positive = 10
    commit_batch_max: Positive = 256  # signals per group-commit transaction
    # Wait this long for more signals before committing a small batch. 0: an idle writer commits
    # at once (lowest latency); under load batches still form while the previous commit runs.
    commit_window_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 0.0
    # Concurrent group-commit writers (signals sharded by account, so per-account order holds).
    commit_writers: Annotated[int, msgspec.Meta(ge=1, le=32)] = 2
    command_timeout_s: PositiveFloat = 10.0
    connect_timeout_s: PositiveFloat = 5.0


class Dc09Settings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[dc09]``: the inbound SIA DC-09 listener (TCP and UDP on the same port)."""

    host: str = "127.0.0.1"
    port: Port = 10009
    timestamp_past_s: WindowSeconds = 40  # PROTOCOLS.md §1: accept −40 s …
    timestamp_future_s: WindowSeconds = 20  # … +20 s, else NAK with our time
    check_plain_timestamps: bool = True  # also check unencrypted frames that carry a timestamp
    unknown_account: Literal["duh", "silent"] = "duh"
    duplicate_window_s: DurationSeconds = 600  # same account + seq + data within it: stored once
    idle_timeout_s: PositiveFloat = 300.0
    max_connections: Positive = 10_000
    rate_limit_per_s: PositiveFloat = 50.0  # frames per second per connection (bursts: twice)
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=64)] = MAX_FRAME_BYTES  # the largest legal
    max_pending_commits: Positive = 10_000  # signals waiting for a commit before reads pause


class MqttSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[mqtt]``: the broker the modules publish to."""

    _secret_fields: ClassVar[frozenset[str]] = frozenset({"password"})

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 1883
    username: str | None = None
    password: str | None = None  # never shown in repr or logs
    client_id: str = "alarmrelay-engine"  # one per engine process: the broker keeps its session
    # $share/<group>/… so several engines split the load; unset: a plain subscription
    shared_group: ShareName | None = "alarmrelay"
    topic_prefix: TopicPrefix = "alarmrelay/v1"
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 5.0
    max_inflight: Annotated[int, msgspec.Meta(gt=0, le=65_535)] = 1000  # our Receive Maximum
    max_payload_bytes: Positive = 16_384  # larger payloads get a rejected ack
    # Our Maximum Packet Size: the broker drops larger messages for us (no ack at all).
    max_packet_bytes: Annotated[int, msgspec.Meta(ge=1024, le=268_435_460)] = 1_048_576
    keep_alive_s: Annotated[int, msgspec.Meta(ge=0, le=65_535)] = 30  # 0: no keep-alive
    # MQTT sessions of this engine in the shared group (client ids client_id, client_id-1, ...).
    connections: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    # How long a module command that could not be published (start_voice_session) is retried.
    command_retry_s: Annotated[float, msgspec.Meta(ge=0, le=ONE_YEAR_S)] = 60.0


class HttpSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[http]``: /metrics, /healthz, /readyz and the admin API."""

    host: str = "127.0.0.1"
    port: Port = 8080


class ApiSectionSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[api]``: the admin API under ``/v1`` on the HTTP port, and how welcome letters go out."""

    _secret_fields: ClassVar[frozenset[str]] = frozenset({"smtp_password"})

    enabled: bool = True  # false: the HTTP port serves only /metrics, /healthz and /readyz
    portal_url: str = "http://127.0.0.1:8080/portal"  # set-up links: <portal_url>/setup/<token>
    setup_link_ttl_h: Positive = 168  # how long a welcome letter's one-time set-up link is valid
    smtp_host: str | None = None  # None: welcome letters are rendered but not emailed
    smtp_port: Port = 587
    smtp_sender: str = "noreply@localhost"
    smtp_username: str | None = None
    smtp_password: str | None = None  # never shown in repr or logs
    smtp_starttls: bool = True
    smtp_timeout_s: PositiveFloat = 10.0


class LoggingSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[logging]``: structlog output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class RetentionSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[retention]``: how long signals are kept, and the partition maintenance job."""

    signals_days: Annotated[int, msgspec.Meta(gt=0, le=36_525)] = (
        90  # at most 100 years; whole daily partitions older than this are dropped
    )
    partitions_ahead_days: Annotated[int, msgspec.Meta(gt=0, le=366)] = (
        3  # daily partitions created ahead of time
    )
    maintenance_interval_s: PositiveFloat = 3600.0  # partitions, retention, dedupe cleanup


class SupervisionSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[supervision]``: Panel Not Responding when a module stays silent."""

    enabled: bool = True
    grace_s: DurationSeconds = 120  # added to each account's supervision interval
    max_sleep_s: PositiveFloat = 5.0  # the timer sleeps until the next deadline, at most this long


class CrashSmashSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[crash_smash]``: entry delays that are neither disarmed nor alarmed become alarms."""

    enabled: bool = True
    dialer_delay_s: DurationSeconds = 30  # the panel's dialer delay, added to the entry delay
    grace_s: DurationSeconds = 30  # transmission latency margin
    entry_codes: tuple[
        EntryCode, ...
    ] = ()  # DC-09 codes meaning "entry delay started", e.g. "cid:134"
    entry_delay_s: DurationSeconds = (
        30  # the entry delay assumed for those codes (they do not carry it)
    )


class VirtualSettings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[virtual]``: modules of virtual (demo, training) customers, simulated by the engine."""

    enabled: bool = True
    checkin_interval_s: Annotated[int, msgspec.Meta(ge=10, le=TEN_YEARS_S)] = (
        300  # each virtual module's check-in
    )
    poll_s: PositiveFloat = 1.0  # how often queued "send a signal" requests are looked for


class Settings(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the engine is configured with."""

    data_dir: str = "./var"  # embedded PostgreSQL lives in <data_dir>/postgres
    database: DatabaseSettings = DatabaseSettings()
    dc09: Dc09Settings = Dc09Settings()
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    api: ApiSectionSettings = ApiSectionSettings()
    logging: LoggingSettings = LoggingSettings()
    retention: RetentionSettings = RetentionSettings()
    supervision: SupervisionSettings = SupervisionSettings()
    crash_smash: CrashSmashSettings = CrashSmashSettings()
    virtual: VirtualSettings = VirtualSettings()

    @property
    def data_path(self) -> Path:
        """``data_dir`` as a path."""
        return Path(self.data_dir)


SECTIONS: dict[str, type[_Section]] = {
    name: type(getattr(Settings(), name))
    for name in Settings.__struct_fields__
    if isinstance(getattr(Settings(), name), _Section)
}


# userinfo "user:password@": the password runs to the LAST "@" (it may hold "@", "/", "?", …).
_URL_PASSWORD = re.compile(r"\A([^:/?#@]*:).*@", re.DOTALL)
_QUERY_PASSWORD = re.compile(r"((?:^|[?&\s])(?:ssl)?password=)[^&\s]*", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """The URL with every password replaced by ``***`` (for logs and errors): the userinfo's and
    the ``password`` / ``sslpassword`` query parameters."""
    if url is None:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = _URL_PASSWORD.sub(r"\1***@", rest, count=1)
    return _QUERY_PASSWORD.sub(r"\1***", scheme + sep + rest)


def env_name(path: str) -> str:
    """The environment variable for a dotted key: ``dc09.port`` → ``ALARMRELAY_DC09__PORT``."""
    return ENV_PREFIX + path.replace(".", "__").upper()


# What Kubernetes puts in every pod's environment for each Service of the namespace (service
# links): a Service named alarmrelay, the usual name, gives ALARMRELAY_SERVICE_HOST,
# ALARMRELAY_SERVICE_PORT[_NAME], ALARMRELAY_PORT and ALARMRELAY_PORT_<n>_<PROTO>[_…]. None of
# them is a setting (those are ALARMRELAY_KEY or ALARMRELAY_SECTION__KEY): they are skipped.
_SERVICE_LINK = re.compile(
    r"ALARMRELAY_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_[A-Z]+)?)?)"
)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(nested overrides, dotted key → variable name) from ``ALARMRELAY_*`` variables."""
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or _SERVICE_LINK.fullmatch(name):
            continue
        # An empty variable means "not set" for optional keys (ALARMRELAY_DATABASE_URL= → embedded).
        value: str | None = text if text != "" else None
        if name == ENV_DATABASE_URL:
            section, key = "database", "url"
        else:
            parts = name[len(ENV_PREFIX) :].lower().split("__")
            if len(parts) == 1:
                section, key = "", parts[0]
            elif len(parts) == 2:
                section, key = parts
            else:
                raise UserFacingError(
                    f"environment variable {name}: too many '__' (use SECTION__KEY)"
                )
            if not key or (len(parts) == 2 and not section):
                raise UserFacingError(
                    f"environment variable {name}: a section or key name is empty (use "
                    "ALARMRELAY_SECTION__KEY, or ALARMRELAY_KEY for a top-level key)"
                )
            if section and section not in SECTIONS:
                raise UserFacingError(
                    f"environment variable {name}: unknown section {section!r}{_suggest(section, SECTIONS)}"
                )
        if section:
            earlier = origin.get(f"{section}.{key}")
            if earlier is not None and out[section][key] != value:
                first, second = sorted((earlier, name))
                raise UserFacingError(
                    f"environment variables {first} and {second} both set {section}.{key}, "
                    "differently: unset one"
                )
            out.setdefault(section, {})[key] = value
            origin[f"{section}.{key}"] = name
        else:
            if key in SECTIONS:
                raise UserFacingError(
                    f"environment variable {name}: {key!r} is a section; set its keys as {name}__KEY"
                )
            out[key] = value
            origin[key] = name
    return out, origin


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _suggest(word: str, choices: Mapping[str, Any] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(parent: str) -> tuple[str, ...]:
    if not parent:
        return Settings.__struct_fields__
    section = SECTIONS.get(parent)
    return section.__struct_fields__ if section is not None else ()


def _type_at(path: str) -> Any:
    """The msgspec type info of the key at dotted ``path``; None for no such key."""
    info: Any = msgspec.inspect.type_info(Settings)
    for part in path.split("."):
        if not isinstance(info, msgspec.inspect.StructType):
            return None
        field = next((f for f in info.fields if f.name == part), None)
        if field is None:
            return None
        info = field.type
    return info


def _choices(path: str) -> tuple[Any, ...]:
    """Allowed values of a Literal-typed key, for the error message."""
    info = _type_at(path)
    return tuple(info.values) if isinstance(info, msgspec.inspect.LiteralType) else ()


def _is_list(path: str) -> bool:
    """Whether the key at ``path`` holds a list (its environment value is comma-separated)."""
    return isinstance(_type_at(path), msgspec.inspect.VarTupleType | msgspec.inspect.ListType)


def _is_optional(path: str) -> bool:
    """Whether the key at ``path`` may be unset (its type admits None)."""
    info = _type_at(path)
    return isinstance(info, msgspec.inspect.UnionType) and any(
        isinstance(t, msgspec.inspect.NoneType) for t in info.types
    )


def _empty_means_unset(raw: dict[str, Any]) -> None:
    """``url = ""`` in the file unsets an optional key, as an empty variable does (an empty
    database URL would otherwise reach the driver, which connects to its own defaults)."""
    for name, value in list(raw.items()):
        if isinstance(value, dict):
            for key, item in list(value.items()):
                if item == "" and _is_optional(f"{name}.{key}"):
                    value[key] = None
        elif value == "" and _is_optional(name):
            raw[name] = None


def _split_lists(env: dict[str, Any], origin: Mapping[str, str]) -> None:
    """Turn the values of list keys (``a,b``; empty: no items) into lists, in place."""
    for path in origin:
        if not _is_list(path):
            continue
        section, _, key = path.rpartition(".")
        holder = env[section] if section else env
        text = holder[key]
        holder[key] = [item.strip() for item in (text or "").split(",") if item.strip()]


_UNKNOWN = re.compile(r"Object contains unknown field `([^`]+)`(?: - at `\$\.?([^`]*)`)?$")
_LOCATED = re.compile(r"(.*) - at `\$\.?([^`]*)`$")


def validation_problem(error: msgspec.ValidationError) -> tuple[str, str]:
    """(dotted path, message) from a msgspec validation error, in plain words.

    ``Expected `int`, got `str` - at `$.dc09.port``` → ``("dc09.port", "expected int, got str")``;
    an unknown field → ``("dc09.prot", "unknown key")``. List indexes stay as ``[3]``.
    """
    message = str(error)
    unknown = _UNKNOWN.match(message)
    if unknown:
        field, where = unknown.group(1), unknown.group(2) or ""
        return (f"{where}.{field}" if where else field), "unknown key"
    located = _LOCATED.match(message)
    path, text = (located.group(2), located.group(1)) if located else ("", message)
    text = text.replace("`", "")
    text = text[:1].lower() + text[1:]
    return path, text


def _describe(error: msgspec.ValidationError, source: str, origin: Mapping[str, str]) -> str:
    path, text = validation_problem(error)
    where = origin.get(re.sub(r"(\[\d+\])+$", "", path), source)  # a list item: its key's
    if where != source:
        where = f"environment variable {where}"
    if text == "unknown key":
        parent, _, leaf = path.rpartition(".")
        return f"{where}: unknown key {path!r}{_suggest(leaf, _fields_at(parent))}"
    empty = re.fullmatch(r"expected (.+), got null", text)
    if empty and where != source:  # an empty variable: None, which only optional keys take
        text = (
            f"empty, and it cannot be unset (expected {empty.group(1)}): give a value, or "
            "remove the variable for the default"
        )
    for pattern, words in _PATTERN_WORDS.items():
        text = text.replace(f"expected str matching regex {pattern!r}", words)
    choices = _choices(path)
    if choices and text.startswith("invalid enum value"):
        text += " (choose one of " + ", ".join(repr(c) for c in choices) + ")"
    return f"{where}: {path}: {text}" if path else f"{where}: {text}"


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (optional), then the environment (``os.environ`` when None), into Settings.

    Raises UserFacingError with a message naming the file or variable and the key on any problem.
    """
    if environ is None:
        environ = os.environ
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise UserFacingError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            raw = msgspec.toml.decode(text.removeprefix(UTF8_BOM))
        except msgspec.DecodeError as exc:
            raise UserFacingError(f"{path}: invalid TOML: {exc}") from None
        except RecursionError:  # thousands of "["
            raise UserFacingError(f"{path}: invalid TOML: nested too deeply") from None
        _empty_means_unset(raw)
        try:
            # Validate the file alone first, strictly, so its mistakes are reported against it.
            msgspec.convert(raw, Settings)
        except msgspec.ValidationError as exc:
            raise UserFacingError(_describe(exc, source, {})) from None
    env, origin = _env_overrides(environ)
    _split_lists(env, origin)
    try:
        # Environment values are strings: strict=False lets "10009" become an int, "false" a bool.
        settings = msgspec.convert(_merge(raw, env), Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise UserFacingError(_describe(exc, source, origin)) from None
    _check_bounds(settings, source, origin)
    _check_pool(settings, source, origin)
    _check_database_url(settings, source, origin)
    _check_hosts(settings, source, origin)
    _check_mqtt_strings(settings, source, origin)
    return settings


def _url_problem(url: str) -> str | None:
    """What keeps ``url`` from being a PostgreSQL URL the driver can use; None when nothing."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed "[" of an IPv6 host, …: its message may hold the password
        return "is not a valid URL (check the host: an IPv6 address is written [::1])"
    if parts.scheme not in ("postgresql", "postgres"):
        return "must be a postgresql:// URL"
    if "," in parts.netloc:  # several hosts (h1:5432,h2:5433): the driver reads each one
        return None
    try:
        parts.port  # noqa: B018 - reading it is the check (99999999 or "abc" raise)
    except ValueError:  # it reached the driver, and failed as a bug, not a config error
        return "has a port that is not 0-65535"
    return None


def _check_database_url(settings: Settings, source: str, origin: Mapping[str, str]) -> None:
    url = settings.database.url
    problem = None if url is None else _url_problem(url)
    if problem is None:
        return
    where = origin.get("database.url")
    where = f"environment variable {where}" if where else source
    # The value is not repeated: a URL without its scheme still holds a password.
    raise UserFacingError(
        f"{where}: database.url {problem}, "
        "e.g. postgresql://alarmrelay@db.example:5432/alarmrelay (or unset: the embedded server)"
    )


# Host names the engine resolves or binds: socket calls encode them with the IDNA codec, which
# refuses an empty label or one beyond 63 characters ("a..b", a pasted 64-character word). Left to
# that point, the error came as a bug at start (DC-09, HTTP), killed the MQTT client silently (the
# engine ran without MQTT ingest, reporting nothing), or failed a welcome letter's send with a 500.
_HOSTS = ("dc09.host", "http.host", "mqtt.host", "api.smtp_host")


def _check_hosts(settings: Settings, source: str, origin: Mapping[str, str]) -> None:
    for path in _HOSTS:
        section, key = path.split(".")
        host = getattr(getattr(settings, section), key)
        if host is None:
            continue
        try:
            host.encode("idna")
        except UnicodeError:
            where = origin.get(path)
            where = f"environment variable {where}" if where else source
            shown = host if len(host) <= 80 else host[:79] + "…"
            raise UserFacingError(
                f"{where}: {path}: {shown!r} is not a host name or address (each label between "
                "dots is 1-63 characters)"
            ) from None


def _mqtt_string_problem(text: str) -> str | None:
    """Why ``text`` cannot go in an MQTT UTF-8 string (MQTT 5 §1.5.4); None when it can."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # os.environ holds a non-UTF-8 byte as a lone surrogate
        return "is not UTF-8 text"
    if "\x00" in text:
        return "contains U+0000, which MQTT does not allow"
    if size > 65_535:
        return f"makes an MQTT string of {size} bytes (at most 65535)"
    return None


def _check_mqtt_strings(settings: Settings, source: str, origin: Mapping[str, str]) -> None:
    """The MQTT strings built from the settings, as the CONNECT and SUBSCRIBE carry them. One the
    codec refused ended the MQTT client at start with nothing logged: no MQTT ingest at all."""
    mqtt = settings.mqtt
    last = f"-{mqtt.connections - 1}" if mqtt.connections > 1 else ""  # client_id-1, …
    share = f"$share/{mqtt.shared_group}/" if mqtt.shared_group else ""
    subscription = f"{share}{mqtt.topic_prefix}/modules/+/checkin"
    strings = {
        "mqtt.client_id": mqtt.client_id + last,
        "mqtt.username": mqtt.username,
        "mqtt.password": mqtt.password,
        "mqtt.shared_group": mqtt.shared_group,
        "mqtt.topic_prefix": subscription,  # with the group: the longest topic filter we send
    }
    for path, text in strings.items():
        problem = None if text is None else _mqtt_string_problem(text)
        if problem is not None:
            where = origin.get(path)
            where = f"environment variable {where}" if where else source
            raise UserFacingError(f"{where}: {path} {problem}")  # never the value: a password


# (lower, upper): keys that bound a range together; the lower may not exceed the upper.
_BOUNDS = (
    ("database.pool_min", "database.pool_max"),
    ("mqtt.reconnect_min_s", "mqtt.reconnect_max_s"),
)


def _check_pool(settings: Settings, source: str, origin: Mapping[str, str]) -> None:
    """A pool too small for what holds connections: the two LISTEN connections (accounts,
    receivers) keep theirs, each commit writer takes one, and delivery and the timers need one
    more. Below that the engine waited for a connection for ever, silently."""
    db = settings.database
    needed = db.commit_writers + 3
    if db.pool_max < needed:
        where = origin.get("database.pool_max") or origin.get("database.commit_writers")
        where = f"environment variable {where}" if where else source
        raise UserFacingError(
            f"{where}: database.pool_max ({db.pool_max}) must be at least database.commit_writers "
            f"+ 3 ({needed}): two connections stay open for LISTEN, each commit writer takes one, "
            "and delivery and the timers need one more"
        )


def _check_bounds(settings: Settings, source: str, origin: Mapping[str, str]) -> None:
    for low, high in _BOUNDS:
        section, low_key = low.split(".")
        _, high_key = high.split(".")
        values = getattr(settings, section)
        lower, upper = getattr(values, low_key), getattr(values, high_key)
        if lower > upper:
            where = origin.get(low) or origin.get(high)
            where = f"environment variable {where}" if where else source
            raise UserFacingError(f"{where}: {low} ({lower}) is larger than {high} ({upper})")
