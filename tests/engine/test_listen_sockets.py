"""Sockets of a listener on the IPv6 wildcard (engine/listen_sockets.py)."""

from __future__ import annotations

import socket

import pytest

from engine.listen_sockets import dual_stack_tcp


class TestDualStackTcp:
    def test_a_host_without_dual_stack_sockets_gets_an_os_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where the host cannot give a socket both IPv4 and IPv6 (no IPv6 in the kernel), the
        bind fails with an OSError, which the DC-09 listener reports as a clear bind error
        naming dc09.host; it raised socket.create_server's ValueError, a traceback at start."""
        monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
        with pytest.raises(OSError, match="IPv4 and IPv6"):
            dual_stack_tcp("::", 0, backlog=8)

    def test_takes_ipv4_and_ipv6_connections(self) -> None:
        """The socket accepts an IPv4 and an IPv6 client."""
        server = dual_stack_tcp("::", 0, backlog=8)
        try:
            port = server.getsockname()[1]
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                with socket.socket(family, socket.SOCK_STREAM) as client:
                    client.connect((host, port))
                    accepted, _ = server.accept()
                    accepted.close()
        finally:
            server.close()
