"""Sockets for a listener whose host is the IPv6 wildcard, and how a peer's address is written.

``"::"`` means every address, IPv4 included, on TCP and UDP alike. asyncio binds ``"::"`` with
``IPV6_V6ONLY`` set on TCP (IPv4 modules refused) and leaves UDP to the host's
``net.ipv6.bindv6only``: a module on IPv4 reached the engine over UDP but not over TCP. Both
sockets are made here, dual-stack whatever the host's default.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

_MAPPED_PREFIX = "::ffff:"


def is_ipv6_wildcard(host: str) -> bool:
    """True for ``"::"`` in any of its spellings."""
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def dual_stack_tcp(host: str, port: int, *, backlog: int) -> socket.socket:
    """A listening TCP socket taking IPv4 and IPv6 connections (SO_REUSEADDR set).

    Raises OSError, as any failed bind, where the host has no such sockets (no IPv6 in the
    kernel): the listener reports it as a bind error (socket.create_server raises ValueError).
    """
    if not socket.has_dualstack_ipv6():
        raise OSError(
            errno.EAFNOSUPPORT,
            "this host has no sockets taking both IPv4 and IPv6 (is IPv6 disabled?); "
            "listen on 0.0.0.0 for IPv4",
        )
    return socket.create_server(
        (host, port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True
    )


def dual_stack_udp(host: str, port: int) -> socket.socket:
    """A bound UDP socket taking IPv4 and IPv6 datagrams."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def peer_text(address: object) -> str:
    """``"ip:port"`` of a socket address; an IPv4 module on a dual-stack socket keeps its IPv4
    form (``::ffff:192.0.2.1`` is written ``192.0.2.1``), as on an IPv4 socket."""
    if not isinstance(address, tuple) or len(address) < 2:
        return "?"
    host = str(address[0])
    if host.startswith(_MAPPED_PREFIX) and "." in host:
        host = host[len(_MAPPED_PREFIX) :]
    return f"{host}:{address[1]}"
