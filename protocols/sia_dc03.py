"""SIA DC-03 event blocks as carried in DC-09 ``SIA-DCS`` frames (PROTOCOLS.md §3.1).

``[#acct|]N<modifiers><CC><addr>[^text^][/<more>…][|A<text>]``: modifiers ``ri`` (area),
``id`` (user), ``ti`` (time) apply to the codes after them in the block; several codes per block;
tolerates the Scantronic ``Nti19:44/id1/RP`` order (pysiaalarm#8) and AlphaVision's extra field
``#0001|0|NRP`` (pysiaalarm#68).
"""

from __future__ import annotations

import re

from protocols.categories import classify
from protocols.errors import RemoteProtocolError, Reply
from protocols.signal import Event, Family

# Which address follows a code (dc09_spt's dc03 table as summarised in §3.1): user or area; else zone.
USER_ADDRESS_CODES = frozenset(
    [
        "BC",
        "CE",
        "CF",
        "CJ",
        "CK",
        "CL",
        "CP",
        "CQ",
        "CR",
        "DA",
        "DB",
        "EE",
        "JD",
        "JH",
        "JK",
        "JP",
        "JS",
        "JT",
        "JV",
        "JX",
        "JY",
        "JZ",
        "OC",
        "OH",
        "OJ",
        "OK",
        "OL",
        "OP",
        "OQ",
        "OR",
        "OT",
        "RX",
    ]
)
AREA_ADDRESS_CODES = frozenset(
    [
        "BV",
        "CA",
        "CD",
        "CG",
        "CI",
        "CT",
        "CW",
        "FI",
        "FK",
        "JA",
        "JR",
        "NF",
        "NL",
        "NM",
        "OA",
        "OG",
        "OI",
    ]
)

MAX_EVENTS_PER_BLOCK = 32
MAX_ADDRESS_DIGITS = 6


def _duh(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, reply=Reply.DUH)


def _split_account(data: str) -> tuple[str | None, list[str]]:
    account: str | None = None
    rest = data
    if rest.startswith("#"):
        bar = rest.find("|")
        if bar == -1:
            raise _duh("SIA block: account without '|'")
        account = rest[1:bar].upper() or None
        rest = rest[bar + 1 :]
    elif rest.startswith("|"):
        rest = rest[1:]
    return account, rest.split("|")


def _digits(text: str, start: int, limit: int) -> tuple[str, int]:
    end = start
    while end < len(text) and text[end].isdigit() and text[end].isascii():
        end += 1
    if end - start > limit:
        raise _duh(f"SIA block: number too long at {text[start:end]!r}")
    return text[start:end], end


# The form nearly every panel sends: optional account, optional area, one code, optional address.
_COMMON = re.compile(r"(?:#([0-9A-Za-z]{1,16})\|)?N(?:ri([0-9]{1,6})/?)?([A-Z]{2})([0-9]{0,6})")


def parse_sia_block(data: str) -> tuple[Event, ...]:
    """Parse the data of a ``SIA-DCS`` frame into events (one per code)."""
    match = _COMMON.fullmatch(data)
    if match is not None:
        return (_common_event(*match.groups()),)
    return parse_sia_block_general(data)


def _common_event(account: str | None, area: str | None, code: str, address: str) -> Event:
    number = int(address) if address else None
    partition = int(area) if area else None
    zone = user = None
    if code in USER_ADDRESS_CODES:
        user = number
    elif code in AREA_ADDRESS_CODES:
        partition = number if number is not None else partition
    else:
        zone = number
    return Event(
        family=Family.SIA,
        code=code,
        zone=zone,
        partition=partition,
        user=user,
        account=account.upper() if account else None,
        classification=classify(Family.SIA, code),
    )


def parse_sia_block_general(data: str) -> tuple[Event, ...]:
    """The full DC-03 block parser (modifiers, several codes, ^text^, |A text, extra fields)."""
    if len(data) > 1024:
        raise _duh("SIA block too long")
    account, segments = _split_account(data)
    # Each 'N' segment is a new-event block with its own modifiers (§3.1); an 'A' segment is the
    # free text of the block before it. Every block is read: an event left out would be ACKed
    # and never forwarded.
    blocks: list[tuple[str, str | None]] = []
    for segment in segments:
        if segment.startswith("N"):
            blocks.append((segment[1:], None))
        elif segment.startswith("A") and blocks:
            blocks[-1] = (blocks[-1][0], segment[1:])
    if not blocks:
        raise _duh(f"SIA block: no 'N' event block in {data[:64]!r}")
    out: list[Event] = []
    for block, free_text in blocks:
        # A bare 'N' carries nothing (an error only when no block has an event); a block with
        # content but no event code (lower-case "ba01" reads as a modifier) is one.
        events = _block_events(block, room=MAX_EVENTS_PER_BLOCK - len(out)) if block else []
        for item in events:
            code = str(item["code"])
            text = next(
                (t for t in (item["text"], free_text, item["names"]) if t is not None), None
            )
            out.append(
                Event(
                    family=Family.SIA,
                    code=code,
                    zone=item["zone"],  # type: ignore[arg-type]  # built with int | None
                    partition=item["partition"],  # type: ignore[arg-type]
                    user=item["user"],  # type: ignore[arg-type]
                    time=item["time"],  # type: ignore[arg-type]
                    text=text,  # type: ignore[arg-type]
                    account=account,
                    classification=classify(Family.SIA, code),
                )
            )
    if not out:
        raise _duh(f"SIA block: no event code in {data[:64]!r}")
    return tuple(out)


