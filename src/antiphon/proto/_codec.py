"""Shared codec machinery: JSON, strict cattrs converters and located error messages.

Every schema family (chat, UTCP, media) builds its own private converter with
:func:`make_converter` and never touches cattrs' global one. Converters made here are
*strict*: JSON ``1`` does not structure into ``str``, ``true`` does not structure into
``int``. Failures are turned by :func:`decode_error` into a :class:`DecodeError` whose
messages read ``$.payload.message: expected a string``.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, Union

import attrs
import cattrs
import orjson
from cattrs.v import transform_error

from antiphon.errors import DecodeError

__all__ = [
    "ECHO_MAX_CHARS",
    "JSONValue",
    "decode_error",
    "dumps",
    "expect_object",
    "loads",
    "make_converter",
    "quote",
    "structure",
]

JSONValue = Any
"""A value that came out of, or can go into, a JSON document."""

T = TypeVar("T")

_TYPE_NAMES: Final[dict[type, str]] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "a list",
}


ECHO_MAX_CHARS: Final = 100
"""At most this many characters of a peer's own string are echoed back in an error message."""


def quote(value: object, limit: int = ECHO_MAX_CHARS) -> str:
    """``repr(value)`` for an error message, a long string cut to ``limit`` characters first.

    A peer's strings go back to it in error events; cutting before ``repr`` bounds the
    echo at a few hundred bytes however the string is made (``repr`` of control
    characters grows them fourfold).
    """
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value) - limit} more characters)"
    text = repr(value)
    return text if len(text) <= 4 * limit else text[: 4 * limit] + "..."


class _Mismatch(ValueError):
    """Raised by the strict hooks; its text is the whole located message body."""


def loads(data: str | bytes) -> JSONValue:
    """Parse JSON text; raise :class:`DecodeError` (``$: invalid JSON ...``) when it is not."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"$: invalid JSON ({exc.args[0] if exc.args else exc})") from None


def dumps(value: JSONValue) -> str:
    """Serialize to compact JSON text (UTF-8, no spaces), as every antiphon peer sends it."""
    return orjson.dumps(value).decode()


def expect_object(value: JSONValue, path: str = "$") -> dict[str, JSONValue]:
    """Return ``value`` if it is a JSON object, else raise a located :class:`DecodeError`."""
    if not isinstance(value, dict):
        raise DecodeError(f"{path}: expected an object, got {_describe(value)}")
    return value


def _describe(value: object) -> str:
    if value is None:
        return "null"
    for tp in (bool, int, float, str, dict, list):
        if isinstance(value, tp):
            return _TYPE_NAMES[tp]
    return type(value).__name__


def _strict(tp: type) -> Callable[[Any, Any], Any]:
    name = _TYPE_NAMES[tp]

    def hook(value: Any, _: Any) -> Any:
        # bool is a subclass of int: JSON `true` must not pass as an integer or number.
        if isinstance(value, bool) and tp is not bool:
            raise _Mismatch(f"expected {name}, got a boolean")
        if tp is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, tp):
            raise _Mismatch(f"expected {name}, got {_describe(value)}")
        return value

    return hook


_PRIMITIVES: Final = (str, int, float, bool, type(None))


def _is_primitive_union(tp: Any) -> bool:
    args = getattr(tp, "__args__", None) or ()
    return (
        isinstance(tp, types.UnionType) or getattr(tp, "__origin__", None) is Union
    ) and bool(args) and all(a in _PRIMITIVES for a in args)


def _primitive_union_hook(value: Any, tp: Any) -> Any:
    args = tp.__args__
    kind = type(value)
    if kind in args:
        return value
    if kind is int and float in args:
        return float(value)
    # An optional field says what it wants, not that null would also do.
    names = " or ".join(_TYPE_NAMES[a] for a in args if a is not type(None))
    raise _Mismatch(f"expected {names}, got {_describe(value)}")


def _any_hook(value: Any, _: Any) -> Any:
    return value


def make_converter() -> cattrs.Converter:
    """A new strict converter with detailed validation, for one schema family."""
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    for tp in (str, int, float, bool):
        conv.register_structure_hook(tp, _strict(tp))
    # JSON objects with free-form values (a message's `context`, a schema) stay as dicts.
    free_form = {dict, dict[str, Any], Mapping[str, Any]}
    conv.register_structure_hook_func(lambda tp: tp in free_form, _strict(dict))
    conv.register_structure_hook_func(lambda tp: tp is Any, _any_hook)
    # `str | int | None` and friends: the value must already be one of the members.
    conv.register_structure_hook_func(_is_primitive_union, _primitive_union_hook)
    return conv


def _format(exc: BaseException, tp: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (_Mismatch, ValueError)) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, TypeError) and tp in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[tp]}"
    if isinstance(exc, (TypeError, AttributeError)) and tp is not None and attrs.has(tp):
        return "expected an object"
    return cattrs.v.format_exception(exc, tp)


def decode_error(exc: BaseException, root: str = "$") -> DecodeError:
    """Turn a cattrs failure into a :class:`DecodeError` with ``$.path: problem`` messages."""
    if isinstance(exc, DecodeError):
        return exc
    messages = []
    for line in transform_error(exc, path=root, format_exception=_format):
        what, sep, where = line.rpartition(" @ ")
        messages.append(f"{where}: {what}" if sep else line)
    return DecodeError(messages or [f"{root}: invalid"])


def structure(converter: cattrs.Converter, value: JSONValue, tp: type[T], root: str = "$") -> T:
    """Structure ``value`` into ``tp`` with ``converter``; failures become :class:`DecodeError`."""
    try:
        return converter.structure(value, tp)
    except DecodeError:
        raise
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise decode_error(exc, root) from None
