"""A loopback TCP proxy that a test can cut and restore, to make a real server "go away"."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

# What PostgreSQL sends a client whose backend pg_terminate_backend ended, just before it closes.
_TERMINATED = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"
TERMINATED_MESSAGE = b"E" + struct.pack("!i", len(_TERMINATED) + 4) + _TERMINATED


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._clients: set[asyncio.StreamWriter] = set()  # the proxied side of each connection
        self._up = True
        self._lose_after: bytes | None = None  # see lose_reply_after
        self._losing: set[asyncio.StreamWriter] = set()  # client sides whose replies are lost
        self._hold_after: tuple[bytes, asyncio.Event] | None = None  # see hold_reply_after
        self._holding: dict[asyncio.StreamWriter, asyncio.Event] = {}
        self._arming: dict[asyncio.StreamWriter, asyncio.Event] = {}  # prepared, not yet run
        self._cut_after: tuple[bytes, bytes] | None = None  # see cut_after_reply
        self._cut_at: dict[asyncio.StreamWriter, bytes] = {}  # client side → what cuts it

    def lose_reply_after(self, marker: bytes) -> None:
        """Once: the next connection whose client sends ``marker`` (e.g. b"COMMIT") gets no
        reply to it and is cut a moment later: the server did the work, the client never hears
        (a connection lost after COMMIT)."""
        self._lose_after = marker

    def hold_reply_after(self, marker: bytes) -> asyncio.Event:
        """Once: the server's answer to the next statement whose text holds ``marker`` (and all
        that follows on that connection) waits until the returned event is set (a slow network
        path). The statement is prepared first, as asyncpg does: held from its execution on."""
        go = asyncio.Event()
        self._hold_after = (marker, go)
        return go

    def cut_after_reply(self, marker: bytes, *, before: bytes) -> None:
        """Once: the next connection whose client sends ``marker`` gets that statement's reply,
        and is cut when its client next sends ``before`` (e.g. b"RESET ALL", the pool's reset
        as the connection is handed back): a connection that broke right after a reply."""
        self._cut_after = (marker, before)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def cut(self) -> None:
        """Drop all proxied connections now and refuse new ones."""
        self._up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def terminate_backends(self, *, hold_s: float) -> int:
        """What ``pg_terminate_backend`` does to each open connection, with the close held back:
        its client gets PostgreSQL's FATAL message at once and the end of the connection
        ``hold_s`` later (the server sends both at once; a client may read them turns apart)."""
        clients = list(self._clients)
        for writer in clients:
            writer.write(TERMINATED_MESSAGE)
        await asyncio.sleep(hold_s)
        for writer in clients:
            writer.transport.abort()
        return len(clients)

    def restore(self) -> None:
        """Accept and forward new connections again."""
        self._up = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_writer})
        self._clients.add(writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                with contextlib.suppress(ConnectionError, OSError):
                    while data := await src.read(65536):
                        if dst is writer and writer in self._losing:
                            continue  # the reply is lost
                        if dst is writer and writer in self._holding:
                            await self._holding[writer].wait()
                        cut_at = self._cut_at.get(writer) if dst is up_writer else None
                        if cut_at is not None and cut_at in data:
                            break  # the connection goes (finally: both ends aborted)
                        if dst is up_writer and self._cut_after and self._cut_after[0] in data:
                            self._cut_at[writer] = self._cut_after[1]
                            self._cut_after = None
                        if dst is up_writer and writer in self._arming:
                            self._holding[writer] = self._arming.pop(writer)
                        if dst is up_writer and self._hold_after and self._hold_after[0] in data:
                            self._arming[writer] = self._hold_after[1]
                            self._hold_after = None
                        dst.write(data)
                        await dst.drain()
                        if dst is up_writer and self._lose_after and self._lose_after in data:
                            self._lose_after = None
                            self._losing.add(writer)
                            await asyncio.sleep(0.2)  # the server answers meanwhile
                            writer.transport.abort()
                            break
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
        self._clients.discard(writer)
        self._losing.discard(writer)
        self._holding.pop(writer, None)
        self._arming.pop(writer, None)
        self._cut_at.pop(writer, None)


@contextlib.asynccontextmanager
async def proxied_database(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A started proxy to the PostgreSQL of ``database_url`` and the same URL through it."""
    host_port = database_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port))
    await proxy.start()
    try:
        yield proxy, database_url.replace(host_port, f"127.0.0.1:{proxy.port}")
    finally:
        await proxy.stop()
