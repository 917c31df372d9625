"""The practical ceiling: a minimal uvloop DC-09 receiver that splits frames, checks the CRC, ACKs.

No decryption, no account lookup, no storage: what any Python DC-09 receiver must at least do.
Run: ``python -m bench.peer_minimal --port 0`` (prints ``READY <port>``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

import uvloop

from protocols.crc import crc16_arc

_HEADER = re.compile(rb'"\*?([A-Z0-9-]+)"(\d{4})(R[0-9A-F]*)?(L[0-9A-F]*)?(#[0-9A-Za-z]+)?\[')


class MinimalProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            start = self.buffer.find(b"\n")
            end = self.buffer.find(b"\r", start + 1)
            if start == -1 or end == -1:
                return
            frame, self.buffer = self.buffer[start + 1 : end], self.buffer[end + 1 :]
            region = frame[8:]
            try:
                if int(frame[:4], 16) != crc16_arc(region):
                    continue
            except ValueError:
                continue
            match = _HEADER.match(region)
            if match is None:
                continue
            _token, seq, rcv, line, acct = match.groups()
            body = b'"ACK"' + seq + (rcv or b"") + (line or b"L0") + (acct or b"") + b"[]"
            assert self.transport is not None
            self.transport.write(b"\n%04X%04X" % (crc16_arc(body), len(body)) + body + b"\r")


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MinimalProtocol, "127.0.0.1", port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    uvloop.run(main(parser.parse_args().port))
    sys.exit(0)
