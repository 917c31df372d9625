"""PostgreSQL's ``text`` and ``jsonb`` cannot hold U+0000: what modules send may.

A panel may put a NUL byte in a SIA ``^text^`` or an x-data value, an MQTT module a ``\\u0000`` in
its JSON. Stored as it came, that character fails the whole statement (and with it every other
signal of the group commit). The JSON documents the ingest statement takes are made storable
here: each ``\\u0000`` escape becomes ``\\ufffd`` (the replacement character), everything else is
left alone. The raw frame or payload is stored as ``bytea`` and keeps the exact bytes.
"""

from __future__ import annotations

import re

_NUL_ESCAPE = "\\u0000"
# A \u0000 escape is one preceded by an even number of backslashes (zero included): "\\u0000"
# in JSON text is an escaped backslash followed by the letters "u0000", not a NUL.
_ESCAPED_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def storable_json(document: str) -> str:
    """``document`` (JSON text) with every U+0000 in its strings replaced by U+FFFD."""
    if _NUL_ESCAPE not in document:
        return document
    return _ESCAPED_NUL.sub(lambda m: m.group(1) + "\\ufffd", document)
