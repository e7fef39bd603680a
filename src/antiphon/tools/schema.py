"""From a Python function to a UTCP tool: name, description, JSON Schemas, argument checks.

Theory of operation
-------------------
:func:`tool_spec` reads a function once, at registration: its name, the first paragraph
of its docstring, and its signature and type hints, turned into an ``inputs`` JSON
Schema (an object whose ``properties`` are the parameters; parameters without a default
are ``required``) and an ``outputs`` schema from the return annotation (for an async
generator, from the ``X`` of ``AsyncIterator[X]``). Anything may be given explicitly
instead. At call time :func:`bind_arguments` checks a frame's arguments against the
signature and the hints and returns the keyword arguments, or raises
:class:`ArgumentError` whose message is safe to send to the peer (it names the argument
and the problem, never holds a traceback).

Hints understood, for both the schema and the check: ``str``, ``int``, ``float`` (an int
is accepted), ``bool``, ``None``, ``list[X]``/``tuple``/``Sequence[X]`` (a JSON array),
``dict[str, X]``/``Mapping`` (a JSON object), ``X | Y``/``Optional[X]``, ``Literal[...]``
and ``Any``. Any other hint (a dataclass, a TypedDict) gets the schema ``{}`` and its value
is passed on unchecked: JSON gives the function plain dicts and lists either way. No
value is ever coerced: ``"7"`` is not an ``int`` (UTCP's dict ``message`` templates send
typed arguments as strings; type such a parameter ``str`` or use a string template).
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

from attrs import frozen

from antiphon.errors import ConfigError

__all__ = [
    "TOOL_NAME",
    "ArgumentError",
    "ToolKind",
    "ToolSpec",
    "bind_arguments",
    "schema_for",
    "tool_spec",
]

TOOL_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
"""A tool name is one URL path segment that needs no escaping (``/tools/<name>``)."""

ToolKind = Literal["sync", "async", "stream"]

_SIMPLE: Final[dict[Any, str]] = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


class ArgumentError(ValueError):
    """A call's arguments do not fit the tool; the message names the argument and the problem."""


@frozen
class ToolSpec:
    """A registered tool: the function, how to run it, and what the manual says about it."""

    name: str
    description: str
    fn: Callable[..., Any]
    kind: ToolKind
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    tags: tuple[str, ...]
    signature: inspect.Signature
    hints: Mapping[str, Any]
    timeout_s: float | None = None
    """This tool's call timeout (``math.inf``: none); None takes the app's ``call_timeout_s``."""


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or origin is types.UnionType


