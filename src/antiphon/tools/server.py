"""The tool server: plain Python functions served as UTCP WebSocket tools on the session engine.

::

    app = ToolApp(auth=ApiKeyAuth(api_key="s3cret"))

    @app.tool
    def add(a: int, b: int) -> int:
        "Add two integers."
        return a + b

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_tools, app, ServerConfig(port=8765))

Theory of operation
-------------------
UTCP sends a call as a bare frame of arguments - no tool name, no id - so the tool is
chosen by **path**, one per tool: ``ws://host:port/tools/<name>``. That is how go-utcp
dials tools, and it fits how UTCP clients pool (by template, and every tool has its own
template). ``/`` and ``/utcp`` are the **manual** endpoint: a ``{"type": "utcp"}`` frame
there is answered with the manual, whose tools' call templates point back at this server
(``public_url`` when set; else the ``ws://`` URL the client used in its ``Host`` header,
if that is a loopback one; else the listener's address). On a tool path every frame is
arguments, even ``{"type": "utcp"}``: a tool may well take a ``type`` argument. Any other
path is refused at the handshake with 404, an unknown tool included.

Each connection is a :class:`~antiphon.engine.Session`. Frames are queued (``on_message``
must return at once) and a per-connection worker runs the calls **one at a time, in
order**: replies carry no id, so they must come back in the order the calls came in.
More than ``max_queued_calls`` waiting closes the connection with 1008. A sync tool runs
in a worker thread (``trio.to_thread.run_sync``), so it never blocks the event loop; an
async tool runs in the session's nursery and is cancelled when the session closes.

Replies: a plain tool's result is sent as one JSON TEXT frame. An async generator
tool streams ``{"type": "tool_response", "result": ...}`` frames, then
``{"type": "stream_end"}``. Every failure is one ``{"type": "tool_error", "error": ...}``
frame with a message fit for the peer: bad arguments name the argument and the problem;
a tool that raises is reported by exception *type* only (``the tool raised
ZeroDivisionError``), since exception text can hold anything - paths, keys, queries -
unless ``expose_errors`` is set. The traceback goes to the server's log, never to the peer.

Auth (``auth``): an :class:`~antiphon.proto.utcp.ApiKeyAuth` (header, query parameter or
cookie named ``var_name``) or a :class:`~antiphon.proto.utcp.BasicAuth`, checked on every
handshake, manual endpoint included, in constant time; a failure is a 401 (with a
``WWW-Authenticate`` challenge for basic). The manual does not reveal the secret: its
templates carry ``${ANTIPHON_TOOLS_SECRET}`` (``secret_variable``) where the key or the
password goes, for the client to fill from its variables.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final, TypeVar, overload
from urllib.parse import parse_qsl, quote, unquote

import trio
from attrs import define, field

from antiphon.engine.server import (
    Accept,
    HandshakeRequest,
    Reject,
    ServerConfig,
    SessionServer,
)
from antiphon.engine.session import (
    Session,
    SessionConfig,
    SessionHandler,
)
from antiphon.errors import ConfigError, TemplateError
from antiphon.proto.close import CloseCode
from antiphon.proto.utcp.message import is_discovery_request
from antiphon.proto.utcp.templates import (
    ApiKeyAuth,
    BasicAuth,
    Tool,
    UtcpManual,
    WebSocketCallTemplate,
    encode_manual,
)
from antiphon.proto.utcp.urls import check_ws_url
from antiphon.tools.schema import ArgumentError, ToolSpec, bind_arguments, tool_spec

__all__ = ["MANUAL_PATHS", "TOOLS_PATH", "ToolApp", "ToolServer", "serve_tools"]

log = logging.getLogger("antiphon.tools.server")

MANUAL_PATHS: Final = ("/", "/utcp")
"""Where ``{"type": "utcp"}`` is answered with the manual."""

TOOLS_PATH: Final = "/tools/"
"""Tool ``x`` is called at ``/tools/x``."""

STREAM_END: Final = '{"type": "stream_end"}'

F = TypeVar("F", bound=Callable[..., Any])


def _tool_error(error: str) -> str:
    return json.dumps({"type": "tool_error", "error": error})


@define(kw_only=True)
class ToolApp:
    """A set of tools and how to serve them; add tools with :meth:`tool` or :meth:`add`.

    ``name`` names the manual; ``auth`` is required of every client (None: open);
    ``subprotocols`` are accepted in the client's order of preference and the first is
    advertised in the manual; ``public_url`` is the base URL the manual's templates use
    (``wss://tools.example.com`` behind a TLS proxy); ``timeout_s`` is the ``timeout``
    the manual advertises; ``expose_errors`` sends a failing tool's exception text to
    the client; ``max_queued_calls`` bounds the calls waiting on one connection.
    """

    name: str = "antiphon_tools"
    auth: ApiKeyAuth | BasicAuth | None = None
    subprotocols: tuple[str, ...] = field(default=(), converter=tuple)
    public_url: str | None = None
    timeout_s: float = 30
    expose_errors: bool = False
    max_queued_calls: int = 16
    secret_variable: str = "ANTIPHON_TOOLS_SECRET"
    tools: dict[str, ToolSpec] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.auth, ApiKeyAuth) and not self.auth.api_key:
            raise ConfigError("auth.api_key: must not be empty")
        if self.public_url is not None:
            try:
                check_ws_url(self.public_url)
            except TemplateError as exc:
                raise ConfigError(f"public_url: {exc}") from None
        if self.max_queued_calls < 1:
            raise ConfigError(f"max_queued_calls: must be at least 1, got {self.max_queued_calls}")

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
    ) -> ToolSpec:
        """Register ``fn`` (sync, async, or an async generator that streams); raises :class:`ConfigError`."""
        spec = tool_spec(fn, name=name, description=description, inputs=inputs, outputs=outputs, tags=tags)
        if spec.name in self.tools:
            raise ConfigError(f"tools: a tool named {spec.name!r} is already registered")
        self.tools[spec.name] = spec
        return spec

    @overload
    def tool(self, fn: F, /) -> F: ...
    @overload
    def tool(self, /, *, name: str | None = ..., description: str | None = ...,
             inputs: Mapping[str, Any] | None = ..., outputs: Mapping[str, Any] | None = ...,
             tags: Sequence[str] = ...) -> Callable[[F], F]: ...  # fmt: skip

    def tool(self, fn: Any = None, /, **options: Any) -> Any:
        """Decorator form of :meth:`add`: ``@app.tool`` or ``@app.tool(name=..., description=...)``."""
        if fn is not None:
            self.add(fn, **options)
            return fn

        def register(f: F) -> F:
            self.add(f, **options)
            return f

        return register

    def manual(self, base_url: str) -> UtcpManual:
        """The manual, its tools' templates at ``base_url/tools/<name>``; raises :class:`TemplateError`."""
        base = base_url.rstrip("/")
        auth: ApiKeyAuth | BasicAuth | None = None
        secret = "${" + self.secret_variable + "}"
        if isinstance(self.auth, ApiKeyAuth):
            auth = ApiKeyAuth(api_key=secret, var_name=self.auth.var_name, location=self.auth.location)
        elif isinstance(self.auth, BasicAuth):
            auth = BasicAuth(username=self.auth.username, password=secret)
        tools = [
            Tool(
                name=spec.name,
                description=spec.description,
                inputs=spec.inputs,
                outputs=spec.outputs,
                tags=list(spec.tags),
                tool_call_template=WebSocketCallTemplate(
                    name=spec.name,
                    url=f"{base}{TOOLS_PATH}{quote(spec.name)}",
                    protocol=self.subprotocols[0] if self.subprotocols else None,
                    response_format="json",
                    timeout=self.timeout_s,
                    auth=auth,
                ),
            )
            for spec in self.tools.values()
        ]
        return UtcpManual(tools=tools)

    # ------------------------------------------------------------------ auth

    def authorized(self, request: HandshakeRequest) -> bool:
        """True when the handshake carries the credentials :attr:`auth` asks for (constant-time compare)."""
        auth = self.auth
        if auth is None:
            return True
        if isinstance(auth, BasicAuth):
            header = request.header("Authorization") or ""
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() != "basic":
                return False
            try:
                given = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            expected = f"{auth.username}:{auth.password}".encode()
            return hmac.compare_digest(given, expected)
        value: str | None
        if auth.location == "header":
            value = request.header(auth.var_name)
        elif auth.location == "query":
            query = request.target.partition("?")[2]
            value = next((v for k, v in parse_qsl(query, keep_blank_values=True) if k == auth.var_name), None)
        else:
            value = _cookie(request.header("Cookie"), auth.var_name)
        return value is not None and hmac.compare_digest(value.encode(), auth.api_key.encode())


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


class _ToolSession(SessionHandler):
    """One connection to the manual endpoint (``spec`` None) or to one tool."""

    def __init__(self, app: ToolApp, spec: ToolSpec | None, base_url: str) -> None:
        self.app = app
        self.spec = spec
        self.base_url = base_url
        self._calls_in, self._calls_out = trio.open_memory_channel[str | bytes](app.max_queued_calls)

    async def on_open(self, session: Session) -> None:
        session.nursery.start_soon(self._worker, session)

    def on_message(self, session: Session, message: str | bytes) -> None:
        try:
            self._calls_in.send_nowait(message)
        except trio.WouldBlock:
            log.warning("session %s: more than %d calls queued, closing", session.id, self.app.max_queued_calls)
            session.close(CloseCode.POLICY_VIOLATION, "too many calls queued")

    def on_close(self, session: Session) -> None:
        self._calls_in.close()

    async def _worker(self, session: Session) -> None:
        async for frame in self._calls_out:
            if self.spec is None:
                await session.send(self._discovery(frame))
            else:
                await self._call(session, self.spec, frame)

    def _discovery(self, frame: str | bytes) -> str:
        if not is_discovery_request(frame):
            return _tool_error(
                'this is the manual endpoint: send {"type": "utcp"} here, and call tools at ' + TOOLS_PATH + "<name>"
            )
        try:
            return json.dumps(encode_manual(self.app.manual(self.base_url)))
        except TemplateError as exc:
            log.error("cannot build the manual for %s: %s (set public_url)", self.base_url, exc)
            return _tool_error("the server cannot describe its tools: its public URL is not configured")

    async def _call(self, session: Session, spec: ToolSpec, frame: str | bytes) -> None:
        try:
            text = frame if isinstance(frame, str) else frame.decode("utf-8")
            args = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError):
            await session.send(_tool_error("the arguments are not JSON text"))
            return
        try:
            kwargs = bind_arguments(spec, args)
        except ArgumentError as exc:
            await session.send(_tool_error(f"bad arguments: {exc}"))
            return
        if spec.kind == "stream":
            await self._stream(session, spec, kwargs)
            return
        try:
            if spec.kind == "async":
                result = await spec.fn(**kwargs)
            else:
                result = await trio.to_thread.run_sync(functools.partial(spec.fn, **kwargs), abandon_on_cancel=True)
        except Exception as exc:
            await session.send(self._failure(session, spec, exc))
            return
        await session.send(_result_text(spec, result))

    async def _stream(self, session: Session, spec: ToolSpec, kwargs: dict[str, Any]) -> None:
        try:
            async with aclosing(spec.fn(**kwargs)) as results:
                async for item in results:
                    try:
                        text = json.dumps({"type": "tool_response", "result": item}, allow_nan=False)
                    except (TypeError, ValueError):
                        await session.send(_tool_error("the tool produced a value that is not JSON"))
                        return
                    await session.send(text)
        except Exception as exc:
            await session.send(self._failure(session, spec, exc))
            return
        await session.send(STREAM_END)

    def _failure(self, session: Session, spec: ToolSpec, exc: Exception) -> str:
        log.exception("session %s: tool %r failed", session.id, spec.name, exc_info=exc)
        if self.app.expose_errors:
            return _tool_error(f"{type(exc).__name__}: {exc}")
        return _tool_error(f"the tool raised {type(exc).__name__}")


