"""What a tool server serves: :class:`ToolApp`, its tools, their manual, and who may call them.

::

    app = ToolApp(auth=ApiKeyAuth(api_key="s3cret"))

    @app.tool
    def add(a: int, b: int) -> int:
        "Add two integers."
        return a + b

    @app.tool(timeout_s=5)
    def lookup(city: str) -> dict:
        if city not in CITIES:
            raise ToolError(f"city not found: {city}")   # this text reaches the caller
        return CITIES[city]

A :class:`ToolApp` is configuration only (attrs, no I/O): the :class:`~antiphon.tools.ToolServer`
serves it. Settings and the bounds they put on one server:

* ``call_timeout_s`` (60 s; per tool with ``@app.tool(timeout_s=...)``): a call that has not
  answered in time gets ``tool_error`` ("did not answer within 60 s") and its connection
  takes the next call. An async tool is cancelled; a streaming tool gets the bound for
  each result (the first included). **A sync tool cannot be cancelled**: Python has no way
  to stop a thread, so one that ignores the timeout keeps running, and keeps its worker
  thread, until it returns by itself.
* ``max_threads`` (40) and ``max_threads_per_tool`` (16): sync tools run in worker threads
  from the server's own pool (not Trio's process-wide default limiter, which DNS lookups
  share), and one tool may hold at most ``max_threads_per_tool`` of them. So a tool whose
  calls hang can exhaust only its own share: other tools keep answering, and calls
  waiting for a thread still get their ``tool_error`` at the timeout.
* ``max_reply_bytes`` (4 MiB, the frame limit of aiohttp and so of UTCP clients, and of
  antiphon's tool client): a result, streamed item or error text whose frame would be
  bigger is answered with ``tool_error`` instead; the client would refuse the frame anyway.
* ``max_queued_calls`` (16): calls waiting behind the running one on a connection; one
  more closes the connection with 1008.

Errors: a tool raises :class:`~antiphon.errors.ToolError` to fail with a message for the
caller, sent as it is. Any other exception is reported by its *type* only (``the tool
raised KeyError``), because exception text can hold paths, keys and queries, unless
``expose_errors`` is set. Bad arguments name the argument and the problem.

The manual's templates never carry the secret: where the key or the password goes they
say ``${ANTIPHON_TOOLS_SECRET}`` (:data:`SECRET_VARIABLE`), for the client to fill from its
variables. (A UTCP client namespaces variables by manual name: in a manual it registered
as ``antiphon`` it looks up ``antiphon_ANTIPHON_TOOLS_SECRET``.)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
from collections.abc import Callable, Mapping, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final, TypeVar, overload
from urllib.parse import parse_qsl, quote

import attrs
from attrs import define, field

from antiphon.engine.server import HandshakeRequest
from antiphon.errors import ConfigError, TemplateError
from antiphon.proto.utcp.templates import (
    DEFAULT_TIMEOUT_S,
    ApiKeyAuth,
    BasicAuth,
    Tool,
    UtcpManual,
    WebSocketCallTemplate,
)
from antiphon.proto.utcp.urls import check_ws_url
from antiphon.tools.schema import ToolSpec, tool_spec

__all__ = [
    "CALL_TIMEOUT_S",
    "MANUAL_PATHS",
    "MANUAL_TIMEOUT_MARGIN_S",
    "MAX_REPLY_BYTES",
    "MAX_THREADS",
    "MAX_THREADS_PER_TOOL",
    "SECRET_VARIABLE",
    "TOOLS_PATH",
    "ToolApp",
]

MANUAL_PATHS: Final = ("/", "/utcp")
"""Where ``{"type": "utcp"}`` is answered with the manual."""

TOOLS_PATH: Final = "/tools/"
"""Tool ``x`` is called at ``/tools/x``."""

SECRET_VARIABLE: Final = "ANTIPHON_TOOLS_SECRET"
"""The one name of the tool secret: the manual's ``${...}``, and the CLI's environment variable."""

CALL_TIMEOUT_S: Final = 60.0
"""Default bound on one call: long enough for slow I/O-bound tools, short enough that a hung one is noticed."""

MANUAL_TIMEOUT_MARGIN_S: Final = 5
"""The manual advertises each tool's call timeout plus this, so a client hears our tool_error before it gives up."""

MAX_THREADS: Final = 40
"""Worker threads for sync tools, per server: Trio's default count, but a pool of the server's own."""

MAX_THREADS_PER_TOOL: Final = 16
"""Threads one sync tool may hold: a tool whose calls hang leaves the rest of the pool to the others."""

MAX_REPLY_BYTES: Final = 4 * 1024 * 1024
"""Largest reply frame: aiohttp's (so UTCP's) default max_msg_size, and antiphon's client's."""