def schema_for(hint: Any) -> dict[str, Any]:
    """The JSON Schema of a type hint (``{}`` for hints it does not know)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        parts = [schema_for(a) for a in args]
        if all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            return {"type": [p["type"] for p in parts]}
        return {"anyOf": parts}
    if origin is Literal:
        return {"enum": list(args)}
    if hint in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        item = args[0] if args and origin is not tuple else Any
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
        items = schema_for(item)
        return {"type": "array", "items": items} if items else {"type": "array"}
    if hint is dict or origin in (dict, collections.abc.Mapping):
        values = schema_for(args[1]) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": values} if values else {"type": "object"}
    return {}


def _kind_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check(value: Any, hint: Any, where: str) -> None:
    """Raise ArgumentError when ``value`` (decoded JSON) does not fit ``hint``."""
    if hint is Any or hint is inspect.Parameter.empty:
        return
    if hint is None or hint is type(None):
        if value is not None:
            raise ArgumentError(f"{where}: expected null, got {_kind_name(value)}")
        return
    if hint in _SIMPLE:
        ok = {
            str: lambda v: isinstance(v, str),
            bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        }[hint](value)
        if not ok:
            raise ArgumentError(f"{where}: expected {_SIMPLE[hint]}, got {_kind_name(value)}")
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        for option in args:
            try:
                _check(value, option, where)
                return
            except ArgumentError:
                continue
        raise ArgumentError(f"{where}: {_kind_name(value)} does not match {json.dumps(schema_for(hint))}")
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            raise ArgumentError(f"{where}: expected one of {', '.join(json.dumps(a) for a in args)}, got {value!r}")
        return
    if hint in (list, tuple) or origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list):
            raise ArgumentError(f"{where}: expected array, got {_kind_name(value)}")
        item = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else Any
        for i, v in enumerate(value):
            _check(v, item, f"{where}[{i}]")
        return
    if hint is dict or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ArgumentError(f"{where}: expected object, got {_kind_name(value)}")
        if len(args) == 2:
            for k, v in value.items():
                _check(v, args[1], f"{where}.{k}")
        return
    # A hint we do not model: the function gets the JSON value as it is.


def _description(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _kind(fn: Callable[..., Any]) -> ToolKind:
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn).__call__
    if inspect.isasyncgenfunction(target):
        return "stream"
    if inspect.iscoroutinefunction(target):
        return "async"
    if inspect.isgeneratorfunction(target):
        raise ConfigError("tools: a generator function cannot be a tool; make it an async generator to stream")
    return "sync"


def tool_spec(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    description: str | None = None,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
) -> ToolSpec:
    """Describe ``fn`` as a tool; raises :class:`ConfigError` for a function that cannot be one.

    Positional-only parameters and ``*args`` cannot be passed from a JSON object and are
    refused; ``**kwargs`` lets unknown arguments through.
    """
    name = name if name is not None else getattr(fn, "__name__", "")
    if not TOOL_NAME.match(name):
        raise ConfigError(f"tools: {name!r} is not a valid tool name (letters, digits, '_', '.', '-'; at most 128)")
    kind = _kind(fn)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tools: cannot read the signature of {name!r}: {exc}") from None
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward references: a registration-time problem
        raise ConfigError(f"tools: cannot resolve the type hints of {name!r}: {exc}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in signature.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            raise ConfigError(f"tools: {name!r}: parameter {p.name!r} cannot be passed by name")
        if p.kind is p.VAR_KEYWORD:
            continue
        schema = dict(schema_for(hints.get(p.name, Any)))
        if p.default is p.empty:
            required.append(p.name)
        else:
            try:
                json.dumps(p.default, allow_nan=False)
                schema["default"] = p.default
            except (TypeError, ValueError):
                pass
        properties[p.name] = schema
    if inputs is None:
        built: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            built["required"] = required
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            built["additionalProperties"] = False
        inputs = built
    if outputs is None:
        ret = hints.get("return", Any)
        if kind == "stream" and typing.get_origin(ret) in (
            collections.abc.AsyncIterator, collections.abc.AsyncGenerator, collections.abc.AsyncIterable
        ):  # fmt: skip
            ret = typing.get_args(ret)[0]
        outputs = schema_for(ret)
    return ToolSpec(
        name=name,
        description=_description(fn) if description is None else description,
        fn=fn,
        kind=kind,
        inputs=dict(inputs),
        outputs=dict(outputs),
        tags=tuple(tags),
        signature=signature,
        hints=hints,
    )


def bind_arguments(spec: ToolSpec, args: Any) -> dict[str, Any]:
    """Check decoded JSON ``args`` against ``spec``; return them as keyword arguments.

    Raises :class:`ArgumentError`: not an object, a missing or unknown argument, or a
    value that does not fit its hint.
    """
    if not isinstance(args, dict):
        raise ArgumentError(f"expected a JSON object of arguments, got {_kind_name(args)}")
    params = spec.signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in args if k not in params or params[k].kind is params[k].VAR_KEYWORD)
    if unknown and not takes_any:
        raise ArgumentError(f"unknown argument{'s' if len(unknown) > 1 else ''}: {', '.join(map(repr, unknown))}")
    missing = [
        p.name
        for p in params.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in args
    ]
    if missing:
        raise ArgumentError(
            f"missing required argument{'s' if len(missing) > 1 else ''}: {', '.join(map(repr, missing))}"
        )
    for key, value in args.items():
        if key in params:
            _check(value, spec.hints.get(key, Any), f"argument {key!r}")
    return dict(args)
