"""compose.yaml: the try-out stack's services can start with what the stack gives them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Mosquitto options that name a file the broker must open at start.
_FILE_OPTIONS = ("password_file", "acl_file", "cafile", "certfile", "keyfile", "include_dir")


def _service(name: str) -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service: dict[str, Any] = compose["services"][name]
    return service


def test_the_broker_opens_only_files_the_stack_mounts() -> None:
    """The broker's config named a password file and an ACL file the stack never mounted:
    Mosquitto exited at start ("Unable to open pwfile"), and the engine never became ready."""
    mounts = {
        target: source
        for source, target, *_ in (volume.split(":") for volume in _service("mosquitto")["volumes"])
    }
    conf = (ROOT / mounts["/mosquitto/config/mosquitto.conf"]).read_text()
    options = [line.split(None, 1) for line in conf.splitlines() if line.strip()]
    needed = [value for key, value in options if key in _FILE_OPTIONS]
    assert [path for path in needed if path not in mounts] == []
    # ... and the engine can log in: anonymously, or with the credentials it is given.
    engine = _service("engine")["environment"]
    assert ["allow_anonymous", "true"] in options or "ALARMRELAY_MQTT__PASSWORD" in engine


def test_the_anonymous_broker_is_published_on_this_host_only() -> None:
    """The try-out broker takes anonymous clients: published on every interface, anyone on the
    network could publish alarms for any module serial."""
    published = _service("mosquitto")["ports"]
    assert published and all(port.startswith("127.0.0.1:") for port in published)
