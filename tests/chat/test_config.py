"""The gateway's TOML configuration: structured straight into the library's settings classes."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import attrs
import pytest

from antiphon.chat import config
from antiphon.chat.config import (
    CONNECTOR_KEYS,
    TOP_LEVEL_KEYS,
    build,
    load_file,
    toml_key,
)
from antiphon.engine.server import ServerConfig
from antiphon.engine.session import SessionConfig
from antiphon.errors import ConfigError
from antiphon.proto.chat.settings import ChatSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_unknown_top_level_key_names_the_nearest_valid_one(tmp_path: Path) -> None:
    """`prot = 9999` is refused, naming the file, the key and `port`, instead of starting on defaults."""
    path = _file(tmp_path, "prot = 9999\n")
    with pytest.raises(ConfigError) as info:
        load_file(path, {})
    assert str(info.value) == f"{path}: unknown key 'prot' (did you mean 'port'?)"


def test_unknown_connector_key_names_the_connector_and_the_nearest_key(tmp_path: Path) -> None:
    """`max_mesages = 5` in the second connector is refused with its place and `max_messages`."""
    path = _file(tmp_path, '[[connectors]]\nsecret = "a"\n[[connectors]]\npath = "/b"\nmax_mesages = 5\n')
    with pytest.raises(ConfigError) as info:
        load_file(path, {})
    assert str(info.value) == f"{path}: connectors[1]: unknown key 'max_mesages' (did you mean 'max_messages'?)"


def test_a_key_like_no_other_lists_the_valid_ones() -> None:
    """With no close match, the error lists every valid key of that table."""
    with pytest.raises(ConfigError) as info:
        build({"connectors": [{"xyzzy": 1}]}, {})
    assert str(info.value) == f"connectors[0]: unknown key 'xyzzy' (valid keys: {', '.join(sorted(CONNECTOR_KEYS))})"


def test_wrong_types_are_located_by_their_key(tmp_path: Path) -> None:
    """A wrongly typed value is reported at its key, by its TOML name, every one of them."""
    path = _file(tmp_path, 'ping_interval = "often"\n[[connectors]]\npath = "/a"\nmax_messages = "lots"\n')
    with pytest.raises(ConfigError) as info:
        load_file(path, {})
    assert str(info.value) == f"{path}: ping_interval: expected a number, got a string"
    with pytest.raises(ConfigError) as info:
        build({"connectors": [{"session_timeout": "long", "streaming": 1}]}, {})
    assert str(info.value) == (
        "connectors[0].streaming: expected a boolean, got an integer; "
        "connectors[0].session_timeout: expected a number, got a string"
    )


def test_ranges_are_the_settings_classes_own_checks() -> None:
    """An out-of-range value fails with the settings class's own message, located."""
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.session_timeout: must be between 60 and 86400 seconds, got 5$"):
        build({"connectors": [{"secret": "s", "session_timeout": 5}]}, {})
    with pytest.raises(ConfigError, match=r"^port: must be between 0 and 65535, got 70000$"):
        build({"port": 70000}, {})
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.path: must start with '/', got 'a'$"):
        build({"connectors": [{"path": "a"}]}, {})


def test_defaults_are_the_library_classes_own() -> None:
    """An empty document gives exactly the classes' defaults: there is no second copy of them."""
    setup = build({}, {})
    (conn,) = setup.connectors
    assert setup.server == ServerConfig()
    assert setup.session == SessionConfig()
    assert conn.settings == ChatSettings(secret=conn.settings.secret)
    assert conn.path == "/" and tuple(conn.agents) == ("assistant",)
    assert setup.generated_secrets == {"/": conn.settings.secret} and len(conn.settings.secret or "") == 32


def _other(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}x"


