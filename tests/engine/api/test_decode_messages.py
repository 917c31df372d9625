"""msgspec's decoding errors as the API words them (a pure function: no server needed)."""

from __future__ import annotations

import msgspec
import pytest

from engine.api.decode_messages import plain_message
from engine.api.problems import decode_error


@pytest.mark.parametrize(
    ("message", "plain"),
    [
        ("Expected `int`, got `str`", "expected an integer, got a string"),
        ("Expected `bool`, got `int`", "expected a boolean, got an integer"),
        (
            "Expected `int | str | null`, got `array`",
            "expected an integer, a string or null, got an array",
        ),
        ("Expected `str` of length <= 200", "expected a string of at most 200 characters"),
        ("Expected `array` of length >= 1", "expected an array of at least 1 items"),
        ("Expected `int` >= 0", "expected an integer of at least 0"),
        ("Expected `int` > 0", "expected an integer greater than 0"),
        (
            "Expected `str` matching regex '^[a-z]+$'",
            "expected a string matching the pattern ^[a-z]+$",
        ),
        ("Object missing required field `zip`", "this field is required"),
        ("Object contains unknown field `colour`", "unknown field"),
        ("Invalid enum value 'fax'", "'fax' is not one of the allowed values"),
        ("Invalid RFC3339 encoded date", "not a date (YYYY-MM-DD)"),
        ("Number out of range", "the number is out of range"),
        ("Something `new` from msgspec", "something new from msgspec"),
    ],
)
def test_plain_message(message: str, plain: str) -> None:
    assert plain_message(message) == plain


class _Step(msgspec.Struct, forbid_unknown_fields=True):
    count: int
    when: msgspec.UnsetType | str = msgspec.UNSET


def test_every_decode_error_reads_without_backticks() -> None:
    """What msgspec says about a real body, through decode_error, has none of its markup."""
    documents: list[object] = [{}, {"count": "1"}, {"count": 1, "colour": "red"}, []]
    for document in documents:
        with pytest.raises(msgspec.ValidationError) as raised:
            msgspec.convert(document, _Step)
        error = decode_error("body", str(raised.value).split(" - at ", 1)[0])
        assert "`" not in error.message and not error.message[0].isupper(), error
