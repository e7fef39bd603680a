"""UTCP data model for WebSocket tools: call templates, auth, tools and manuals.

Theory of operation
-------------------
These attrs classes mirror the pydantic models of the released ``utcp==1.2.0`` and
``utcp-websocket==1.2.1`` field for field, so a dict written by either side decodes on
the other. One private cattrs converter (:data:`_CONVERTER`, built with
:func:`~antiphon.proto._codec.make_converter`) structures them; every failure is a
:class:`~antiphon.errors.DecodeError` that names the field, for instance
``$.tools[0].tool_call_template.url: WebSocket URL must use wss://, ...``.

Encoding is written out by hand in :func:`encode_call_template` because its job is to
produce the *same dict* as UTCP's ``WebSocketCallTemplateSerializer.to_dict``: ``name``,
``call_template_type`` and ``url`` always; ``message``, ``protocol`` and
``response_format`` when not None; ``keep_alive`` only when False; ``timeout`` only when
not 30; ``headers`` and ``header_fields`` only when non-empty; ``auth`` in full.
``decode(encode(x)) == x`` always holds.

Decisions where UTCP is buggy or silent
---------------------------------------
* ``allowed_communication_protocols`` is kept by :func:`encode_call_template` when set.
  UTCP's ``to_dict`` drops it, and since its client round-trips every template through
  ``to_dict`` during variable substitution, a websocket manual's allowlist is silently
  lost there. UTCP accepts the key on input, so our dicts still decode on its side.
* ``timeout`` accepts integer *and* fractional seconds (Trio deadlines are floats), but
  must be positive and finite. UTCP takes ``int`` only: it coerces ``"7"`` (we refuse
  strings, like every strict antiphon codec) and rejects ``1.5`` (we accept it). An
  integral float encodes as an int, so ``60.0`` reaches UTCP as ``60``; a fractional
  timeout is an antiphon extension that UTCP will refuse.
* Empty ``headers`` / ``header_fields`` normalise to None: UTCP's ``to_dict`` drops them,
  so keeping ``{}`` apart from None would break the round trip for no benefit.
* A ``Tool``'s ``tool_call_template`` must be a websocket template: antiphon speaks no
  other transport, so an ``http`` tool in a manual is a located decode error rather than
  a value we cannot use.
* ``$VAR`` substitution (:func:`~antiphon.proto.utcp.variables.substitute_variables`)
  skips ``message`` by default; see that function.
* **Unknown keys** in a call template are ignored, as pydantic ignores them, but never
  silently: decoding warns (:class:`~antiphon.errors.TemplateWarning`) naming them.
* **The pre-1.0 message keys.** UTCP's own docstring ("Custom Message Format") still shows
  ``request_data_format`` and ``request_data_template``, which UTCP renamed ``message``
  and then drops without a word, so that example sends JSON arguments instead of
  ``CMD:...;DATA:...``. We honour ``request_data_template`` as ``message`` (unless a
  ``message`` is set too) and accept ``request_data_format`` (a string ``message`` is
  always sent as text, a dict as JSON), each with a
  :class:`~antiphon.errors.TemplateDeprecationWarning` saying what to write instead.
"""

from __future__ import annotations

import math
import uuid
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, get_args, get_origin

import attrs
import cattrs
from attrs import field, frozen
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn, override

from antiphon.errors import (
    TemplateDeprecationWarning,
    TemplateError,
    TemplateWarning,
)
from antiphon.proto._codec import (
    JSONValue,
    _describe,
    expect_object,
    loads,
    make_converter,
    structure,
)
from antiphon.proto.utcp.urls import check_ws_url

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "UTCP_VERSION",
    "ApiKeyAuth",
    "ApiKeyLocation",
    "Auth",
    "BasicAuth",
    "OAuth2Auth",
    "ResponseFormat",
    "Tool",
    "UtcpManual",
    "WebSocketCallTemplate",
    "decode_call_template",
    "decode_manual",
    "decode_tool",
    "encode_auth",
    "encode_call_template",
    "encode_manual",
    "encode_tool",
    "loads_call_template",
    "loads_manual",
]

DEFAULT_TIMEOUT_S: Final = 30
"""UTCP's default per-operation timeout; ``to_dict`` omits it, so we must too."""

UTCP_VERSION: Final = "1.2.0"
"""The ``utcp_version`` a manual gets when it names none (UTCP uses its own library version)."""

ResponseFormat = Literal["json", "text", "raw"]
ApiKeyLocation = Literal["header", "query", "cookie"]


def _literal_text(choices: tuple[object, ...]) -> str:
    return ", ".join(repr(c) for c in choices)


def _check_literal(name: str, choices: tuple[object, ...]) -> Callable[[Any, Any, Any], None]:
    """An attrs validator that raises TemplateError naming the field."""

    def validate(_: Any, __: Any, value: Any) -> None:
        if value not in choices:
            raise TemplateError(f"{name}: expected one of {_literal_text(choices)}, got {value!r}")

    return validate


