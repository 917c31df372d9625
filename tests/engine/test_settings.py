"""engine/settings.py: TOML file + ALARMRELAY_* environment into one typed Settings object."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.api.app_settings import api_settings
from engine.errors import UserFacingError
from engine.settings import SECTIONS, Settings, env_name, load_settings, redact_url

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "alarmrelay.example.toml"
REFERENCE = ROOT / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def all_keys() -> list[str]:
    """Every dotted key of Settings."""
    keys: list[str] = []
    for name in Settings.__struct_fields__:
        section = SECTIONS.get(name)
        if section is None:
            keys.append(name)
        else:
            keys.extend(f"{name}.{field}" for field in section.__struct_fields__)
    return keys


def error_of(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(UserFacingError) as info:
        load_settings(path, environ or {})
    return str(info.value)


class TestDefaults:
    def test_no_file_no_environment_gives_embedded_loopback_defaults(self) -> None:
        """Without a file or variables: embedded database, loopback listeners, documented ports."""
        settings = load_settings(None, {})
        assert settings.database.url is None
        assert settings.data_dir == "./var"
        assert (settings.dc09.host, settings.dc09.port) == ("127.0.0.1", 10009)
        assert (settings.mqtt.host, settings.mqtt.port) == ("127.0.0.1", 1883)
        assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
        assert settings.dc09.unknown_account == "duh"

    def test_settings_are_frozen(self) -> None:
        """A loaded Settings cannot be changed after the fact."""
        settings = load_settings(None, {})
        with pytest.raises(AttributeError):
            settings.data_dir = "/elsewhere"  # type: ignore[misc]


class TestFile:
    def test_values_from_the_file_are_used(self, tmp_path: Path) -> None:
        """Keys in the TOML file override the defaults, section by section."""
        path = write(
            tmp_path,
            'data_dir = "/srv/ar"\n[dc09]\nport = 11000\nunknown_account = "silent"\n'
            '[database]\nurl = "postgresql://u@db:5432/ar"\n',
        )
        settings = load_settings(path, {})
        assert settings.data_dir == "/srv/ar"
        assert settings.dc09.port == 11000
        assert settings.dc09.unknown_account == "silent"
        assert settings.dc09.timestamp_past_s == 40
        assert settings.database.url == "postgresql://u@db:5432/ar"

    def test_a_byte_order_mark_is_not_an_error(self, tmp_path: Path) -> None:
        """A file saved by a Windows editor starts with a UTF-8 byte order mark ("Invalid
        statement (at line 1, column 1)" before, on a line that looks right)."""
        path = write(tmp_path, "\ufeff[dc09]\nport = 11000\n")
        assert load_settings(path, {}).dc09.port == 11000

    def test_unknown_key_names_file_key_and_suggestion(self, tmp_path: Path) -> None:
        """A misspelt key is refused with the file, the dotted key and the closest real key."""
        path = write(tmp_path, "[dc09]\nprot = 1\n")
        assert error_of(path) == f"{path}: unknown key 'dc09.prot' (did you mean 'port'?)"

    def test_unknown_section_is_refused(self, tmp_path: Path) -> None:
        """A table that is not a section is an unknown top-level key."""
        path = write(tmp_path, "[dc9]\nport = 1\n")
        assert error_of(path) == f"{path}: unknown key 'dc9' (did you mean 'dc09'?)"

    def test_wrong_type_names_key_and_types(self, tmp_path: Path) -> None:
        """A string where an int belongs is refused with the key and both types."""
        path = write(tmp_path, '[dc09]\nport = "10009"\n')
        assert error_of(path) == f"{path}: dc09.port: expected int, got str"

    def test_out_of_range_port_is_refused(self, tmp_path: Path) -> None:
        """Ports above 65535 are refused with the bound."""
        path = write(tmp_path, "[http]\nport = 70000\n")
        assert error_of(path) == f"{path}: http.port: expected int <= 65535"

    def test_bad_choice_lists_the_choices(self, tmp_path: Path) -> None:
        """A value outside a fixed set of choices names the allowed ones."""
        path = write(tmp_path, '[dc09]\nunknown_account = "nak"\n')
        message = error_of(path)
        assert message.startswith(f"{path}: dc09.unknown_account: invalid enum value 'nak'")
        assert "'duh'" in message
        assert "'silent'" in message

    def test_broken_toml_reports_the_line(self, tmp_path: Path) -> None:
        """A TOML syntax error is reported with the file and the line."""
        path = write(tmp_path, 'data_dir = "./var"\n[dc09\nport = 1\n')
        message = error_of(path)
        assert message.startswith(f"{path}: invalid TOML:")
        assert "line 2" in message

    def test_toml_nested_too_deeply(self, tmp_path: Path) -> None:
        """A value of 100,000 "[" is a clear error, not a RecursionError reported as a bug."""
        path = write(tmp_path, "data_dir = " + "[" * 100_000 + "\n")
        assert error_of(path) == f"{path}: invalid TOML: nested too deeply"

    def test_missing_file_is_a_clear_error(self, tmp_path: Path) -> None:
        """A config path that does not exist is named in the error."""
        path = tmp_path / "absent.toml"
        assert error_of(path).startswith(f"cannot read config file {path}")


class TestEnvironment:
    def test_nested_variable_overrides_file(self, tmp_path: Path) -> None:
        """ALARMRELAY_SECTION__KEY wins over the file and is converted to the key's type."""
        path = write(tmp_path, "[dc09]\nport = 11000\n")
        settings = load_settings(path, {"ALARMRELAY_DC09__PORT": "12000"})
        assert settings.dc09.port == 12000

    def test_database_url_shortcut(self) -> None:
        """ALARMRELAY_DATABASE_URL sets database.url."""
        settings = load_settings(None, {"ALARMRELAY_DATABASE_URL": "postgresql://u@h/db"})
        assert settings.database.url == "postgresql://u@h/db"

    def test_empty_database_url_means_embedded(self) -> None:
        """An empty ALARMRELAY_DATABASE_URL leaves the embedded default."""
        assert load_settings(None, {"ALARMRELAY_DATABASE_URL": ""}).database.url is None

    def test_database_url_without_its_scheme_is_refused_without_echoing_it(self) -> None:
        """A URL that is no postgresql:// URL is named by its variable; its password is not shown."""
        for url in ("ar:s3cr3t@127.0.0.1/ar", "mysql://ar:s3cr3t@db/ar", "not-a-url"):
            message = error_of(None, {"ALARMRELAY_DATABASE_URL": url})
            assert message.startswith("environment variable ALARMRELAY_DATABASE_URL: database.url")
            assert "postgresql://" in message
            assert url not in message and "s3cr3t" not in message
        assert load_settings(None, {"ALARMRELAY_DATABASE_URL": "postgres://u@h/db"}).database.url

    def test_database_url_that_cannot_be_parsed_is_a_config_error(self, tmp_path: Path) -> None:
        """An unclosed IPv6 bracket (urlsplit raises) is named by file or variable, not a bug;
        the value (and its password) is not repeated."""
        url = "postgresql://u:pw@[::1/db"
        path = write(tmp_path, f'[database]\nurl = "{url}"\n')
        message = error_of(path)
        assert message.startswith(f"{path}: database.url is not a valid URL"), message
        message = error_of(None, {"ALARMRELAY_DATABASE_URL": url})
        assert message.startswith("environment variable ALARMRELAY_DATABASE_URL: database.url")
        assert "pw" not in message and url not in message

    def test_database_url_with_a_bad_port_is_a_config_error(self, tmp_path: Path) -> None:
        """A port beyond 65535 or not a number is refused at load, naming the file or variable
        (it reached the driver and then failed as "unexpected ValueError … a bug", exit 1)."""
        for port in ("99999999", "65536", "abc"):
            url = f"postgresql://u:pw@127.0.0.1:{port}/db"
            path = write(tmp_path, f'[database]\nurl = "{url}"\n')
            message = error_of(path)
            assert message.startswith(f"{path}: database.url has a port that is not 0-65535"), (
                message
            )
            message = error_of(None, {"ALARMRELAY_DATABASE_URL": url})
            assert message.startswith("environment variable ALARMRELAY_DATABASE_URL: database.url")
            assert "pw" not in message
        several = "postgresql://u@h1:5432,h2:5433/db"  # asyncpg's several hosts: not refused
        assert load_settings(None, {"ALARMRELAY_DATABASE_URL": several}).database.url == several

    def test_host_no_resolver_takes_is_a_config_error(self, tmp_path: Path) -> None:
        """A host with an empty label or one beyond 63 characters is refused at load, naming the
        file or variable and the key (serve failed with "unexpected UnicodeError … a bug", and
        for mqtt.host ran on with its MQTT client dead and nothing logged)."""
        for bad in ("a..b", "a" * 64, "x." + "b" * 70 + ".example"):
            for path_key in ("dc09.host", "http.host", "mqtt.host", "api.smtp_host"):
                section, key = path_key.split(".")
                path = write(tmp_path, f'[{section}]\n{key} = "{bad}"\n')
                message = error_of(path)
                assert message.startswith(f"{path}: {path_key}: "), message
                assert "is not a host name or address" in message
                message = error_of(None, {env_name(path_key): bad})
                assert message.startswith(f"environment variable {env_name(path_key)}: {path_key}")
        for good in (
            "0.0.0.0",
            "::",
            "fe80::1%eth0",
            "broker.example.",
            "a" * 63,
            "bücher.example",
        ):
            assert load_settings(None, {"ALARMRELAY_MQTT__HOST": good}).mqtt.host == good

    def test_mqtt_strings_the_codec_refuses_are_a_config_error(self, tmp_path: Path) -> None:
        """An MQTT client id, user, password, prefix or group MQTT cannot carry (U+0000, over
        65,535 bytes, a non-UTF-8 byte of a variable) is refused at load, naming the key and
        never the value (the MQTT client died at start with nothing logged)."""
        path = write(tmp_path, '[mqtt]\nclient_id = "a\\u0000b"\n')
        assert (
            error_of(path) == f"{path}: mqtt.client_id contains U+0000, which MQTT does not allow"
        )
        cases = {
            "ALARMRELAY_MQTT__CLIENT_ID": "x" * 70_000,
            "ALARMRELAY_MQTT__USERNAME": "user\udcff",  # the byte 0xFF, as os.environ holds it
            "ALARMRELAY_MQTT__PASSWORD": "s3cr3t\x00",
            "ALARMRELAY_MQTT__TOPIC_PREFIX": "p" * 65_530,
            "ALARMRELAY_MQTT__SHARED_GROUP": "g\udcff",
        }
        for name, value in cases.items():
            message = error_of(None, {name: value})
            key = name.removeprefix("ALARMRELAY_").replace("__", ".").lower()
            assert message.startswith(f"environment variable {name}: {key} "), message
            assert "s3cr3t" not in message and "xxxx" not in message
        several = {"ALARMRELAY_MQTT__CLIENT_ID": "c" * 65_534, "ALARMRELAY_MQTT__CONNECTIONS": "2"}
        assert "mqtt.client_id" in error_of(None, several)  # its second session: c…c-1

    def test_both_database_url_variables_must_agree(self) -> None:
        """ALARMRELAY_DATABASE_URL and ALARMRELAY_DATABASE__URL name one key: differing, refused."""
        one, other = "postgresql://u@h:5432/db", "postgresql://u@h:5433/db"
        message = error_of(
            None, {"ALARMRELAY_DATABASE_URL": one, "ALARMRELAY_DATABASE__URL": other}
        )
        assert message == (
            "environment variables ALARMRELAY_DATABASE_URL and ALARMRELAY_DATABASE__URL both set "
            "database.url, differently: unset one"
        )
        same = {"ALARMRELAY_DATABASE_URL": one, "ALARMRELAY_DATABASE__URL": one}
        assert load_settings(None, same).database.url == one

    def test_top_level_and_boolean_variables(self) -> None:
        """Top-level keys take ALARMRELAY_KEY; booleans accept true/false."""
        settings = load_settings(
            None, {"ALARMRELAY_DATA_DIR": "/data", "ALARMRELAY_MQTT__ENABLED": "false"}
        )
        assert settings.data_dir == "/data"
        assert settings.mqtt.enabled is False

    def test_other_variables_are_ignored(self) -> None:
        """Variables without the ALARMRELAY_ prefix play no part."""
        assert load_settings(None, {"DC09__PORT": "1", "PATH": "/bin"}) == load_settings(None, {})

    def test_bad_value_names_the_variable(self) -> None:
        """A value of the wrong type is reported against the variable that set it."""
        message = error_of(None, {"ALARMRELAY_DC09__PORT": "ten"})
        assert (
            message
            == "environment variable ALARMRELAY_DC09__PORT: dc09.port: expected int, got str"
        )

    def test_an_empty_variable_for_a_key_that_cannot_be_unset(self) -> None:
        """An empty value unsets a key that may be unset; for another key it is refused, saying
        so (it said "expected int, got null", of a variable that held no null)."""
        message = error_of(None, {"ALARMRELAY_DC09__PORT": ""})
        assert message == (
            "environment variable ALARMRELAY_DC09__PORT: dc09.port: empty, and it cannot be "
            "unset (expected int): give a value, or remove the variable for the default"
        )

    def test_unknown_key_names_the_variable(self) -> None:
        """A misspelt variable is refused with a suggestion."""
        message = error_of(None, {"ALARMRELAY_DC09__PROT": "1"})
        assert message == (
            "environment variable ALARMRELAY_DC09__PROT: unknown key 'dc09.prot' (did you mean 'port'?)"
        )

    @pytest.mark.parametrize(
        "variable",
        [
            "ALARMRELAY_SERVICE_HOST",
            "ALARMRELAY_SERVICE_PORT",
            "ALARMRELAY_PORT",
            "ALARMRELAY_PORT_8080_TCP_ADDR",
        ],
    )
    def test_a_kubernetes_service_link_variable_is_not_a_setting(self, variable: str) -> None:
        """Kubernetes gives every pod variables for each Service of its namespace; a Service
        named alarmrelay (the usual name) gives ALARMRELAY_SERVICE_HOST, ALARMRELAY_PORT, ...
        The engine refused to start on them as unknown keys; they are skipped."""
        settings = load_settings(
            None, {variable: "tcp://10.0.0.1:8080", "ALARMRELAY_DC09__PORT": "9"}
        )
        assert settings.dc09.port == 9
        assert error_of(None, {"ALARMRELAY_PORTS": "1"}).startswith(
            "environment variable ALARMRELAY_PORTS: unknown key 'ports'"
        )

    @pytest.mark.parametrize("variable", ["ALARMRELAY_", "ALARMRELAY_DC09__", "ALARMRELAY___PORT"])
    def test_a_variable_without_a_key_or_section_name_is_named(self, variable: str) -> None:
        """A templated name that came out empty: the error did not name the variable
        ("defaults: dc09: object contains unknown field ")."""
        assert error_of(None, {variable: "1"}) == (
            f"environment variable {variable}: a section or key name is empty "
            "(use ALARMRELAY_SECTION__KEY, or ALARMRELAY_KEY for a top-level key)"
        )

    def test_unknown_section_names_the_variable(self) -> None:
        """A variable for a section that does not exist is refused."""
        message = error_of(None, {"ALARMRELAY_MQQT__HOST": "h"})
        assert message == (
            "environment variable ALARMRELAY_MQQT__HOST: unknown section 'mqqt' (did you mean 'mqtt'?)"
        )

    def test_empty_string_in_the_file_unsets_an_optional_key(self, tmp_path: Path) -> None:
        """url = "" means the embedded database (as ALARMRELAY_DATABASE_URL= does), never an
        empty URL handed to the driver, which would connect to its own default database."""
        path = write(tmp_path, '[database]\nurl = ""\n[api]\nsmtp_host = ""\n')
        settings = load_settings(path, {})
        assert settings.database.url is None
        assert settings.api.smtp_host is None

    def test_a_range_whose_lower_bound_exceeds_its_upper_is_refused(self, tmp_path: Path) -> None:
        """pool_min above pool_max (the pool silently used pool_min), reconnect_min_s above
        reconnect_max_s: one line naming both keys, and where the value came from."""
        message = error_of(
            None, {"ALARMRELAY_DATABASE__POOL_MIN": "5", "ALARMRELAY_DATABASE__POOL_MAX": "2"}
        )
        assert message == (
            "environment variable ALARMRELAY_DATABASE__POOL_MIN: database.pool_min (5) is larger "
            "than database.pool_max (2)"
        )
        path = write(tmp_path, "[mqtt]\nreconnect_min_s = 10\nreconnect_max_s = 1\n")
        assert error_of(path) == (
            f"{path}: mqtt.reconnect_min_s (10.0) is larger than mqtt.reconnect_max_s (1.0)"
        )

    def test_a_timestamp_window_beyond_ten_years_is_refused(self) -> None:
        """dc09.timestamp_past_s of 10^11 s put the window's edge before year 1: every checked
        frame raised OverflowError. Refused at load, naming the variable."""
        message = error_of(None, {"ALARMRELAY_DC09__TIMESTAMP_PAST_S": "99999999999"})
        assert "ALARMRELAY_DC09__TIMESTAMP_PAST_S" in message
        assert "315576000" in message
        assert load_settings(None, {"ALARMRELAY_DC09__TIMESTAMP_PAST_S": "315576000"})

    @pytest.mark.parametrize(
        ("variable", "limit"),
        [
            ("ALARMRELAY_DC09__DUPLICATE_WINDOW_S", 315_576_000),
            ("ALARMRELAY_SUPERVISION__GRACE_S", 315_576_000),
            ("ALARMRELAY_CRASH_SMASH__DIALER_DELAY_S", 315_576_000),
            ("ALARMRELAY_CRASH_SMASH__GRACE_S", 315_576_000),
            ("ALARMRELAY_CRASH_SMASH__ENTRY_DELAY_S", 315_576_000),
            ("ALARMRELAY_VIRTUAL__CHECKIN_INTERVAL_S", 315_576_000),
            ("ALARMRELAY_RETENTION__SIGNALS_DAYS", 36_525),
            ("ALARMRELAY_RETENTION__PARTITIONS_AHEAD_DAYS", 366),
        ],
    )
    def test_durations_added_to_dates_are_bounded(self, variable: str, limit: int) -> None:
        """A duration added to a signal's time (supervision.grace_s of 10^12 s: every deadline
        past year 9999, every batch failed and its frames were answered DUH) is refused at load,
        naming the variable and its limit; the limit itself is taken."""
        message = error_of(None, {variable: "99999999999"})
        assert variable in message
        assert str(limit) in message
        assert load_settings(None, {variable: str(limit)})

    @pytest.mark.parametrize(
        ("variable", "limit"),
        [
            ("ALARMRELAY_RETENTION__MAINTENANCE_INTERVAL_S", "31557600"),
            ("ALARMRELAY_SUPERVISION__MAX_SLEEP_S", "31557600"),
            ("ALARMRELAY_MQTT__RECONNECT_MAX_S", "31557600"),
            ("ALARMRELAY_MQTT__COMMAND_RETRY_S", "31557600"),
            ("ALARMRELAY_VIRTUAL__POLL_S", "31557600"),
            ("ALARMRELAY_DATABASE__COMMIT_WINDOW_MS", "1000"),
        ],
    )
    def test_an_endless_interval_is_refused(self, variable: str, limit: str) -> None:
        """ "inf" (which TOML and the environment read as a number) made a sleep last for ever:
        maintenance never ran again, a timer slept through new deadlines, no commit window
        closed, MQTT reconnect delays grew without limit. Refused at load, naming the variable and its
        limit."""
        message = error_of(None, {variable: "inf"})
        assert variable in message
        assert limit in message
        assert load_settings(None, {variable: limit})

    def test_a_pool_too_small_for_the_writers_is_refused(self, tmp_path: Path) -> None:
        """pool_max below commit_writers + 3 (the two LISTEN connections, the writers, one for
        delivery and timers): the engine used to wait for a connection for ever, silently."""
        message = error_of(
            None,
            {"ALARMRELAY_DATABASE__POOL_MAX": "4", "ALARMRELAY_DATABASE__POOL_MIN": "1"},
        )
        assert message.startswith(
            "environment variable ALARMRELAY_DATABASE__POOL_MAX: database.pool_max (4) must be "
            "at least database.commit_writers + 3 (5)"
        )
        path = write(tmp_path, "[database]\npool_min = 1\npool_max = 4\ncommit_writers = 1\n")
        assert load_settings(path, {}).database.pool_max == 4

    def test_list_variable_is_comma_separated(self, tmp_path: Path) -> None:
        """A list key from the environment: items split at commas, spaces trimmed; it replaces the file's list."""
        path = write(tmp_path, '[crash_smash]\nentry_codes = ["sia:BA"]\n')
        environ = {"ALARMRELAY_CRASH_SMASH__ENTRY_CODES": "cid:134, sia:JA"}
        assert load_settings(path, environ).crash_smash.entry_codes == ("cid:134", "sia:JA")
        assert load_settings(path, {}).crash_smash.entry_codes == ("sia:BA",)

    def test_empty_list_variable_means_no_items(self, tmp_path: Path) -> None:
        """An empty list variable clears the file's list."""
        path = write(tmp_path, '[crash_smash]\nentry_codes = ["sia:BA"]\n')
        environ = {"ALARMRELAY_CRASH_SMASH__ENTRY_CODES": ""}
        assert load_settings(path, environ).crash_smash.entry_codes == ()

    def test_bad_list_item_names_the_variable(self) -> None:
        """A bad item of a list variable is reported against the variable, with its index."""
        message = error_of(None, {"ALARMRELAY_CRASH_SMASH__ENTRY_CODES": "cid:134,cid:13"})
        assert message == (
            "environment variable ALARMRELAY_CRASH_SMASH__ENTRY_CODES: crash_smash.entry_codes[1]: "
            "expected 'cid:' and a 3-digit Contact ID code (cid:134), or 'sia:' and a 2-letter "
            "SIA code (sia:BA)"
        )

    def test_bad_list_item_in_the_file_is_described_in_words(self, tmp_path: Path) -> None:
        path = write(tmp_path, '[crash_smash]\nentry_codes = ["BA"]\n')
        assert "regex" not in error_of(path)
        assert error_of(path).endswith(
            "crash_smash.entry_codes[0]: expected 'cid:' and a 3-digit "
            "Contact ID code (cid:134), or 'sia:' and a 2-letter SIA code (sia:BA)"
        )

    def test_file_errors_still_name_the_file(self, tmp_path: Path) -> None:
        """With variables set, a mistake in the file is still reported against the file."""
        path = write(tmp_path, "[dc09]\nprot = 1\n")
        assert error_of(path, {"ALARMRELAY_DC09__PORT": "1"}).startswith(f"{path}: unknown key")

    def test_env_name_maps_dotted_keys(self) -> None:
        """The documented mapping: section.key → ALARMRELAY_SECTION__KEY."""
        assert env_name("dc09.port") == "ALARMRELAY_DC09__PORT"
        assert env_name("data_dir") == "ALARMRELAY_DATA_DIR"


class TestMqttTopics:
    def test_a_share_group_with_a_slash_or_a_wildcard_is_refused(self) -> None:
        """'$share/alarm/relay/alarmrelay/v1/modules/+/events' is group 'alarm' on the filter
        'relay/alarmrelay/v1/…' for Mosquitto: the engine started, showed as connected
        (alarmrelay_mqtt_connected 1, ready) and received no module's message. A '+' or '#'
        made the broker drop each connection at the SUBSCRIBE. Refused at start-up."""
        for group in ("alarm/relay", "alarm+relay", "alarm#"):
            message = error_of(None, {"ALARMRELAY_MQTT__SHARED_GROUP": group})
            assert message == (
                "environment variable ALARMRELAY_MQTT__SHARED_GROUP: mqtt.shared_group: expected "
                "a share group name without '/', '+' or '#' (it is the <group> of $share/<group>/…)"
            )
        assert load_settings(None, {"ALARMRELAY_MQTT__SHARED_GROUP": "alarmrelay-eu"})
        assert load_settings(None, {"ALARMRELAY_MQTT__SHARED_GROUP": ""}).mqtt.shared_group is None

    def test_a_topic_prefix_with_a_wildcard_is_refused(self) -> None:
        """With '+' the engine subscribed to every prefix but took each message as under no
        topic of its own (PUBACKed, no ack, a mqtt_bad_topic warning); with '#' the broker
        dropped each connection at the SUBSCRIBE. The prefix also names the topics acks and
        commands are published on, where no wildcard is allowed. Refused at start-up."""
        for prefix in ("+/v1", "alarmrelay/#"):
            message = error_of(None, {"ALARMRELAY_MQTT__TOPIC_PREFIX": prefix})
            assert "mqtt.topic_prefix: expected a topic prefix without the wildcards" in message
        settings = load_settings(None, {"ALARMRELAY_MQTT__TOPIC_PREFIX": "acme/alarms/v1"})
        assert settings.mqtt.topic_prefix == "acme/alarms/v1"


class TestSecrets:
    def test_password_is_not_in_repr(self) -> None:
        """The MQTT password never shows in repr (logs, tracebacks)."""
        settings = load_settings(None, {"ALARMRELAY_MQTT__PASSWORD": "hunter2"})
        assert settings.mqtt.password == "hunter2"
        assert "hunter2" not in repr(settings)
        assert "hunter2" not in repr(settings.mqtt)
        assert "<hidden>" in repr(settings.mqtt)

    def test_database_url_password_is_not_in_repr(self) -> None:
        """A password inside database.url is masked in repr."""
        settings = load_settings(
            None, {"ALARMRELAY_DATABASE_URL": "postgresql://ar:s3cr3t@db:5432/ar"}
        )
        assert "s3cr3t" not in repr(settings)
        assert "postgresql://ar:***@db:5432/ar" in repr(settings)

    def test_redact_url_leaves_urls_without_password(self) -> None:
        """URLs without a password come back unchanged."""
        assert redact_url("postgresql://ar@db/ar") == "postgresql://ar@db/ar"
        assert redact_url(None) is None

    def test_redact_url_masks_a_password_without_a_scheme(self) -> None:
        assert redact_url("ar:s3cr3t@db/ar") == "ar:***@db/ar"

    def test_redact_url_masks_every_password(self) -> None:
        """A password in the query string (libpq's ``password``/``sslpassword``) is masked too,
        and the userinfo is split at its last "@" (a password may hold "@" or "/")."""
        assert redact_url("postgresql:///nodb?password=hunter2&port=5999") == (
            "postgresql:///nodb?password=***&port=5999"
        )
        assert redact_url("postgresql://h/db?port=1&sslpassword=k3y&Password=p;w") == (
            "postgresql://h/db?port=1&sslpassword=***&Password=***"
        )
        assert redact_url("postgresql://u:p@ss@host/db") == "postgresql://u:***@host/db"
        assert redact_url("postgresql://u:p/s?s@host/db") == "postgresql://u:***@host/db"
        assert redact_url("postgresql://u@host:5432/db?application_name=a@b") == (
            "postgresql://u@host:5432/db?application_name=a@b"
        )


class TestApiSection:
    def test_smtp_keys_become_the_letter_sender(self) -> None:
        """[api] smtp_* from the environment reach the welcome-letter sender; the password is hidden."""
        settings = load_settings(
            None,
            {
                "ALARMRELAY_API__SMTP_HOST": "mail.example",
                "ALARMRELAY_API__SMTP_PORT": "2525",
                "ALARMRELAY_API__SMTP_PASSWORD": "letmein",
                "ALARMRELAY_API__SMTP_USERNAME": "relay",
                "ALARMRELAY_API__SETUP_LINK_TTL_H": "24",
            },
        )
        assert "letmein" not in repr(settings)
        converted = api_settings(settings)
        assert converted.setup_link_ttl_h == 24
        assert converted.smtp is not None
        assert (converted.smtp.host, converted.smtp.port) == ("mail.example", 2525)
        assert (converted.smtp.username, converted.smtp.password) == ("relay", "letmein")

    def test_without_smtp_host_letters_are_not_emailed(self) -> None:
        """No smtp_host: the API renders letters but has no sender."""
        assert api_settings(load_settings(None, {})).smtp is None


class TestExampleAndReference:
    def test_example_file_loads_to_the_defaults(self) -> None:
        """config/alarmrelay.example.toml is valid and states exactly the default values."""
        assert load_settings(EXAMPLE, {}) == Settings()

    def test_example_file_mentions_every_key(self) -> None:
        """Every setting appears in the example file (set, or commented out when optional)."""
        text = EXAMPLE.read_text(encoding="utf-8")
        sections = dict.fromkeys(SECTIONS, "")
        current = ""
        for line in text.splitlines():
            header = re.match(r"\[(\w+)\]", line)
            if header:
                current = header.group(1)
            elif current:
                sections[current] += line + "\n"
        top = text.split("[", 1)[0]
        for key in all_keys():
            section, _, leaf = key.rpartition(".")
            body = sections[section] if section else top
            assert re.search(rf"^#? ?{leaf} = ", body, re.MULTILINE), key

    def test_reference_documents_every_key_and_variable(self) -> None:
        """docs/configuration.md names every key and its environment variable."""
        text = REFERENCE.read_text(encoding="utf-8")
        for key in all_keys():
            assert f"`{key}`" in text, key
            assert env_name(key) in text, key

    def test_reference_rows_match_the_settings(self) -> None:
        """Each key row of docs/configuration.md (key | type | default | environment | meaning)
        names a real key, once, with its default and its environment variable."""
        rows = re.findall(
            r"^\| `([a-z0-9_.]+)` \| [^|]+ \| ([^|]+) \| ([^|]+) \|",
            REFERENCE.read_text(encoding="utf-8"),
            re.MULTILINE,
        )
        assert sorted(key for key, _, _ in rows) == sorted(all_keys())
        for key, default, environment in rows:
            value: object = Settings()
            for part in key.split("."):
                value = getattr(value, part)
            if isinstance(value, tuple):
                value = list(value)
            text = default.strip()
            documented = None if text == "unset" else json.loads(text.strip("`"))
            assert documented == value, (key, text, value)
            assert env_name(key) in environment, (key, environment)
