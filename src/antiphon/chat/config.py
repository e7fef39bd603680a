"""The gateway's configuration: TOML keys, or ``antiphon serve`` flags, structured into the library's own settings.

::

    host = "127.0.0.1"          # top level: ServerConfig and SessionConfig fields, all optional
    port = 8765
    shutdown_grace = 10
    ping_interval = 20
    store = "~/.local/state/antiphon/transcripts.db"   # or "postgresql://...", "memory", "none"
    retention_days = 30         # transcripts idle longer are deleted; 0 keeps them forever
    runs = "memory"             # or "redis://host:6379/0": runs shared between processes
    lease_ttl = 10              # a dead process's runs are taken over after this
    workers = 1                 # worker processes on one port (more than one needs shared runs)
    certfile = "/etc/antiphon/cert.pem"   # serve wss://; keyfile too unless the key is in it
    keyfile = "/etc/antiphon/key.pem"
    metrics = true              # GET /metrics on the same port

    [[connectors]]              # each: ChatSettings fields, plus where and what it serves
    path = "/support"
    secret_env = "SUPPORT_SECRET"      # or secret = "..."; neither: one is generated
    agent = "mypkg.agents:support"     # or agents = { name = "module:function", ... }
    session_timeout = 3600

Theory of operation
-------------------
Every key is a field of a settings class, named as the field without its unit suffix
(``session_timeout_s`` is written ``session_timeout``):

* the top level holds the fields of :class:`~antiphon.engine.server.ServerConfig`,
  :class:`~antiphon.engine.session.SessionConfig`,
  :class:`~antiphon.chat.backends.RunsSettings` and
  :class:`~antiphon.workers.WorkerSettings`, and the file's own keys ``store``,
  ``retention_days``, ``certfile``, ``keyfile`` (made into ``ServerConfig.ssl``) and
  ``connectors``;
* a ``[[connectors]]`` table holds the fields of
  :class:`~antiphon.proto.chat.settings.ChatSettings`, the connector's ``path``, and its own
  ``secret_env`` and ``agent`` / ``agents``.

Each table is split by the class that owns each key, and each part is structured by cattrs
straight into that class (renamed keys, extra keys forbidden): the defaults, the type checks
and the range checks are the classes' own, so a field added to one of them is a key at once.
A field whose type TOML cannot spell (an ``ssl.SSLContext``) is not a key. A key that belongs
to no class is an error naming the nearest valid one. The CLI turns its flags into the same
document, so a flag and its key cannot drift apart. A file without ``[[connectors]]`` mounts
one connector at ``/`` with the demo agent.
"""

from __future__ import annotations

import difflib
import re
import secrets
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, Union

import attrs
import cattrs
from attrs import field, frozen
from cattrs.gen import make_dict_structure_fn, override

from antiphon.chat.agents import DEMO_AGENT_SPEC, Agent, load_agent
from antiphon.chat.backends import RunsSettings
from antiphon.chat.gateway import Connector
from antiphon.chat.store import (
    POSTGRES_SCHEMES,
    PostgresUrl,
    StoreLocation,
    default_store_path,
)
from antiphon.engine.server import ServerConfig
from antiphon.engine.session import SessionConfig
from antiphon.engine.tls import server_context
from antiphon.errors import ConfigError
from antiphon.proto._codec import decode_error, make_converter
from antiphon.proto.chat.settings import ChatSettings
from antiphon.workers import WorkerSettings

__all__ = [
    "CONNECTOR_KEYS",
    "SECRET_BYTES",
    "TOP_LEVEL_KEYS",
    "UNIT_SUFFIXES",
    "GatewaySetup",
    "build",
    "load_file",
    "read_file",
    "store_location",
    "toml_key",
]

SECRET_BYTES: Final = 24
"""A generated secret carries 24 random bytes (32 URL-safe characters)."""

UNIT_SUFFIXES: Final = ("_s",)
"""Suffixes a field name carries and its TOML key does not (``session_timeout_s`` -> ``session_timeout``)."""


@frozen(kw_only=True)
class _TopLevelKeys:
    """The top level's own keys: the gateway's, not any settings class's."""

    store: str | None = None
    retention_days: float = 30.0
    certfile: str | None = None
    keyfile: str | None = None
    connectors: list[dict[str, Any]] = field(factory=lambda: [{}])


@frozen(kw_only=True)
class _ConnectorKeys:
    """A connector table's own keys; ``path=None`` leaves :class:`Connector`'s default."""

    path: str | None = None
    secret_env: str | None = None
    agent: str | None = None
    agents: dict[str, str] | None = None


