"""``${VAR}`` and ``$VAR`` in a UTCP call template, filled from a mapping and the environment.

UTCP's syntax and key mangling, verbatim (``DefaultVariableSubstitutor``): the pattern
``${NAME}`` or ``$NAME``, applied to every string of the template's dict form, dict keys
never, strings holding a JSON-Schema ``$ref`` left whole; with a namespace (a manual's
name) the key looked up is ``namespace.replace("_", "__") + "_" + NAME``. Where we differ,
:func:`substitute_variables` says. Sans-IO: the caller passes ``os.environ`` in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from antiphon.errors import VariableNotFound
from antiphon.proto.utcp.templates import (
    WebSocketCallTemplate,
    decode_call_template,
    encode_call_template,
)

__all__ = ["substitute_variables"]

_VARIABLE: Final = re.compile(r"\$\{([a-zA-Z0-9_]+)\}|\$([a-zA-Z0-9_]+)")
"""UTCP's variable syntax, verbatim: ``${NAME}`` or ``$NAME``."""

_JSON_SCHEMA_REF: Final = re.compile(r"\$ref(?![a-zA-Z0-9_])")
"""A string holding a JSON-Schema ``$ref`` is left whole, as UTCP does."""


def _namespaced(name: str, namespace: str | None) -> str:
    # UTCP: `namespace.replace("_", "__") + "_" + VAR`, so `${KEY}` in manual `my_svc`
    # is looked up as `my__svc_KEY`.
    return name if namespace is None else namespace.replace("_", "__") + "_" + name


def _substitute(value: Any, lookup: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        if _JSON_SCHEMA_REF.search(value):
            return value
        return _VARIABLE.sub(lambda m: lookup(m.group(1) or m.group(2)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, lookup) for v in value]
    return value


def substitute_variables(
    template: WebSocketCallTemplate,
    variables: Mapping[str, str],
    environ: Mapping[str, str],
    *,
    namespace: str | None = None,
    include_message: bool = False,
) -> WebSocketCallTemplate:
    """Replace ``${VAR}`` and ``$VAR`` in every string of the template, looking in ``variables`` then ``environ``.

    Sans-IO: pass ``os.environ`` yourself. With ``namespace`` (a manual name) the looked-up
    key is UTCP's namespaced one, ``namespace.replace("_", "__") + "_" + VAR``; without,
    the bare name. A key that is present counts even when its value is empty (UTCP
    skips empty environment values). Dict keys are never substituted, and a string
    containing a JSON-Schema ``$ref`` is left whole, as in UTCP.

    ``message`` is skipped unless ``include_message`` is true: it is the request body, whose
    own placeholders are ``UTCP_ARG_x_UTCP_ARG``, and ``$`` is common there (prices like
    ``$5``, GraphQL ``$id`` variables, jq, shell). UTCP substitutes it and so fails with
    ``UtcpVariableNotFound`` on such messages.

    Raises :class:`VariableNotFound` naming the (namespaced) variable, or
    :class:`DecodeError` when the result is no longer a valid template (for example a
    ``ws://${HOST}`` that became non-loopback).
    """

    def lookup(name: str) -> str:
        key = _namespaced(name, namespace)
        if key in variables:
            return variables[key]
        if key in environ:
            return environ[key]
        raise VariableNotFound(key)

    doc = encode_call_template(template)
    message = doc.pop("message", None)
    doc = _substitute(doc, lookup)
    if message is not None:
        doc["message"] = _substitute(message, lookup) if include_message else message
    return decode_call_template(doc)