@pytest.mark.parametrize("cls", [ServerConfig, SessionConfig, ChatSettings])
def test_every_settings_field_is_a_key_that_reaches_it(cls: type) -> None:
    """Each field of the settings classes is a key (unit suffix dropped) whose value lands in that field.

    Generic over the fields, so a field added to a class is covered the day it is added.
    """
    top = cls is not ChatSettings
    keys = TOP_LEVEL_KEYS if top else CONNECTOR_KEYS
    for f in attrs.fields(cls):
        if f.default is None or f.name == "secret":
            continue
        key = toml_key(f.name)
        assert key in keys, f"{cls.__name__}.{f.name} is not a config key"
        value = _other(f.default)
        table = {key: value} if top else {"connectors": [{"secret": "s", key: value}]}
        setup = build(table, {})
        got = {ServerConfig: setup.server, SessionConfig: setup.session, ChatSettings: setup.connectors[0].settings}[cls]
        assert getattr(got, f.name) == value, key


def test_only_fields_toml_can_spell_are_keys() -> None:
    """A field TOML cannot express (an SSL context) is not a key; scalars, lists and string tables are."""

    @attrs.frozen
    class WithContext:
        ssl: ssl.SSLContext | None = None
        certfile: str | None = None
        timeout_s: float = 1.0
        names: list[str] = attrs.field(factory=list)
        labels: dict[str, str] = attrs.field(factory=dict)

    assert config._fields(WithContext) == {"certfile": "certfile", "timeout": "timeout_s", "names": "names", "labels": "labels"}


def test_secret_env_is_read_and_may_not_be_missing_or_doubled() -> None:
    """secret_env takes the secret from the environment; unset, or given beside secret, it is an error."""
    setup = build({"connectors": [{"secret_env": "B_SECRET"}]}, {"B_SECRET": "two"})
    assert setup.connectors[0].settings.secret == "two" and setup.generated_secrets == {}
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.secret_env: environment variable 'NOPE' is not set$"):
        build({"connectors": [{"secret_env": "NOPE"}]}, {})
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.secret_env: give either secret or secret_env, not both$"):
        build({"connectors": [{"secret_env": "B_SECRET", "secret": "s"}]}, {"B_SECRET": "two"})


def test_several_connectors_with_their_own_agents(tmp_path: Path) -> None:
    """Two connectors with their own paths, secrets and agents; an agent that cannot load is named by its key."""
    setup = load_file(
        _file(
            tmp_path,
            'port = 0\n[[connectors]]\npath = "/a"\nsecret = "one"\n'
            '[[connectors]]\npath = "/b"\nsecret = "two"\nstreaming = false\n'
            'agents = { helper = "antiphon.chat.agents:demo_agent" }\n',
        ),
        {},
    )
    a, b = setup.connectors
    assert (a.path, a.settings.secret, tuple(a.agents)) == ("/a", "one", ("assistant",))
    assert (b.path, b.settings.secret, b.settings.streaming, tuple(b.agents)) == ("/b", "two", False, ("helper",))
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.agents\.helper: cannot import module 'nope' "):
        build({"connectors": [{"agents": {"helper": "nope:fn"}}]}, {})
    with pytest.raises(ConfigError, match=r"^connectors\[0\]: give either agent or agents, not both$"):
        build({"connectors": [{"agent": "a:b", "agents": {"x": "a:b"}}]}, {})


def test_unreadable_and_invalid_files_name_the_file(tmp_path: Path) -> None:
    """A missing file and a file that is not TOML are one-line errors naming the file."""
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read \(No such file or directory\)$"):
        load_file(tmp_path / "nope.toml", {})
    with pytest.raises(ConfigError, match=r"gateway\.toml: invalid TOML \("):
        load_file(_file(tmp_path, "port = = 1\n"), {})


def test_readme_table_documents_every_key() -> None:
    """The README's configuration table, the one place users read, lists every key the file accepts."""
    text = README.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    documented = set()
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) > 3:
            documented |= set(re.findall(r"`(?:connectors\[\]\.)?([a-z_]+)", cells[2]))
    missing = (set(TOP_LEVEL_KEYS) | set(CONNECTOR_KEYS)) - documented
    assert not missing, f"keys missing from the README's configuration table: {sorted(missing)}"