def _check_timeout(value: object) -> int | float:
    """``value`` if it is a positive finite number of seconds, else TemplateError saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TemplateError(f"expected a positive number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise TemplateError(f"expected a positive number of seconds, got {value!r}")
    return value


def _validate_timeout(_: Any, __: Any, value: object) -> None:
    try:
        _check_timeout(value)
    except TemplateError as exc:
        raise TemplateError(f"timeout: {exc}") from None


def _validate_url(_: Any, __: Any, value: str) -> None:
    try:
        check_ws_url(value)
    except TemplateError as exc:
        raise TemplateError(f"url: {exc}") from None


def _none_if_empty(value: Any) -> Any:
    return value if value else None


@frozen
class ApiKeyAuth:
    """An API key sent in a handshake header, a query parameter or a cookie named ``var_name``."""

    auth_type: ClassVar[str] = "api_key"
    api_key: str
    var_name: str = "X-Api-Key"
    location: ApiKeyLocation = field(default="header", validator=_check_literal("location", get_args(ApiKeyLocation)))


@frozen
class BasicAuth:
    """HTTP Basic credentials, sent as ``Authorization: Basic base64(username:password)``."""

    auth_type: ClassVar[str] = "basic"
    username: str
    password: str


@frozen
class OAuth2Auth:
    """OAuth2 client-credentials: a bearer token fetched from ``token_url`` before connecting."""

    auth_type: ClassVar[str] = "oauth2"
    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None


Auth = ApiKeyAuth | BasicAuth | OAuth2Auth
_AUTH_TYPES: Final[dict[str, type[Auth]]] = {c.auth_type: c for c in (ApiKeyAuth, BasicAuth, OAuth2Auth)}


@frozen(kw_only=True)
class WebSocketCallTemplate:
    """How to reach one WebSocket tool (or a manual): URL, message template, auth, timeouts.

    Keyword-only, in UTCP's field order (so a wrong ``call_template_type`` is reported
    before the URL it makes meaningless). Constructing one with a bad ``url``,
    ``timeout`` or ``response_format`` raises :class:`TemplateError` naming the field;
    :func:`decode_call_template` reports the same problems as a located :class:`DecodeError`.
    """

    name: str = field(factory=lambda: uuid.uuid4().hex)
    call_template_type: Literal["websocket"] = field(
        default="websocket", validator=_check_literal("call_template_type", ("websocket",))
    )
    url: str = field(validator=_validate_url)
    message: str | dict[str, Any] | None = None
    protocol: str | None = None
    keep_alive: bool = True
    response_format: ResponseFormat | None = field(
        default=None, validator=_check_literal("response_format", (*get_args(ResponseFormat), None))
    )
    timeout: int | float = field(default=DEFAULT_TIMEOUT_S, validator=_validate_timeout)
    headers: dict[str, str] | None = field(default=None, converter=_none_if_empty)
    header_fields: list[str] | None = field(default=None, converter=_none_if_empty)
    auth: Auth | None = None
    allowed_communication_protocols: list[str] | None = None


@frozen(kw_only=True)
class Tool:
    """One tool of a manual: its JSON-Schema ``inputs``/``outputs`` and how to call it (keyword-only)."""

    name: str
    description: str = ""
    inputs: dict[str, Any] = field(factory=dict)
    outputs: dict[str, Any] = field(factory=dict)
    tags: list[str] = field(factory=list)
    average_response_size: int | None = None
    tool_call_template: WebSocketCallTemplate


@frozen(kw_only=True)
class UtcpManual:
    """What a tool server answers to discovery: its tools and the versions they follow (keyword-only)."""

    utcp_version: str = UTCP_VERSION
    manual_version: str = "1.0.0"
    tools: list[Tool]


# --- decoding -------------------------------------------------------------------------


def _field_error(cl: type, name: str, message: str) -> ClassValidationError:
    """A cattrs error located at ``<path>.name``, for hooks that look inside an object."""
    exc = ValueError(message)
    exc.__notes__ = [AttributeValidationNote(f"Structuring class {cl.__name__} @ attribute {name}", name, str)]
    return ClassValidationError(f"While structuring {cl.__name__}", [exc], cl)


def _structure_url(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    return check_ws_url(value)


def _structure_timeout(value: Any, _: Any) -> int | float:
    return _check_timeout(value)


def _structure_message(value: Any, _: Any) -> str | dict[str, Any] | None:
    if value is None or isinstance(value, (str, dict)):
        return value
    raise ValueError(f"expected a string or an object or null, got {_describe(value)}")


def _literal_hook(optional: bool) -> Callable[[Any, Any], Any]:
    def hook(value: Any, tp: Any) -> Any:
        choices = get_args(tp)
        if value is None and optional:
            return None
        # `in` alone would let True pass for 1; the literals here are all strings.
        if isinstance(value, str) and value in choices:
            return value
        tail = " or null" if optional else ""
        raise ValueError(f"expected one of {_literal_text(choices)}{tail}, got {value!r}")

    return hook


def _structure_auth(value: Any, _: Any) -> Auth | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"expected an object or null, got {_describe(value)}")
    if "auth_type" not in value:
        raise _field_error(ApiKeyAuth, "auth_type", "required field missing")
    cl = _AUTH_TYPES.get(value["auth_type"]) if isinstance(value["auth_type"], str) else None
    if cl is None:
        raise _field_error(
            ApiKeyAuth, "auth_type", f"expected one of {_literal_text(tuple(_AUTH_TYPES))}, got {value['auth_type']!r}"
        )
    return _CONVERTER.structure(value, cl)


def _strict_container(
    kind: type, factory: Callable[[Any, cattrs.BaseConverter], Any]
) -> Callable[[Any, cattrs.BaseConverter], Callable[[Any, Any], Any]]:
    """A hook factory that refuses anything but ``kind`` before cattrs iterates it.

    Without it cattrs happily structures the string ``"ab"`` into ``["a", "b"]``.
    """

    def make(tp: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
        inner = factory(tp, conv)
        name = "a list" if kind is list else "an object"

        def hook(value: Any, tp: Any) -> Any:
            if not isinstance(value, kind):
                raise ValueError(f"expected {name}, got {_describe(value)}")
            return inner(value, tp)

        return hook

    return make


_LEGACY_MESSAGE_KEYS: Final = ("request_data_template", "request_data_format")
"""Pre-1.0 UTCP keys that its docs still show; honoured with a deprecation warning."""


_WARN_MAX_KEYS: Final = 10
_WARN_KEY_CHARS: Final = 64
"""A remote manual's keys go into warnings (and logs): at most this many, this long each."""


