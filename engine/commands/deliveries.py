"""``alarmrelay deliveries requeue``: send dead-lettered or waiting deliveries again, once their
cause is fixed (see :mod:`engine.store.delivery_requeue`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from engine.errors import UserFacingError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deliveries", help="send dead-lettered or waiting deliveries to the station again"
    )
    sub = parser.add_subparsers(dest="deliveries_command", metavar="ACTION", required=True)
    requeue = sub.add_parser(
        "requeue",
        help="make the selected deliveries pending again, routed by their account's settings now",
    )
    requeue.add_argument(
        "--dead", action="store_true", help="dead-lettered deliveries (the receiver answered DUH)"
    )
    requeue.add_argument(
        "--pending",
        action="store_true",
        help="deliveries waiting for a retry (not the ones being sent right now)",
    )
    requeue.add_argument("--receiver", help="only those meant for or tried at this receiver")
    requeue.add_argument("--account", help="only this module account's")
    requeue.add_argument(
        "--since", type=_instant, help="only signals received at or after this ISO 8601 time"
    )
    requeue.add_argument(
        "--dry-run", action="store_true", help="show what would be requeued, change nothing"
    )
    requeue.add_argument("--config", type=Path, default=None, help="TOML settings file")
    requeue.set_defaults(func=run_requeue)


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-12-07T18:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def run_requeue(args: argparse.Namespace) -> int:
    from engine.api import audit  # noqa: PLC0415
    from engine.database import open_database  # noqa: PLC0415
    from engine.logging_setup import configure_logging  # noqa: PLC0415
    from engine.settings import load_settings  # noqa: PLC0415
    from engine.store.delivery_requeue import requeue_deliveries  # noqa: PLC0415

    states = tuple(s for s, on in (("dead", args.dead), ("pending", args.pending)) if on)
    if not states:
        raise UserFacingError("say which deliveries: --dead, --pending or both")
    settings = load_settings(args.config, os.environ)
    configure_logging(level="warning", fmt="console")  # stderr: stdout is the JSON report

    async def record(conn: Any, ids: list[int]) -> None:
        await audit.record(
            conn,
            audit.COMMAND_LINE,
            action="requeue",
            resource="deliveries",
            resource_id=f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else ids[0],
            dealer_id=None,
            after={
                "ids": ids[:1000],
                "count": len(ids),
                "states": list(states),
                "receiver": args.receiver,
                "account": args.account,
                "since": args.since.isoformat() if args.since else None,
            },
        )

    async def main() -> Any:
        async with open_database(settings) as db:
            return await requeue_deliveries(
                db.pool,
                states=states,
                receiver=args.receiver,
                account=args.account,
                since=args.since,
                dry_run=args.dry_run,
                audit=record,
            )

    report = asyncio.run(main())
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    return 0
