"""``alarmrelay serve`` mounts the admin API on its HTTP port, beside /metrics and the probes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.engine_process import EngineProcess, write_config


def _admin_key(database_url: str) -> str:
    env = {**os.environ, "ALARMRELAY_DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "keys", "create", "--role", "admin", "--label", "ops"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0]


@pytest.fixture
def served(db_pool: asyncpg.Pool, database_url: str, tmp_path: Path) -> Iterator[EngineProcess]:
    config = write_config(
        tmp_path / "engine.toml",
        database_url=database_url,
        data_dir=tmp_path,
        extra='[mqtt]\nenabled = false\n[api]\nportal_url = "https://portal.example/p"\n',
    )
    engine = EngineProcess(config)
    engine.start()
    try:
        yield engine
    finally:
        engine.terminate()


@pytest.mark.slow
class TestServeMountsApi:
    def test_api_metrics_and_probes_share_the_port(
        self, served: EngineProcess, database_url: str
    ) -> None:
        """A key made with `keys create` works against the running engine; /metrics still answers."""
        key = _admin_key(database_url)
        base = f"http://127.0.0.1:{served.http_port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            me = client.get("/v1/me", headers={"Authorization": f"Bearer {key}"})
            assert me.status_code == 200, me.text
            assert me.json()["role"] == "admin"
            anonymous = client.get("/v1/me")
            assert anonymous.status_code == 401
            assert anonymous.headers["content-type"].startswith("application/problem+json")
            created = client.post("/v1/dealers", json={"name": "Acme"}, headers={"X-API-Key": key})
            assert created.status_code == 201, created.text
            listed = client.get("/v1/dealers", headers={"X-API-Key": key}).json()
            assert [d["name"] for d in listed["items"]] == ["Acme"]
            schema = client.get("/schema/openapi.json").json()
            assert "/v1/customers" in schema["paths"]
            assert "/metrics" not in schema["paths"]  # the probes stay out of the API document
            metrics = client.get("/metrics")
            assert metrics.status_code == 200 and "alarmrelay_" in metrics.text
            assert client.get("/readyz").json()["status"] == "ready"

    def test_api_can_be_switched_off(
        self, db_pool: asyncpg.Pool, database_url: str, tmp_path: Path
    ) -> None:
        """api.enabled = false: /v1 and /schema are not served, the probes and /metrics are."""
        config = write_config(
            tmp_path / "engine.toml",
            database_url=database_url,
            data_dir=tmp_path,
            extra="[mqtt]\nenabled = false\n[api]\nenabled = false\n",
        )
        engine = EngineProcess(config)
        engine.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{engine.http_port}", timeout=10) as c:
                assert c.get("/v1/me").status_code == 404
                assert c.get("/schema/openapi.json").status_code == 404
                assert c.get("/metrics").status_code == 200
                assert c.get("/healthz").json() == {"status": "ok"}
        finally:
            engine.terminate()
