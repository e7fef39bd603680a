"""``antiphon tools serve`` and ``antiphon tools call``: argument parsing and wiring only.

``antiphon tools serve MODULE:OBJECT`` serves OBJECT - a :class:`ToolApp`, one function, or a
list / dict of functions - imported from MODULE (the current directory is importable).
``antiphon tools call URL TOOL --arg k=v`` calls TOOL on the antiphon tool server at URL,
i.e. at ``URL/tools/TOOL`` (the server's layout, and go-utcp's), with ``response_format``
``json`` and a connection of its own; it prints each result as one line of JSON as it
arrives: one line for a plain tool, one per item for a streaming one (the first reply
frame tells which). ``--stream`` reads UTCP-style instead (every frame until
``stream_end`` or a close), for servers that stream bare frames. An ``--arg`` value is JSON
when it parses as JSON (``n=3`` is the number 3, ``tags=["a"]`` a list) and a string
otherwise (``text=hello``); when the tool's input schema (read from the server's manual,
only if some value parses as a non-string) does not allow the parsed type but allows a
string, the text is kept (``text=123`` is ``"123"`` for a ``str`` parameter). The secret
comes from ``$ANTIPHON_TOOLS_SECRET`` unless ``--api-key`` is given (a flag is visible to
other users in ``ps``); ``tools serve`` reads the same variable for the key it requires.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs
import trio

from antiphon.engine.server import ServerConfig
from antiphon.engine.tls import server_context
from antiphon.errors import AntiphonError, ConfigError
from antiphon.proto.utcp.templates import ApiKeyAuth, BasicAuth, WebSocketCallTemplate
from antiphon.tools.app import MANUAL_PATHS, SECRET_VARIABLE, ToolApp
from antiphon.tools.client import ToolClient, open_tool_client
from antiphon.tools.server import ToolServer

__all__ = [
    "SECRET_ENV",
    "add_commands",
    "auth_from_args",
    "build_app",
    "call_template",
    "manual_template",
    "parse_args",
]

log = logging.getLogger("antiphon.tools")

SECRET_ENV = SECRET_VARIABLE
"""The environment variable both commands read the secret from: the name the manual uses."""


def add_commands(subparsers: Any) -> None:
    """Add ``tools serve`` and ``tools call`` to the ``antiphon`` command's subparsers."""
    tools = subparsers.add_parser("tools", help="serve or call UTCP WebSocket tools")
    sub = tools.add_subparsers(dest="tools_command", required=True)

    serve = sub.add_parser("serve", help="serve Python functions as UTCP WebSocket tools")
    serve.add_argument("target", metavar="MODULE:OBJECT", help="a ToolApp, a function, or a list/dict of functions")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port to bind; 0 picks a free one (default: 8765)")
    _auth_flags(serve, "require")
    serve.add_argument("--public-url", help="base URL the manual's templates point at (e.g. wss://tools.example.com)")
    serve.add_argument("--subprotocol", action="append", default=[], help="a subprotocol to accept (repeatable)")
    serve.add_argument("--expose-errors", action="store_true", help="send a failing tool's exception text to clients")
    serve.add_argument("--call-timeout", type=float, metavar="S", help="seconds one call may take (default: 60)")
    serve.add_argument("--certfile", metavar="PEM", help="serve wss:// with this certificate chain (PEM)")
    serve.add_argument("--keyfile", metavar="PEM", help="the certificate's private key (default: in --certfile)")
    serve.add_argument("--no-metrics", action="store_true", help="do not answer GET /metrics (GET /healthz stays)")
    serve.set_defaults(run=_serve)

    call = sub.add_parser("call", help="call a tool on an antiphon tool server and print the result")
    call.add_argument("url", help="the tool server's ws:// or wss:// base URL")
    call.add_argument("tool", help="the tool's name")
    call.add_argument("--arg", action="append", default=[], metavar="K=V", help="an argument; V is JSON if it parses")
    _auth_flags(call, "send")
    call.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="a handshake header")
    call.add_argument("--protocol", help="the subprotocol to offer")
    call.add_argument(
        "--timeout", type=float, default=30, metavar="S", help="seconds to wait for the reply (default: 30)"
    )
    call.add_argument(
        "--stream",
        action="store_true",
        help="read frames UTCP-style until stream_end or a close (servers without envelopes)",
    )
    call.set_defaults(run=_call)


