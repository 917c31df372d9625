"""``/readyz`` follows the database itself, not only the last commit (real PostgreSQL behind a
TCP proxy that the test cuts)."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from prometheus_client import REGISTRY

from tests.engine.test_ingest_e2e import provision, running_engine, settings_for
from tests.support.tcp_proxy import proxied_database


async def _ready(client: httpx.AsyncClient, want: bool, timeout: float = 15.0) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await client.get("/readyz")
        body: dict[str, object] = response.json()
        if (response.status_code == 200) == want:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/readyz stayed {response.status_code}: {body}")
        await asyncio.sleep(0.2)


class TestReadiness:
    async def test_not_ready_while_the_database_is_cut_off(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """No signal arrives (the pipeline has not noticed anything), yet with the database cut
        off /readyz answers 503 naming the database; it is ready again once it is back."""
        await provision(db_pool)
        async with proxied_database(database_url) as (proxy, url):
            settings = settings_for(url)
            async with running_engine(settings) as engine:
                assert engine.http is not None
                base = f"http://127.0.0.1:{engine.http.port}"
                async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                    ready = await _ready(client, True)
                    assert ready["checks"] == {"dc09": True, "delivery": True, "database": True}
                    proxy.cut()
                    down = await _ready(client, False)
                    assert down["status"] == "not_ready"
                    assert down["checks"] == {"dc09": True, "delivery": True, "database": False}
                    proxy.restore()
                    await _ready(client, True)

    async def test_database_up_follows_the_database_without_signals(
        self, db_pool: asyncpg.Pool, database_url: str
    ) -> None:
        """No module sends anything (a quiet night, panels that test once a day): with the
        database cut off, alarmrelay_database_up (AlarmrelayDatabaseDown) goes to 0 anyway,
        not only once the first alarm fails its commit; 1 again once it is back."""
        await provision(db_pool)
        async with (
            proxied_database(database_url) as (proxy, url),
            running_engine(settings_for(url)),
        ):
            assert _database_up() == 1
            proxy.cut()
            await _until_database_up(0)
            proxy.restore()
            await _until_database_up(1)


def _database_up() -> float | None:
    return REGISTRY.get_sample_value("alarmrelay_database_up")


async def _until_database_up(value: float, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while _database_up() != value:
            await asyncio.sleep(0.1)
