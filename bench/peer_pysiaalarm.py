"""pysiaalarm's asyncio receiver as the peer: receive, parse, ACK (its natural use).

Run: ``python -m bench.peer_pysiaalarm --port 0 --accounts 100 [--key ASCIIKEY]`` (prints READY).
Accounts are numbered like the load generator's (``bench.load.account_name``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

from pysiaalarm import SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient
from pysiaalarm.utils import CommunicationsProtocol

from bench.load import account_name


async def _on_event(event: SIAEvent) -> None:
    return None


async def main(port: int, accounts: int, key: str | None, udp: bool) -> None:
    logging.disable(logging.WARNING)
    if port == 0:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    accts = [
        SIAAccount(account_name(i), key, allowed_timeband=(3600, 3600)) for i in range(accounts)
    ]
    protocol = CommunicationsProtocol.UDP if udp else CommunicationsProtocol.TCP
    async with SIAClient("127.0.0.1", port, accts, function=_on_event, protocol=protocol):
        print(f"READY {port}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--accounts", type=int, default=100)
    parser.add_argument(
        "--key", default=None, help="ASCII key (pysiaalarm uses the key's ASCII bytes)"
    )
    parser.add_argument("--udp", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.accounts, args.key, args.udp))