def _auth_flags(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--api-key", help=f"{verb} this API key (default: ${SECRET_ENV})")
    parser.add_argument("--api-key-name", default="X-Api-Key", help="header, query or cookie name (default: X-Api-Key)")
    parser.add_argument("--api-key-location", choices=["header", "query", "cookie"], default="header")
    parser.add_argument("--basic", metavar="USER:PASSWORD", help=f"{verb} HTTP Basic credentials instead")


def auth_from_args(args: argparse.Namespace) -> ApiKeyAuth | BasicAuth | None:
    """The auth ``--basic`` / ``--api-key`` (else ``$ANTIPHON_TOOLS_SECRET``) ask for; None without either."""
    if args.basic is not None:
        user, sep, password = args.basic.partition(":")
        if not sep:
            raise ConfigError("--basic: expected USER:PASSWORD")
        return BasicAuth(username=user, password=password)
    key = args.api_key if args.api_key is not None else os.environ.get(SECRET_ENV)
    if key:
        return ApiKeyAuth(api_key=key, var_name=args.api_key_name, location=args.api_key_location)
    return None


# --------------------------------------------------------------------------- serve


def build_app(target: str, **settings: Any) -> ToolApp:
    """Import ``MODULE:OBJECT`` and make it a :class:`ToolApp`; ``settings`` override the app's."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"tools serve: expected MODULE:OBJECT, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"tools serve: cannot import {target!r}: {exc}") from None
    given = {k: v for k, v in settings.items() if v is not None}
    if isinstance(obj, ToolApp):
        return attrs.evolve(obj, **given) if given else obj
    app = ToolApp(**given)
    functions: Sequence[Callable[..., Any]]
    if isinstance(obj, Mapping):
        for name, fn in obj.items():
            app.add(fn, name=name)
        return app
    functions = obj if isinstance(obj, (list, tuple)) else [obj]
    for fn in functions:
        if not callable(fn):
            raise ConfigError(f"tools serve: {target!r} holds {type(fn).__name__}, which is not a function")
        app.add(fn)
    return app


def _serve(args: argparse.Namespace) -> int:
    app = build_app(
        args.target,
        auth=auth_from_args(args),
        public_url=args.public_url,
        subprotocols=tuple(args.subprotocol) or None,
        expose_errors=args.expose_errors or None,
        call_timeout_s=args.call_timeout,
    )
    if args.keyfile is not None and args.certfile is None:
        raise ConfigError("--keyfile: give certfile too")
    try:
        tls = server_context(args.certfile, args.keyfile) if args.certfile is not None else None
    except ConfigError as exc:
        raise ConfigError(f"--{exc}") from None  # "certfile: ..." is the flag's problem here
    trio.run(_run_server, app, ServerConfig(host=args.host, port=args.port, ssl=tls, metrics=not args.no_metrics))
    return 0


async def _run_server(app: ToolApp, config: ServerConfig) -> None:
    server = ToolServer(app, config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            names = ", ".join(sorted(app.tools)) or "(none)"
            print(
                f"antiphon: tool server listening on {server.url} (manual at {MANUAL_PATHS[1]}; tools: {names})",
                flush=True,
            )
            async for signum in signals:
                logging.getLogger("antiphon").info("%s: shutting down", signal.Signals(signum).name)
                break
            await server.shutdown()
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- call


def parse_args(pairs: Sequence[str], inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``["k=v", ...]`` as arguments: each value is JSON if it parses, else the string.

    With the tool's ``inputs`` JSON Schema, a parsed value whose type the argument's
    schema does not allow, where it allows a string, stays the text it was.
    """
    properties = inputs.get("properties") if isinstance(inputs, Mapping) else None
    out: dict[str, Any] = {}
    for key, raw in _split_pairs(pairs):
        try:
            value = json.loads(raw)
        except ValueError:
            out[key] = raw
            continue
        allowed = _types(properties.get(key)) if isinstance(properties, Mapping) else None
        if allowed and "string" in allowed and not allowed & _json_types(value):
            value = raw
        out[key] = value
    return out


def _split_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--arg: expected K=V, got {pair!r}")
        out.append((key, raw))
    return out


def _types(schema: Any) -> set[str] | None:
    """The JSON types a (simple) schema allows; None when it does not say."""
    if not isinstance(schema, Mapping):
        return None
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {k for k in kind if isinstance(k, str)}
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list):
        found = [_types(o) for o in options]
        if all(f is not None for f in found):
            return set().union(*(f for f in found if f is not None))
    return None


