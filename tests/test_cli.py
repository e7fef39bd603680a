"""The `antiphon` command: configuration errors, the serve process, and the docs' example against it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from antiphon.chat.config import GatewaySpec, build, load_file
from antiphon.errors import ConfigError
from tests.chat.test_gateway_socket import run_public_example

ANTIPHON = [sys.executable, "-m", "antiphon"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ANTIPHON, *args], capture_output=True, text=True, timeout=30, env=env)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_config_errors_are_located(tmp_path: Path) -> None:
    """A wrongly typed value in the TOML file is reported with its path in the file."""
    path = _config(tmp_path, '[[connectors]]\npath = "/a"\nmax_messages = "lots"\n')
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(info.value) == f"{path}: $.connectors[0].max_messages: expected an integer, got a string"


def test_config_ranges_are_checked_per_connector(tmp_path: Path) -> None:
    """An out-of-range setting names the connector it belongs to."""
    spec = load_file(_config(tmp_path, '[[connectors]]\nsecret = "s"\nsession_timeout = 5\n'))
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.session_timeout: must be between 60 and 86400 seconds, got 5$"):
        build(spec, {})


def test_config_mounts_several_connectors(tmp_path: Path) -> None:
    """Two connectors with their own paths, secrets (one from the environment) and agents."""
    spec = load_file(
        _config(
            tmp_path,
            'port = 0\n[[connectors]]\npath = "/a"\nsecret = "one"\n'
            '[[connectors]]\npath = "/b"\nsecret_env = "B_SECRET"\nstreaming = false\n'
            'agents = { helper = "antiphon.chat.agents:demo_agent" }\n',
        )
    )
    setup = build(spec, {"B_SECRET": "two"})
    a, b = setup.connectors
    assert (a.path, a.settings.secret, tuple(a.agents)) == ("/a", "one", ("assistant",))
    assert (b.path, b.settings.secret, b.settings.streaming, tuple(b.agents)) == ("/b", "two", False, ("helper",))
    assert setup.generated_secrets == {}


def test_missing_secret_env_is_an_error(tmp_path: Path) -> None:
    """secret_env naming an unset variable is refused rather than silently generating a secret."""
    spec = load_file(_config(tmp_path, '[[connectors]]\nsecret_env = "NOPE"\n'))
    with pytest.raises(ConfigError, match=r"^connectors\[0\]\.secret_env: environment variable 'NOPE' is not set$"):
        build(spec, {})


def test_secret_is_generated_when_none_is_given() -> None:
    """With auth on and no secret, build() makes one up and reports it by path."""
    setup = build(GatewaySpec(), {})
    secret = setup.generated_secrets["/"]
    assert len(secret) == 32 and setup.connectors[0].settings.secret == secret


def test_bad_agent_spec_is_reported() -> None:
    """`--agent` naming something that cannot be imported fails with exit 2 and a clear message."""
    result = _run("serve", "--agent", "no_such_module:fn", "--store", "none")
    assert result.returncode == 2
    assert "agent: cannot import module 'no_such_module'" in result.stderr


def test_connector_flags_conflict_with_config(tmp_path: Path) -> None:
    """Connector flags beside --config are refused: the file is the one place to set them."""
    result = _run("serve", "--config", _config(tmp_path, ""), "--max-messages", "5")
    assert result.returncode == 2 and "--max-messages: set these in the config file" in result.stderr


def test_serve_on_defaults_runs_the_public_example_and_stops_on_sigint(tmp_path: Path) -> None:
    """`antiphon serve` prints its generated secret and URL; the docs' example works with them; SIGINT exits 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ANTIPHON_STORE": str(tmp_path / "t.db")}
    env.pop("ANTIPHON_SECRET", None)
    with subprocess.Popen([*ANTIPHON, "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            secret_line = proc.stdout.readline()
            url_line = proc.stdout.readline()
            secret = re.fullmatch(r"antiphon: generated secret for /: (\S+)\n", secret_line)
            url = re.fullmatch(r"antiphon: chat gateway listening on (ws://127\.0\.0\.1:\d+) \(paths: /\)\n", url_line)
            assert secret and url, (secret_line, url_line)
            result: dict[str, Any] = {}
            worker = threading.Thread(target=lambda: result.update(out=run_public_example(url.group(1), secret.group(1))))
            worker.start()
            worker.join(timeout=30)
            assert "Done! Tokens:" in result["out"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (tmp_path / "t.db").exists()


def test_help_lists_the_commands() -> None:
    """`antiphon --help` names serve, chat and sessions."""
    out = _run("--help").stdout
    assert "serve" in out and "chat" in out and "sessions" in out


async def test_terminal_chat_streams_replies() -> None:
    """`antiphon chat URL` sends each line of standard input and prints the streamed reply."""
    import trio

    from tests.chat.conftest import SECRET, tcp_gateway

    async with tcp_gateway() as gateway:
        result = await trio.run_process(
            [*ANTIPHON, "chat", gateway.url, "--secret", SECRET],
            stdin=b"Hello!\n\nAgain\n",
            capture_stdout=True,
            capture_stderr=True,
        )
    out = result.stdout.decode()
    assert out.startswith("connected: run ")
    assert "Turn 1. You said: 'Hello!'. This is the first message of our conversation." in out
    assert "Turn 2. You said: 'Again'. Before that you said: 'Hello!'." in out


def test_version() -> None:
    """`antiphon --version` prints the package version."""
    from antiphon import __version__

    assert _run("--version").stdout.strip() == f"antiphon {__version__}"
