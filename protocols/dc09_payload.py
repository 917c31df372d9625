"""Dispatch a DC-09 frame's data block to the parser of its ID token."""

from __future__ import annotations

from protocols.contact_id import parse_cid_block
from protocols.errors import RemoteProtocolError, Reply
from protocols.sia_dc03 import parse_sia_block
from protocols.signal import Event


def parse_payload(token: str, data: str) -> tuple[Event, ...]:
    """Events in the data of a frame with ID ``token`` (without '*'). NULL carries none.

    Raises RemoteProtocolError(reply=DUH) for data that cannot be parsed or an unsupported token.
    """
    if token in ("SIA-DCS", "ADM-CID") and not data.strip():
        # An empty data block ("SIA-DCS"…[]) carries no event: treated like a link test.
        return ()
    if token == "SIA-DCS":
        return parse_sia_block(data)
    if token == "ADM-CID":
        return parse_cid_block(data)
    if token == "NULL":
        # Link test. Hikvision sends a CID-style body "#0000|0000 00 000" (sia#17): ignored.
        return ()
    raise RemoteProtocolError(f"unsupported ID token {token!r}", reply=Reply.DUH)
