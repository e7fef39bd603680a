"""The gateway's configuration file (TOML), decoded with located errors.

::

    host = "127.0.0.1"          # everything at the top level is optional
    port = 8765
    shutdown_grace = 10         # seconds running turns get on SIGINT/SIGTERM
    max_connections = 10000
    ping_interval = 20
    ping_timeout = 20
    max_message_size = 1048576
    store = "~/.local/state/antiphon/transcripts.db"   # or "postgresql://...", "memory", "none"
    retention_days = 30         # transcripts idle longer are deleted; 0 keeps them forever

    [[connectors]]
    path = "/support"
    secret_env = "SUPPORT_SECRET"      # or secret = "..."; neither: one is generated
    agent = "mypkg.agents:support"     # or agents = { name = "module:function", ... }
    streaming = true
    session_timeout = 3600
    max_messages = 100
    resume_grace = 60           # seconds a dropped run keeps going, waiting for a resume

A file without ``[[connectors]]`` mounts one connector at ``/`` with the demo agent.
"""

from __future__ import annotations

import secrets
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from attrs import field, frozen

from antiphon.chat.agents import DEMO_AGENT_SPEC, Agent, load_agent
from antiphon.chat.gateway import Connector
from antiphon.chat.store import (
    POSTGRES_SCHEMES,
    PostgresUrl,
    StoreLocation,
    default_store_path,
)
from antiphon.engine.server import ServerConfig
from antiphon.engine.session import SessionConfig
from antiphon.errors import ConfigError, DecodeError
from antiphon.proto._codec import make_converter, structure
from antiphon.proto.chat.settings import MAX_REPLY_BYTES, REPLAY_MAX_BYTES, ChatSettings

__all__ = ["ConnectorSpec", "GatewaySetup", "GatewaySpec", "build", "load_file", "store_location"]

SECRET_BYTES = 24
"""A generated secret carries 24 random bytes (32 URL-safe characters)."""


@frozen(kw_only=True)
class ConnectorSpec:
    """One ``[[connectors]]`` table, as written."""

    path: str = "/"
    secret: str | None = None
    secret_env: str | None = None
    require_auth: bool = True
    streaming: bool = True
    session_timeout: float = 3600.0
    max_messages: int = 100
    auth_timeout: float = 10.0
    max_queued_turns: int = 16
    resume_grace: float = 60.0
    max_reply_bytes: int = MAX_REPLY_BYTES
    history_max_chars: int = 1_000_000
    replay_max_bytes: int = REPLAY_MAX_BYTES
    agent: str | None = None
    agents: dict[str, str] | None = None


@frozen(kw_only=True)
class GatewaySpec:
    """The whole file, as written."""

    host: str = "127.0.0.1"
    port: int = 8765
    shutdown_grace: float = 10.0
    max_connections: int = 10_000
    max_message_size: int = 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    store: str | None = None
    retention_days: float = 30.0
    connectors: list[ConnectorSpec] = field(factory=lambda: [ConnectorSpec()])


@frozen
class GatewaySetup:
    """What :func:`build` makes of a spec: ready to hand to :func:`~antiphon.chat.serve_chat`."""

    server: ServerConfig
    session: SessionConfig
    connectors: list[Connector]
    generated_secrets: dict[str, str]
    """Secrets made up for connectors that had none, by path: print them for the operator."""
    store: StoreLocation | None
    """Where transcripts go: a SQLite file, a PostgreSQL URL, ``"memory"``, or None for nowhere."""
    retention_s: float | None


_converter = make_converter()
_converter.register_structure_hook_func(lambda tp: tp == dict[str, str], lambda v, _: _string_table(v))


def _string_table(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("expected a table of strings")
    return value


def load_file(path: str | Path) -> GatewaySpec:
    """Read and decode a TOML config file; raise :class:`ConfigError` naming the file and the field."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    try:
        return structure(_converter, doc, GatewaySpec)
    except DecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def build(
    spec: GatewaySpec,
    environ: Mapping[str, str],
    *,
    load: Callable[[str], Agent] = load_agent,
) -> GatewaySetup:
    """Turn a spec into server settings and connectors: resolve secrets, import agents, check ranges."""
    server = ServerConfig(
        host=spec.host,
        port=spec.port,
        max_connections=spec.max_connections,
        max_message_size=spec.max_message_size,
        shutdown_grace_s=spec.shutdown_grace,
    )
    session = SessionConfig(ping_interval_s=spec.ping_interval, ping_timeout_s=spec.ping_timeout)
    connectors, generated = [], {}
    for i, c in enumerate(spec.connectors):
        where = f"connectors[{i}]"
        secret = c.secret
        if secret is None and c.secret_env is not None:
            secret = environ.get(c.secret_env)
            if not secret:
                raise ConfigError(f"{where}.secret_env: environment variable {c.secret_env!r} is not set")
        if c.require_auth and not secret:
            secret = secrets.token_urlsafe(SECRET_BYTES)
            generated[c.path] = secret
        if c.agent is not None and c.agents is not None:
            raise ConfigError(f"{where}: give either agent or agents, not both")
        specs = c.agents if c.agents is not None else {"assistant": c.agent or DEMO_AGENT_SPEC}
        try:
            agents = {name: load(target) for name, target in specs.items()}
            settings = ChatSettings(
                require_auth=c.require_auth,
                secret=secret,
                streaming=c.streaming,
                session_timeout_s=c.session_timeout,
                max_messages=c.max_messages,
                auth_timeout_s=c.auth_timeout,
                max_queued_turns=c.max_queued_turns,
                resume_grace_s=c.resume_grace,
                max_reply_bytes=c.max_reply_bytes,
                history_max_chars=c.history_max_chars,
                replay_max_bytes=c.replay_max_bytes,
            )
            connectors.append(Connector(settings=settings, agents=agents, path=c.path))
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    if spec.retention_days < 0:
        raise ConfigError(f"retention_days: must not be negative, got {spec.retention_days:g}")
    retention = spec.retention_days * 86_400 if spec.retention_days else None
    return GatewaySetup(server, session, connectors, generated, store_location(spec.store), retention)


def store_location(value: str | None) -> StoreLocation | None:
    """Where ``store = ...`` (or ``--store``) points: None means the default file."""
    if value is None:
        return default_store_path()
    if value in ("none", ""):
        return None
    if value == "memory":
        return "memory"
    if value.startswith(POSTGRES_SCHEMES):
        return PostgresUrl(value)
    return Path(value).expanduser()