F = TypeVar("F", bound=Callable[..., Any])


def _positive_or_none(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not value > 0):
        raise ConfigError(f"{name}: must be a positive number of seconds (or None), got {value!r}")


@define(kw_only=True)
class ToolApp:
    """A set of tools and how to serve them; add tools with :meth:`tool` or :meth:`add`.

    ``name`` names the manual; ``auth`` is required of every client (None: open);
    ``subprotocols`` are accepted in the client's order of preference and the first is
    advertised in the manual; ``public_url`` is the base URL the manual's templates use
    (``wss://tools.example.com`` behind a TLS proxy; without it the request's ``Host``
    header decides, see :class:`~antiphon.tools.ToolServer`); ``timeout_s`` overrides the
    ``timeout`` the manual advertises (default: each tool's call timeout plus
    :data:`MANUAL_TIMEOUT_MARGIN_S`, or UTCP's 30 s for a tool without one);
    ``expose_errors`` sends a failing tool's exception text to the client. The bounds
    (``call_timeout_s``, ``max_threads``, ``max_threads_per_tool``, ``max_reply_bytes``,
    ``max_queued_calls``) are described in the module docstring. Raises
    :class:`ConfigError` for a setting out of range.
    """

    name: str = "antiphon_tools"
    auth: ApiKeyAuth | BasicAuth | None = None
    subprotocols: tuple[str, ...] = field(default=(), converter=tuple)
    public_url: str | None = None
    timeout_s: float | None = None
    call_timeout_s: float | None = CALL_TIMEOUT_S
    expose_errors: bool = False
    max_queued_calls: int = 16
    max_threads: int = MAX_THREADS
    max_threads_per_tool: int = MAX_THREADS_PER_TOOL
    max_reply_bytes: int = MAX_REPLY_BYTES
    secret_variable: str = SECRET_VARIABLE
    tools: dict[str, ToolSpec] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.auth, ApiKeyAuth) and not self.auth.api_key:
            raise ConfigError("auth.api_key: must not be empty")
        if self.public_url is not None:
            try:
                check_ws_url(self.public_url)
            except TemplateError as exc:
                raise ConfigError(f"public_url: {exc}") from None
        _positive_or_none("timeout_s", self.timeout_s)
        _positive_or_none("call_timeout_s", self.call_timeout_s)
        for name in ("max_queued_calls", "max_threads", "max_threads_per_tool", "max_reply_bytes"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name}: must be at least 1, got {value}")

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> ToolSpec:
        """Register ``fn`` (sync, async, or an async generator that streams); raises :class:`ConfigError`.

        ``timeout_s`` replaces the app's ``call_timeout_s`` for this tool (``math.inf``:
        no bound).
        """
        _positive_or_none("timeout_s", timeout_s)
        spec = tool_spec(fn, name=name, description=description, inputs=inputs, outputs=outputs, tags=tags)
        if spec.name in self.tools:
            raise ConfigError(f"tools: a tool named {spec.name!r} is already registered")
        spec = attrs.evolve(spec, timeout_s=timeout_s)
        self.tools[spec.name] = spec
        return spec

    @overload
    def tool(self, fn: F, /) -> F: ...
    @overload
    def tool(self, /, *, name: str | None = ..., description: str | None = ...,
             inputs: Mapping[str, Any] | None = ..., outputs: Mapping[str, Any] | None = ...,
             tags: Sequence[str] = ..., timeout_s: float | None = ...) -> Callable[[F], F]: ...  # fmt: skip

    def tool(self, fn: Any = None, /, **options: Any) -> Any:
        """Decorator form of :meth:`add`: ``@app.tool`` or ``@app.tool(name=..., timeout_s=...)``."""
        if fn is not None:
            self.add(fn, **options)
            return fn

        def register(f: F) -> F:
            self.add(f, **options)
            return f

        return register

    def call_timeout(self, spec: ToolSpec) -> float | None:
        """The bound on one call of ``spec`` in seconds; None when it has none."""
        timeout = spec.timeout_s if spec.timeout_s is not None else self.call_timeout_s
        return None if timeout is None or math.isinf(timeout) else timeout

    def advertised_timeout(self, spec: ToolSpec) -> int | float:
        """The ``timeout`` the manual gives ``spec``'s template (an int unless ``timeout_s`` says otherwise)."""
        if self.timeout_s is not None:
            return self.timeout_s
        bound = self.call_timeout(spec)
        # UTCP's template takes whole seconds only: round up, then leave room for our reply.
        return DEFAULT_TIMEOUT_S if bound is None else math.ceil(bound) + MANUAL_TIMEOUT_MARGIN_S

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
                    timeout=self.advertised_timeout(spec),
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