def _clip(text: str) -> str:
    return text if len(text) <= _WARN_KEY_CHARS else text[: _WARN_KEY_CHARS - 3] + "..."


_TEMPLATE_KEYS: Final = frozenset(a.name for a in attrs.fields(WebSocketCallTemplate))


def _upgrade_legacy_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with ``request_data_template`` moved to ``message``; warns for legacy and unknown keys."""
    known = _TEMPLATE_KEYS
    name = doc.get("name")
    label = f"call template {_clip(name)!r}" if isinstance(name, str) else "call template"
    unknown = sorted(str(k) for k in doc if k not in known and k not in _LEGACY_MESSAGE_KEYS)
    if unknown:
        shown = ", ".join(repr(_clip(k)) for k in unknown[:_WARN_MAX_KEYS])
        more = f" and {len(unknown) - _WARN_MAX_KEYS} more" if len(unknown) > _WARN_MAX_KEYS else ""
        warnings.warn(
            f"{label}: unknown key{'s' if len(unknown) > 1 else ''} ignored: {shown}{more}",
            TemplateWarning,
            stacklevel=2,
        )
    if not any(k in doc for k in _LEGACY_MESSAGE_KEYS):
        return doc
    doc = dict(doc)
    if "request_data_template" in doc:
        legacy = doc.pop("request_data_template")
        if legacy is not None and not isinstance(legacy, (str, dict)):
            raise _field_error(
                WebSocketCallTemplate,
                "request_data_template",
                f"expected a string or an object, got {_describe(legacy)}",
            )
        if doc.get("message") is not None:
            warnings.warn(
                f"{label}: request_data_template is deprecated and ignored here, since message is set too; "
                f"remove request_data_template",
                TemplateDeprecationWarning,
                stacklevel=2,
            )
        else:
            doc["message"] = legacy
            warnings.warn(
                f"{label}: request_data_template is deprecated (UTCP renamed it message); it is used as "
                f"the message: write message instead",
                TemplateDeprecationWarning,
                stacklevel=2,
            )
    if "request_data_format" in doc:
        doc.pop("request_data_format")
        warnings.warn(
            f"{label}: request_data_format is deprecated and not needed: a string message is sent as text "
            f"and an object message as JSON; remove it",
            TemplateDeprecationWarning,
            stacklevel=2,
        )
    return doc


def _is_list_type(tp: Any) -> bool:
    origin: object = get_origin(tp)
    return origin is list


def _is_typed_dict_type(tp: Any) -> bool:
    origin: object = get_origin(tp)
    return origin is dict and get_args(tp)[1:] != (Any,)


def _is_literal_type(tp: Any) -> bool:
    origin: object = get_origin(tp)
    return origin is Literal


def _make_converter() -> cattrs.Converter:
    conv = make_converter()
    conv.register_structure_hook_factory(_is_list_type, _strict_container(list, list_structure_factory))
    conv.register_structure_hook_factory(_is_typed_dict_type, _strict_container(dict, mapping_structure_factory))
    conv.register_structure_hook_func(_is_literal_type, _literal_hook(optional=False))
    template_hook = make_dict_structure_fn(
        WebSocketCallTemplate,
        conv,
        url=override(struct_hook=_structure_url),
        timeout=override(struct_hook=_structure_timeout),
        message=override(struct_hook=_structure_message),
        auth=override(struct_hook=_structure_auth),
        response_format=override(
            struct_hook=lambda v, _: _literal_hook(optional=True)(v, ResponseFormat)
        ),
    )

    def structure_template(value: Any, tp: Any) -> WebSocketCallTemplate:
        if isinstance(value, dict):
            value = _upgrade_legacy_keys(value)
        return template_hook(value, tp)

    conv.register_structure_hook(WebSocketCallTemplate, structure_template)
    return conv


_CONVERTER: Final = _make_converter()


def decode_call_template(doc: JSONValue) -> WebSocketCallTemplate:
    """Decode a call template from its dict form.

    Raises :class:`DecodeError` (``$.field: problem``) on any invalid or missing field.
    Unknown keys are ignored with a :class:`~antiphon.errors.TemplateWarning` naming them;
    ``request_data_template`` becomes ``message`` (see the module docstring).
    """
    template: WebSocketCallTemplate = structure(_CONVERTER, expect_object(doc), WebSocketCallTemplate)
    return template


def loads_call_template(text: str | bytes) -> WebSocketCallTemplate:
    """Parse JSON text and decode a call template; raises :class:`DecodeError`."""
    return decode_call_template(loads(text))


def decode_tool(doc: JSONValue) -> Tool:
    """Decode one tool from its dict form; raises :class:`DecodeError`."""
    tool: Tool = structure(_CONVERTER, expect_object(doc), Tool)
    return tool


def decode_manual(doc: JSONValue) -> UtcpManual:
    """Decode a UTCP manual from its dict form; raises :class:`DecodeError` located per tool."""
    manual: UtcpManual = structure(_CONVERTER, expect_object(doc), UtcpManual)
    return manual


def loads_manual(text: str | bytes) -> UtcpManual:
    """Parse JSON text and decode a manual; raises :class:`DecodeError`."""
    return decode_manual(loads(text))


# --- encoding -------------------------------------------------------------------------


def encode_auth(auth: Auth) -> dict[str, Any]:
    """Every field of ``auth`` plus its ``auth_type``, as UTCP's ``model_dump`` emits it."""
    return {"auth_type": auth.auth_type, **attrs.asdict(auth)}