def _block_events(block: str, *, room: int) -> list[dict[str, object]]:
    """The events of one 'N' block (without the 'N'), at most ``room`` of them."""
    events: list[dict[str, object]] = []
    area: int | None = None
    user: int | None = None
    time: str | None = None
    # A ^text^ names what comes just before it: the event code and address (zone name) or a
    # modifier (dc09_spt writes "ri2^Ground floor^" and "id5^John^"). Modifier names are kept
    # until that modifier changes and are the text of an event that has none of its own.
    names: dict[str, str] = {}
    last: str | None = None  # "event", a modifier ("ri", "id", …) or None at the start
    i = 0
    n = len(block)
    while i < n:
        ch = block[i]
        if ch == "/":
            i += 1
            continue
        if ch == "^":
            end = block.find("^", i + 1)
            if end == -1:
                raise _duh("SIA block: unterminated ^text^")
            if last is None:
                raise _duh("SIA block: ^text^ before any event code or modifier")
            if last == "event":
                events[-1]["text"] = block[i + 1 : end]
            else:
                names[last] = block[i + 1 : end]
            i = end + 1
            continue
        pair = block[i : i + 2]
        if len(pair) == 2 and pair.isascii() and pair.isalpha() and pair.islower():
            names.pop(pair, None)
            last = pair
            if pair == "ti":
                end = i + 2
                while end < n and (block[end].isdigit() or block[end] == ":") and end - i < 12:
                    end += 1
                time = block[i + 2 : end] or None
                i = end
            else:
                value, i = _digits(block, i + 2, MAX_ADDRESS_DIGITS)
                if pair == "ri":
                    area = int(value) if value else None
                elif pair == "id":
                    user = int(value) if value else None
                # other modifiers (da, pi, …) are accepted and ignored
            continue
        if len(pair) == 2 and pair.isascii() and pair.isalpha() and pair.isupper():
            address, i = _digits(block, i + 2, MAX_ADDRESS_DIGITS)
            number = int(address) if address else None
            if len(events) >= room:
                raise _duh("SIA block: too many event codes")
            zone: int | None = None
            event_user = user
            partition = area
            if pair in USER_ADDRESS_CODES:
                event_user = number if number is not None else user
            elif pair in AREA_ADDRESS_CODES:
                partition = number if number is not None else area
            else:
                zone = number
            events.append(
                {
                    "code": pair,
                    "zone": zone,
                    "user": event_user,
                    "partition": partition,
                    "time": time,
                    "text": None,
                    "names": ", ".join(names.values()) or None,
                }
            )
            last = "event"
            continue
        raise _duh(f"SIA block: unexpected {block[i : i + 8]!r}")
    if not events:
        # quoted as a literal (an apostrophe in a name inside does not end it): an encrypted
        # frame's reason drops it whole (dc09_receiver._without_content)
        raise _duh(f"SIA block: no event code in {'N' + block[:64]!r}")
    return events


def format_sia_block(event: Event, account: str) -> str:
    """The ``SIA-DCS`` data for one event: ``#acct|N[ri<area>/][id<user>/]<CC><addr>[^text^]``."""
    if event.family is not Family.SIA:
        raise ValueError("format_sia_block needs a SIA event")
    parts = []
    if event.code in USER_ADDRESS_CODES:
        if event.partition is not None:
            parts.append(f"ri{event.partition}/")
        address = event.user
    elif event.code in AREA_ADDRESS_CODES:
        if event.user is not None:
            parts.append(f"id{event.user}/")
        address = event.partition
    else:
        if event.partition is not None:
            parts.append(f"ri{event.partition}/")
        if event.user is not None:
            parts.append(f"id{event.user}/")
        address = event.zone
    body = "".join(parts) + event.code + (f"{address:03d}" if address is not None else "")
    if event.text:
        body += f"^{_frame_text(event.text)}^"
    return f"#{account}|N{body}"


# The text's own delimiters and the frame's, and control characters (a CR would end the frame
# early at the receiver; a NUL some receivers take for the end of the text): a space each.
_TEXT_SPACES = str.maketrans(
    dict.fromkeys("^|[]", " ") | {chr(c): " " for c in (*range(0x20), 0x7F)}
)


def _frame_text(text: str) -> str:
    """``text`` as it can travel in a frame: Windows-1252 only (any other character, e.g. from an
    MQTT module's text, becomes ``?``), without delimiters or control characters."""
    clean = text.translate(_TEXT_SPACES)
    if clean.isascii():
        return clean
    return clean.encode("cp1252", "replace").decode("cp1252")