def _result_text(spec: ToolSpec, result: Any) -> str:
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError):
        log.error("tool %r returned a %s, which is not JSON", spec.name, type(result).__name__)
        return _tool_error("the tool returned a value that is not JSON")


class ToolServer(SessionServer):
    """A :class:`SessionServer` serving a :class:`ToolApp`; see the module docstring for the layout."""

    def __init__(self, app: ToolApp, config: ServerConfig | None = None, session_config: SessionConfig | None = None):
        self.app = app
        super().__init__(self._route, config, session_config)

    def _base_url(self, request: HandshakeRequest) -> str:
        if self.app.public_url is not None:
            return self.app.public_url
        host = request.header("Host")
        if host:
            try:
                return check_ws_url(f"ws://{host}")
            except TemplateError:
                pass
        try:
            return self.url
        except RuntimeError:  # serving a stream, no listener
            return "ws://127.0.0.1"

    def _route(self, request: HandshakeRequest, *, full: bool) -> Accept | Reject:
        if not self.app.authorized(request):
            log.info("handshake from %s: missing or wrong credentials", request.remote)
            challenge = ((b"WWW-Authenticate", b'Basic realm="antiphon-tools"'),)
            headers = challenge if isinstance(self.app.auth, BasicAuth) else ()
            return Reject(401, b"missing or wrong credentials\n", headers)
        path = request.path
        spec: ToolSpec | None = None
        if path.startswith(TOOLS_PATH):
            name = unquote(path[len(TOOLS_PATH) :])
            spec = self.app.tools.get(name)
            if spec is None:
                return Reject(404, f"no tool named {name!r}\n".encode("utf-8", "replace"))
        elif path not in MANUAL_PATHS:
            return Reject(404, b"not a tool path: call tools at /tools/<name>, discover at /utcp\n")
        if full:
            return Reject(503, b"the server is at capacity; try again later\n")
        subprotocol = next((p for p in request.subprotocols if p in self.app.subprotocols), None)
        return Accept(_ToolSession(self.app, spec, self._base_url(request)), subprotocol=subprotocol)


async def serve_tools(
    app: ToolApp,
    config: ServerConfig | None = None,
    session_config: SessionConfig | None = None,
    *,
    task_status: trio.TaskStatus[ToolServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled or shut down.

    ``server = await nursery.start(serve_tools, app)`` returns once listening;
    ``server.url`` says where, ``await server.shutdown()`` stops it gracefully.
    """
    await ToolServer(app, config, session_config).run(task_status=task_status)
