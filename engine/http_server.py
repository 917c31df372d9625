"""The engine's HTTP port: ``/metrics``, ``/healthz``, ``/readyz`` and (when present) the admin API.

One litestar application served by uvicorn inside the engine's event loop. uvicorn's own signal
handling is disabled: the engine owns SIGINT/SIGTERM and shuts uvicorn down in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

import uvicorn
from litestar import Litestar, MediaType, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from engine.errors import UserFacingError
from engine.listen_sockets import is_ipv6_wildcard

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def health_handlers(readiness: ReadinessCheck) -> list[Any]:
    """Route handlers for /healthz, /readyz and /metrics."""

    @get("/healthz", media_type=MediaType.JSON, include_in_schema=False, sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", media_type=MediaType.JSON, include_in_schema=False)
    async def readyz() -> Response[dict[str, Any]]:
        checks = await readiness()
        ready = all(checks.values())
        return Response(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @get("/metrics", include_in_schema=False, sync_to_thread=False)
    def metrics_endpoint() -> Response[bytes]:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [healthz, readyz, metrics_endpoint]


AppFactory = Callable[[Sequence[Any]], Litestar]


def build_app(readiness: ReadinessCheck, *, api_factory: AppFactory | None = None) -> Litestar:
    """The HTTP application: health and metrics, inside the admin API's app when one is given."""
    handlers = health_handlers(readiness)
    if api_factory is not None:
        return api_factory(handlers)
    # no API: no /schema either; logging stays as configure_logging set it (JSON lines)
    return Litestar(route_handlers=handlers, openapi_config=None, logging_config=None)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers (the engine handles signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:
        return


class HttpServer:
    """Runs the litestar app on ``host:port`` as a task of the current loop."""

    def __init__(self, app: Litestar, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",
            log_config=None,
            access_log=False,
            loop="none",
            log_level="warning",
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Start serving; returns once the socket is bound. A port that cannot be bound (in use,
        an address not on this host) is a UserFacingError naming it."""
        try:
            # An IPv6 address ("::1", "::") cannot be bound by the AF_INET socket create_server
            # makes by default; a name with an IPv4 address (localhost) stays on IPv4 as before.
            found = await asyncio.get_running_loop().getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            families = [info[0] for info in found]
            family = socket.AF_INET if socket.AF_INET in families else families[0]
            # "::" is every address, IPv4 included, as for dc09.host (a Prometheus on IPv4 must
            # not find /metrics refused because the host was widened to IPv6).
            dual = is_ipv6_wildcard(self.host) and socket.has_dualstack_ipv6()
            sock = socket.create_server((self.host, self.port), family=family, dualstack_ipv6=dual)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise UserFacingError(
                f"cannot listen for HTTP on {self.host}:{self.port}: {reason} (http.host, http.port)"
            ) from None
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise the bind error
                raise RuntimeError("HTTP server stopped before starting")
            await asyncio.sleep(0.01)
        servers = getattr(self._server, "servers", [])
        if servers and servers[0].sockets:
            self.port = servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving and wait for uvicorn to finish."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5.0)