@frozen
class GatewaySetup:
    """What :func:`build` makes of a document: ready to hand to :class:`~antiphon.chat.ChatGateway`."""

    server: ServerConfig
    session: SessionConfig
    connectors: list[Connector]
    generated_secrets: dict[str, str]
    """Secrets made up for connectors that had none, by path: print them for the operator."""
    store: StoreLocation | None
    """Where transcripts go: a SQLite file, a PostgreSQL URL, ``"memory"``, or None for nowhere."""
    retention_s: float | None
    runs: RunsSettings = RunsSettings()
    """Where runs are shared between processes (``memory``: not at all)."""
    workers: WorkerSettings = WorkerSettings()


def toml_key(field_name: str) -> str:
    """The TOML key (and, with dashes, the flag) of a settings field: its name without a unit suffix."""
    for suffix in UNIT_SUFFIXES:
        if field_name.endswith(suffix):
            return field_name[: -len(suffix)]
    return field_name


_DEFAULT_PATH: Final = str(attrs.fields(Connector).path.default)
_SCALARS: Final = (str, int, float, bool, type(None))


def _toml_can_spell(tp: Any) -> bool:
    if tp in _SCALARS or tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or isinstance(tp, types.UnionType):
        return all(_toml_can_spell(a) for a in args)
    if origin is list:
        return all(_toml_can_spell(a) for a in args)
    if origin is dict:
        return bool(args) and args[0] is str and _toml_can_spell(args[1])
    return False


def _fields(cls: type) -> dict[str, str]:
    """TOML key -> field name, for the fields of ``cls`` that TOML can spell."""
    hints = typing.get_type_hints(cls)
    return {toml_key(f.name): f.name for f in attrs.fields(cls) if f.init and _toml_can_spell(hints[f.name])}


_converter = make_converter()
_converter.register_structure_hook_func(lambda tp: tp == dict[str, str], lambda v, _: _string_table(v))
_converter.register_structure_hook_func(lambda tp: tp == list[dict[str, Any]], lambda v, _: _list_of_tables(v))