def _json_types(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"} | ({"integer"} if value.is_integer() else set())
    if isinstance(value, str):
        return {"string"}
    return {"array"} if isinstance(value, list) else {"object"}


def _template_settings(args: argparse.Namespace) -> dict[str, Any]:
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise ConfigError(f"--header: expected NAME:VALUE, got {item!r}")
        headers[name.strip()] = value.strip()
    return {
        "protocol": args.protocol,
        "keep_alive": False,
        "response_format": "json",
        "timeout": args.timeout,
        "headers": headers or None,
        "auth": auth_from_args(args),
    }


def call_template(args: argparse.Namespace) -> WebSocketCallTemplate:
    """The call template ``tools call`` uses: ``URL/tools/TOOL``, JSON replies, no pooling."""
    base = args.url.rstrip("/")
    return WebSocketCallTemplate(
        name=args.tool, url=f"{base}/tools/{quote(args.tool, safe='')}", **_template_settings(args)
    )


def manual_template(args: argparse.Namespace) -> WebSocketCallTemplate:
    """The template ``tools call`` reads the server's manual with: ``URL/utcp``, same credentials."""
    return WebSocketCallTemplate(name="manual", url=args.url.rstrip("/") + MANUAL_PATHS[1], **_template_settings(args))


def _call(args: argparse.Namespace) -> int:
    template = call_template(args)
    pairs = list(args.arg)
    parse_args(pairs)  # a malformed --arg fails before anything is dialled
    trio.run(_run_call, template, manual_template(args), pairs, args.stream)
    return 0


def _needs_schema(pairs: Sequence[str]) -> bool:
    """True when some value parses as JSON that is not a string, so the schema may say otherwise."""
    for _, raw in _split_pairs(pairs):
        try:
            if not isinstance(json.loads(raw), str):
                return True
        except ValueError:
            continue
    return False


async def _inputs(tools: ToolClient, manual: WebSocketCallTemplate, tool: str) -> Mapping[str, Any] | None:
    try:
        found = await tools.register_manual(manual)
    except AntiphonError as exc:
        log.debug("no manual at %s (%s): --arg values are taken as JSON", manual.url, exc)
        return None
    return next((t.inputs for t in found.tools if t.name == tool), None)


async def _run_call(
    template: WebSocketCallTemplate, manual: WebSocketCallTemplate, pairs: Sequence[str], stream: bool
) -> None:
    async with open_tool_client() as tools:
        inputs = await _inputs(tools, manual, template.name) if _needs_schema(pairs) else None
        arguments = parse_args(pairs, inputs)
        calling = tools.call_streaming if stream else tools.call_results
        async with calling(template, arguments) as results:
            async for item in results:
                print(json.dumps(item, ensure_ascii=False), flush=True)
