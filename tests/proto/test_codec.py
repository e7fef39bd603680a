"""The shared codec: strict primitives and located error messages."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from antiphon.errors import DecodeError
from antiphon.proto._codec import dumps, expect_object, loads, make_converter, structure


@attrs.frozen
class _Payload:
    message: str
    context: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class _Envelope:
    payload: _Payload
    id: str | int | None = None


def test_valid_input_structures() -> None:
    """A well-formed document structures into the attrs classes."""
    got = structure(make_converter(), {"payload": {"message": "hi"}, "id": 7}, _Envelope)
    assert got == _Envelope(_Payload("hi"), 7)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"payload": {"message": 3}}, "$.payload.message: expected a string, got an integer"),
        ({"payload": {"message": "x", "context": []}}, "$.payload.context: expected an object, got a list"),
        ({}, "$.payload: required field missing"),
        ({"payload": 3}, "$.payload: expected an object"),
        ({"payload": {"message": "x"}, "id": True}, "$.id: expected a string or an integer, got a boolean"),
    ],
)
def test_errors_are_located(doc: dict[str, Any], message: str) -> None:
    """Each problem is reported as `$.path: what is wrong`."""
    with pytest.raises(DecodeError) as info:
        structure(make_converter(), doc, _Envelope)
    assert info.value.errors[0] == message
    assert info.value.path == message.split(":")[0]


def test_bool_is_not_an_integer() -> None:
    """JSON `true` never passes as an integer, even though bool subclasses int in Python."""
    with pytest.raises(DecodeError, match=r"^\$: expected an integer, got a boolean$"):
        structure(make_converter(), True, int)


def test_invalid_json_is_a_decode_error() -> None:
    """Text that is not JSON raises DecodeError located at the root."""
    with pytest.raises(DecodeError, match=r"^\$: invalid JSON"):
        loads("{nope")


def test_expect_object_names_what_arrived() -> None:
    """A JSON document that is not an object is refused with what it was instead."""
    with pytest.raises(DecodeError, match=r"^\$: expected an object, got a list$"):
        expect_object([1])


def test_dumps_is_compact_utf8() -> None:
    """JSON goes out compact, with non-ASCII text kept as is."""
    assert dumps({"a": "é", "b": [1, None]}) == '{"a":"é","b":[1,null]}'