def _string_table(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("expected a table of strings")
    return value


def _list_of_tables(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("expected an array of tables ([[connectors]])")
    return value


def _register(cls: type) -> dict[str, str]:
    keys = _fields(cls)
    spelled = set(keys.values())
    overrides = {
        f.name: override(omit=True) if f.name not in spelled else override(rename=toml_key(f.name))
        for f in attrs.fields(cls)
        if f.name not in spelled or toml_key(f.name) != f.name
    }
    hook: Callable[[Mapping[str, Any], Any], Any] = make_dict_structure_fn(
        cls,
        _converter,
        _cattrs_forbid_extra_keys=True,
        **overrides,  # type: ignore[arg-type]
    )
    _converter.register_structure_hook(cls, hook)
    return keys


def _owners(*classes: type) -> dict[str, type]:
    owners: dict[str, type] = {}
    for cls in classes:
        for key in _register(cls):
            if key in owners:
                raise TypeError(f"config key {key!r} is a field of both {owners[key].__name__} and {cls.__name__}")
            owners[key] = cls
    return owners


_TOP_LEVEL: Final = _owners(ServerConfig, SessionConfig, RunsSettings, WorkerSettings, _TopLevelKeys)
_CONNECTOR: Final = _owners(ChatSettings, _ConnectorKeys)

TOP_LEVEL_KEYS: Final = tuple(_TOP_LEVEL)
"""Every key the top level of the file accepts."""
CONNECTOR_KEYS: Final = tuple(_CONNECTOR)
"""Every key a ``[[connectors]]`` table accepts."""


def read_file(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML file; raise :class:`ConfigError` naming the file when it cannot."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None


def load_file(
    path: str | Path, environ: Mapping[str, str], *, load: Callable[[str], Agent] = load_agent
) -> GatewaySetup:
    """:func:`read_file`, then :func:`build`; every error names the file."""
    return build(read_file(path), environ, source=str(path), load=load)


def build(
    doc: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    source: str | None = None,
    load: Callable[[str], Agent] = load_agent,
) -> GatewaySetup:
    """Structure a configuration document: settings, secrets, agents, connectors.

    ``doc`` is a parsed TOML file or the CLI's flags in the same shape. Raises
    :class:`ConfigError` naming the key (``connectors[0].max_messages: ...``), prefixed by
    ``source`` when given.
    """
    try:
        return _build(doc, environ, load)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None


def _build(doc: Mapping[str, Any], environ: Mapping[str, str], load: Callable[[str], Agent]) -> GatewaySetup:
    parts = _split(doc, _TOP_LEVEL, "")
    server = _structure(ServerConfig, parts[ServerConfig], "")
    session = _structure(SessionConfig, parts[SessionConfig], "")
    runs = _structure(RunsSettings, parts[RunsSettings], "")
    workers = _structure(WorkerSettings, parts[WorkerSettings], "")
    if workers.workers > 1 and not runs.shared:
        raise ConfigError(
            f'workers: {workers.workers} workers need shared runs (runs = "redis://..."):'
            " a resume may land on any worker"
        )
    own = _structure(_TopLevelKeys, parts[_TopLevelKeys], "")
    if own.retention_days < 0:
        raise ConfigError(f"retention_days: must not be negative, got {own.retention_days:g}")
    if own.keyfile is not None and own.certfile is None:
        raise ConfigError("keyfile: give certfile too")
    if own.certfile is not None:
        # Checked now: a bad certificate is a start-up error, not a failure at the first client.
        server = attrs.evolve(server, ssl=server_context(Path(own.certfile).expanduser(), _path(own.keyfile)))
    connectors: list[Connector] = []
    generated: dict[str, str] = {}
    for i, table in enumerate(own.connectors):
        connectors.append(_connector(table, f"connectors[{i}].", environ, load, generated))
    retention = own.retention_days * 86_400 if own.retention_days else None
    return GatewaySetup(server, session, connectors, generated, store_location(own.store), retention, runs, workers)


def _connector(
    table: Mapping[str, Any],
    where: str,
    environ: Mapping[str, str],
    load: Callable[[str], Agent],
    generated: dict[str, str],
) -> Connector:
    parts = _split(table, _CONNECTOR, where)
    own = _structure(_ConnectorKeys, parts[_ConnectorKeys], where)
    settings = dict(parts[ChatSettings])
    if own.secret_env is not None:
        if "secret" in settings:
            raise ConfigError(f"{where}secret_env: give either secret or secret_env, not both")
        value = environ.get(own.secret_env)
        if not value:
            raise ConfigError(f"{where}secret_env: environment variable {own.secret_env!r} is not set")
        settings["secret"] = value
    require_auth = settings.get("require_auth", attrs.fields(ChatSettings).require_auth.default)
    if require_auth is not False and not settings.get("secret"):
        settings["secret"] = secrets.token_urlsafe(SECRET_BYTES)
        generated[own.path or _DEFAULT_PATH] = settings["secret"]
    chat_settings = _structure(ChatSettings, settings, where)
    if own.agent is not None and own.agents is not None:
        raise ConfigError(f"{where.rstrip('.')}: give either agent or agents, not both")
    try:
        agents = _load_agents(own, load)
        if own.path is None:
            return Connector(settings=chat_settings, agents=agents)
        return Connector(settings=chat_settings, agents=agents, path=own.path)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def _load_agents(own: _ConnectorKeys, load: Callable[[str], Agent]) -> dict[str, Agent]:
    if own.agents is None:
        return {"assistant": load(own.agent or DEMO_AGENT_SPEC)}  # its errors read "agent: ..."
    agents = {}
    for name, target in own.agents.items():
        try:
            agents[name] = load(target)
        except ConfigError as exc:
            raise ConfigError(f"agents.{name}: {str(exc).removeprefix('agent: ')}") from None
    return agents


def _split(table: Mapping[str, Any], owners: Mapping[str, type], where: str) -> dict[type, dict[str, Any]]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where.rstrip('.') or 'the document'}: expected a table")
    parts: dict[type, dict[str, Any]] = {cls: {} for cls in owners.values()}
    unknown = []
    for key, value in table.items():
        owner = owners.get(key)
        if owner is None:
            unknown.append(_unknown(key, owners))
        else:
            parts[owner][key] = value
    if unknown:
        raise ConfigError(f"{where.rstrip('.') + ': ' if where else ''}{'; '.join(unknown)}")
    return parts


def _unknown(key: str, owners: Mapping[str, type]) -> str:
    close = difflib.get_close_matches(key, list(owners), n=1)
    if close:
        return f"unknown key {key!r} (did you mean {close[0]!r}?)"
    return f"unknown key {key!r} (valid keys: {', '.join(sorted(owners))})"


_T = TypeVar("_T")
_FIELD_PATH: Final = re.compile(r"\$\.([A-Za-z_]\w*)(.*)")


def _structure(cls: type[_T], values: Mapping[str, Any], where: str) -> _T:
    try:
        return _converter.structure(values, cls)
    except cattrs.ClassValidationError as exc:
        for inner in exc.exceptions:
            if isinstance(inner, ConfigError):  # the class's own range check
                raise ConfigError(f"{where}{inner}") from None
        messages = []
        for line in decode_error(exc).errors:
            path, _, problem = line.partition(": ")
            match = _FIELD_PATH.fullmatch(path)
            located = f"{toml_key(match[1])}{match[2]}" if match else path
            messages.append(f"{where}{located}: {problem}")
        raise ConfigError("; ".join(messages)) from None
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value is not None else None


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
