"""The one error contract of the protocol layer.

Hostile or malformed bytes raise only :class:`RemoteProtocolError`. It says which reply the peer
gets (silence, NAK or DUH) and, when the layer that raised it knows the frame's header, carries the
reply bytes ready to send. Any other exception escaping a parser is a bug.
"""

from __future__ import annotations

from enum import StrEnum


class Reply(StrEnum):
    """What a DC-09 receiver answers to a frame it could not accept."""

    NONE = "none"  # bad CRC or length: no reply (DC-09 2007 test plan C.2.3.5)
    NAK = "nak"  # timestamp outside the window: NAK with our UTC time
    DUH = "duh"  # received correctly but cannot be processed


class RemoteProtocolError(Exception):
    """The remote peer sent something we cannot accept.

    ``reply`` names the answer the peer gets; ``reply_bytes`` is the full wire reply (LF … CR)
    when the raising layer could build it, else ``b""`` (the caller builds it from the frame
    header, or sends nothing for :attr:`Reply.NONE`).
    """

    def __init__(self, message: str, *, reply: Reply, reply_bytes: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply
        self.reply_bytes = reply_bytes

    def with_reply_bytes(self, reply_bytes: bytes) -> RemoteProtocolError:
        """Return a copy of this error carrying ``reply_bytes``."""
        return RemoteProtocolError(self.message, reply=self.reply, reply_bytes=reply_bytes)

    def __repr__(self) -> str:
        return f"RemoteProtocolError({self.message!r}, reply={self.reply.value})"
