"""A simulated premises module for tests: sends DC-09 frames and waits for each reply."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from protocols.dc09_crypto import AesKey
from protocols.dc09_frame import Frame, decode_frame, encode_frame


class Dc09TcpModule:
    """Stop-and-wait over one kept-open TCP connection, like a panel."""

    def __init__(self, host: str, port: int, *, account: str, key: AesKey | None = None) -> None:
        self.host = host
        self.port = port
        self.account = account
        self.key = key
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.seq = 0

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()

    def next_seq(self) -> str:
        self.seq = self.seq % 9999 + 1
        return f"{self.seq:04d}"

    def frame(
        self, token: str, data: str, *, seq: str | None = None, now: datetime | None = None
    ) -> bytes:
        return encode_frame(
            token=token,
            seq=seq or self.next_seq(),
            account=self.account,
            data=data,
            timestamp=now or datetime.now(UTC),
            key=self.key,
        )

    async def write(self, raw: bytes) -> None:
        """Send bytes without waiting for a reply (several frames in one write: a burst)."""
        assert self._writer is not None
        self._writer.write(raw)
        await self._writer.drain()

    async def reply(self, *, timeout: float = 2.0) -> bytes | None:
        """The next reply frame (LF..CR), or None when nothing came within timeout."""
        assert self._reader is not None
        try:
            return await asyncio.wait_for(self._reader.readuntil(b"\r"), timeout)
        except TimeoutError:
            return None

    async def send_raw(self, raw: bytes, *, timeout: float = 2.0) -> bytes | None:
        """Send bytes; return the reply frame (LF..CR) or None when nothing came within timeout."""
        await self.write(raw)
        return await self.reply(timeout=timeout)

    async def send(
        self, token: str, data: str, *, seq: str | None = None, timeout: float = 2.0
    ) -> bytes | None:
        return await self.send_raw(self.frame(token, data, seq=seq), timeout=timeout)

    def decode_reply(self, reply: bytes) -> Frame:
        return decode_frame(reply.lstrip(b"\x00"), key=self.key)


async def send_udp(host: str, port: int, raw: bytes, *, timeout: float = 2.0) -> bytes | None:
    """Send one datagram and wait for one reply datagram."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[bytes] = loop.create_future()

    class _Proto(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:  # type: ignore[override]
            if not received.done():
                received.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(_Proto, remote_addr=(host, port))
    try:
        transport.sendto(raw)
        return await asyncio.wait_for(received, timeout)
    except TimeoutError:
        return None
    finally:
        transport.close()


class Dc09UdpModule:
    """A module on DC-09 UDP keeping one socket (one source address and port) for its frames."""

    def __init__(self, host: str, port: int, *, account: str) -> None:
        self.host, self.port, self.account = host, port, account
        self._seq = 0
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()
        self._transport: asyncio.DatagramTransport | None = None

    async def connect(self) -> None:
        replies = self._replies

        class _Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:  # type: ignore[override]
                replies.put_nowait(data)

        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            _Proto, remote_addr=(self.host, self.port)
        )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def send(self, token: str, data: str, *, timeout: float = 2.0) -> bytes | None:
        """Send one frame (the next seq) and wait for one reply; None when none came."""
        assert self._transport is not None, "connect() first"
        self._seq = self._seq % 9999 + 1
        raw = encode_frame(token=token, seq=f"{self._seq:04d}", account=self.account, data=data)
        self._transport.sendto(raw)
        try:
            return await asyncio.wait_for(self._replies.get(), timeout)
        except TimeoutError:
            return None
