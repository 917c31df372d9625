"""Fixtures for the admin API: the real app on uvicorn on a loopback port, keys, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from engine.api.app import ApiSettings, create_app
from engine.api.auth import create_key
from engine.http_server import HttpServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The handlers use litestar 2's inferred parameter style (pyproject allows litestar>=2.12,
    older than the 2.23 markers its deprecation warning asks for); that warning is about 3.0."""
    for item in items:
        if "tests/engine/api/" in str(item.path).replace("\\", "/"):
            item.add_marker(
                pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning")
            )


class Api:
    """A running API server and helpers to call it with a given key."""

    def __init__(self, base_url: str, pool: asyncpg.Pool) -> None:
        self.base_url = base_url
        self.pool = pool
        self.admin_key = ""
        self._clients: list[httpx.AsyncClient] = []

    def client(self, key: str | None) -> httpx.AsyncClient:
        """An httpx client sending ``key`` as a bearer token (None: no key)."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=10.0)
        self._clients.append(client)
        return client

    async def dealer(self, name: str, parent_id: int | None = None) -> int:
        """Create a dealer as admin; its id."""
        response = await self.client(self.admin_key).post(
            "/v1/dealers", json={"name": name, "parent_id": parent_id}
        )
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    async def key(self, role: str, dealer_id: int | None = None) -> str:
        """A fresh key with this role."""
        _, key = await create_key(self.pool, role=role, dealer_id=dealer_id)  # type: ignore[arg-type]
        return key

    async def close(self) -> None:
        """Close every client made."""
        for client in self._clients:
            await client.aclose()


@pytest.fixture
async def api(db_pool: asyncpg.Pool) -> AsyncIterator[Api]:
    """The admin API served by uvicorn on 127.0.0.1 (port 0), with an admin key."""
    app = create_app(pool=db_pool, settings=ApiSettings(portal_url="https://portal.example/p"))
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    harness = Api(f"http://127.0.0.1:{server.port}", db_pool)
    harness.admin_key = await harness.key("admin")
    try:
        yield harness
    finally:
        await harness.close()
        await server.stop()


@pytest.fixture
def admin(api: Api) -> httpx.AsyncClient:
    """A client with the admin key."""
    return api.client(api.admin_key)


def problem_rules(body: dict[str, Any]) -> set[tuple[str, str]]:
    """(field, rule) pairs of a problem document."""
    return {(e["field"], e["rule"]) for e in body.get("errors", [])}