def _wire_timeout(timeout: int | float) -> int | float:
    return int(timeout) if isinstance(timeout, float) and timeout.is_integer() else timeout


def encode_call_template(template: WebSocketCallTemplate) -> dict[str, Any]:
    """The dict UTCP's ``WebSocketCallTemplateSerializer.to_dict`` writes, plus the allowlist.

    Defaults are omitted exactly as UTCP omits them (see the module docstring), except
    ``allowed_communication_protocols``, which UTCP drops and we keep when it is set.
    """
    out: dict[str, Any] = {
        "name": template.name,
        "call_template_type": template.call_template_type,
        "url": template.url,
    }
    if template.message is not None:
        out["message"] = template.message
    if template.protocol is not None:
        out["protocol"] = template.protocol
    if template.keep_alive is not True:
        out["keep_alive"] = template.keep_alive
    if template.response_format is not None:
        out["response_format"] = template.response_format
    if template.timeout != DEFAULT_TIMEOUT_S:
        out["timeout"] = _wire_timeout(template.timeout)
    if template.headers:
        out["headers"] = dict(template.headers)
    if template.header_fields:
        out["header_fields"] = list(template.header_fields)
    if template.auth is not None:
        out["auth"] = encode_auth(template.auth)
    if template.allowed_communication_protocols is not None:
        out["allowed_communication_protocols"] = list(template.allowed_communication_protocols)
    return out


def encode_tool(tool: Tool) -> dict[str, Any]:
    """Every field of ``tool``, its call template encoded by :func:`encode_call_template`."""
    return {
        "name": tool.name,
        "description": tool.description,
        "inputs": tool.inputs,
        "outputs": tool.outputs,
        "tags": list(tool.tags),
        "average_response_size": tool.average_response_size,
        "tool_call_template": encode_call_template(tool.tool_call_template),
    }


def encode_manual(manual: UtcpManual) -> dict[str, Any]:
    """The manual as UTCP's ``UtcpManualSerializer`` reads it."""
    return {
        "utcp_version": manual.utcp_version,
        "manual_version": manual.manual_version,
        "tools": [encode_tool(t) for t in manual.tools],
    }
