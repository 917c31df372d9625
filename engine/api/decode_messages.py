"""msgspec's decoding errors in the words of the other problem messages.

msgspec writes for a programmer: ``Expected `int | null`, got `str```, ``Object missing required
field `zip```. Those words reached people: each 400's field errors and, for a draft, the errors
its answer lists while the dealer fills it in. They are rewritten as the API's own messages are
("the two email addresses do not match"): lower case, no backticks, JSON's names for the types.
"""

from __future__ import annotations

import re

_KINDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "null": "null",
    "object": "an object",
    "array": "an array",
    "date": "a date (YYYY-MM-DD)",
    "datetime": "a date and time (RFC 3339)",
    "time": "a time (RFC 3339)",
    "uuid": "a UUID",
    "decimal": "a decimal number",
}
_UNITS = {"str": "characters", "array": "items", "object": "entries"}
_BOUNDS = {">=": "of at least", "<=": "of at most", ">": "greater than", "<": "less than"}

_GOT = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")
_CONSTRAINED = re.compile(r"Expected `([^`]+)` (.+)")
_LENGTH = re.compile(r"of length (>=|<=|>|<) (\S+)")
_BOUND = re.compile(r"(>=|<=|>|<) (\S+)")
_PATTERN = re.compile(r"matching regex '(.*)'", re.DOTALL)
_MULTIPLE = re.compile(r"that is a multiple of (\S+)")
_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_ENUM = re.compile(r"Invalid enum value (.+)", re.DOTALL)
_ENCODED = re.compile(r"Invalid RFC3339 encoded (\w+)")


def _kinds(names: str) -> str:
    """``int | null`` as "an integer or null"."""
    kinds = [_KINDS.get(name.strip(), name.strip()) for name in names.split("|")]
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]


def _constraint(names: str, text: str) -> str:
    length = _LENGTH.fullmatch(text)
    if length:
        unit = _UNITS.get(names.strip(), "in length")
        return f"{_BOUNDS[length.group(1)]} {length.group(2)} {unit}"
    bound = _BOUND.fullmatch(text)
    if bound:
        return f"{_BOUNDS[bound.group(1)]} {bound.group(2)}"
    pattern = _PATTERN.fullmatch(text)
    if pattern:
        return f"matching the pattern {pattern.group(1)}"
    multiple = _MULTIPLE.fullmatch(text)
    if multiple:
        return f"that is a multiple of {multiple.group(1)}"
    return text.replace("`", "")


def plain_message(message: str) -> str:
    """msgspec's ``message`` (without its `` - at `$…` `` path) as a person reads it."""
    got = _GOT.fullmatch(message)
    if got:
        return f"expected {_kinds(got.group(1))}, got {_kinds(got.group(2))}"
    constrained = _CONSTRAINED.fullmatch(message)
    if constrained:
        names, text = constrained.groups()
        return f"expected {_kinds(names)} {_constraint(names, text)}"
    if _MISSING.fullmatch(message):
        return "this field is required"
    unknown = _UNKNOWN.fullmatch(message)
    if unknown:
        return "unknown field" if unknown.group(1) else 'unknown field "" (an empty name)'

    enum = _ENUM.fullmatch(message)
    if enum:
        return f"{enum.group(1)} is not one of the allowed values"
    encoded = _ENCODED.fullmatch(message)
    if encoded:
        return f"not {_KINDS.get(encoded.group(1), encoded.group(1))}"
    if message == "Invalid UUID":
        return "not a UUID"
    if message == "Number out of range":
        return "the number is out of range"
    text = message.replace("`", "")
    return text[:1].lower() + text[1:]
