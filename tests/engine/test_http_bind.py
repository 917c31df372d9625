"""The HTTP port binds the address configured in ``http.host``, IPv6 ones included."""

from __future__ import annotations

import httpx
import pytest

from engine.errors import UserFacingError
from engine.http_server import HttpServer, build_app


async def _ready() -> dict[str, bool]:
    return {"database": True}


class TestHttpBind:
    @pytest.mark.parametrize("host", ["::1", "::"])
    async def test_an_ipv6_host_serves(self, host: str) -> None:
        """http.host = "::1" (or "::", every IPv6 address) serves /healthz over IPv6; the engine
        refused to start with "Address family for hostname not supported"."""
        server = HttpServer(build_app(_ready), host=host, port=0)
        await server.start()
        try:
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://[::1]:{server.port}/healthz")
            assert answer.status_code == 200
            assert answer.json() == {"status": "ok"}
        finally:
            await server.stop()

    async def test_the_ipv6_wildcard_serves_ipv4_too(self) -> None:
        """http.host = "::" is every address, IPv4 included, as dc09.host is: before, only IPv6
        clients reached /metrics and the admin API."""
        server = HttpServer(build_app(_ready), host="::", port=0)
        await server.start()
        try:
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{server.port}/healthz")
            assert answer.status_code == 200
        finally:
            await server.stop()

    async def test_a_host_that_does_not_resolve_is_named(self) -> None:
        server = HttpServer(build_app(_ready), host="no-such-host.invalid", port=0)
        with pytest.raises(UserFacingError) as info:
            await server.start()
        assert str(info.value).startswith("cannot listen for HTTP on no-such-host.invalid:0:")
