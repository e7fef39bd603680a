"""The `antiphon` command: flags, one-line start-up errors, logs, the serve process and the docs' example against it."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from antiphon import cli
from antiphon.chat.config import CONNECTOR_KEYS, TOP_LEVEL_KEYS, build
from tests.chat.test_gateway_socket import run_public_example

ANTIPHON = [sys.executable, "-m", "antiphon"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ANTIPHON, *args], capture_output=True, text=True, timeout=30, env=env)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [["serve", "--store", "none"], ["tools", "serve", "os:getcwd"]],
    ids=["serve", "tools-serve"],
)
def test_a_busy_port_is_one_line_and_exit_2(busy_port: int, command: list[str]) -> None:
    """Every server command reports a port in use as one line and exit status 2, not an ExceptionGroup."""
    result = _run(*command, "--port", str(busy_port))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"antiphon: cannot listen on 127.0.0.1:{busy_port}: address already in use"]


def test_a_busy_port_from_the_config_file_is_one_line(busy_port: int, tmp_path: Path) -> None:
    """The address named in a config file is the one the error reports."""
    result = _run("serve", "--config", _config(tmp_path, f'port = {busy_port}\nstore = "none"\n'))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"antiphon: cannot listen on 127.0.0.1:{busy_port}: address already in use"]


def test_unreadable_files_are_one_line_and_exit_2(tmp_path: Path) -> None:
    """A missing config file, a config with an unknown key, an unusable store path and a store that is no database."""
    missing = tmp_path / "none.toml"
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("not a database\n" * 100)
    cases = {
        ("serve", "--config", str(missing)): f"antiphon: {missing}: cannot read (No such file or directory)",
        ("serve", "--config", _config(tmp_path, "prot = 9999\n")): f"antiphon: {tmp_path / 'gateway.toml'}: unknown key 'prot' (did you mean 'port'?)",
        ("serve", "--port", "0", "--store", str(not_a_dir / "t.db")): f"antiphon: store: cannot open '{not_a_dir / 't.db'}' (",
        ("sessions", "list", "--store", str(not_a_dir)): f"antiphon: store: cannot open '{not_a_dir}' (file is not a database)",
        ("sessions", "list", "--store", str(tmp_path)): f"antiphon: store: '{tmp_path}' is a directory, not a transcript store",
    }
    for args, line in cases.items():
        result = _run(*args)
        assert result.returncode == 2, args
        (only,) = result.stderr.splitlines()
        assert only.startswith(line), (args, only)


def test_a_bad_certificate_is_one_line_and_exit_2(tmp_path: Path, pem_files: tuple[Path, Path]) -> None:
    """A missing or unusable certificate stops `serve` and `tools serve` at start-up with one line naming it, exit 2."""
    cert, key = pem_files
    missing = tmp_path / "missing.pem"
    config = _config(tmp_path, f'certfile = "{missing}"\nstore = "none"\n')
    cases = {
        ("serve", "--store", "none", "--certfile", str(missing)): f"antiphon: --certfile: cannot read '{missing}' (No such file or directory)",
        ("serve", "--config", config): f"antiphon: {config}: certfile: cannot read '{missing}' (No such file or directory)",
        ("serve", "--store", "none", "--certfile", str(cert), "--keyfile", str(cert)): f"antiphon: --keyfile: '{cert}' holds no PEM private key",
        ("serve", "--store", "none", "--keyfile", str(key)): "antiphon: --keyfile: give certfile too",
        ("tools", "serve", "os:getcwd", "--certfile", str(missing)): f"antiphon: --certfile: cannot read '{missing}' (No such file or directory)",
        ("tools", "serve", "os:getcwd", "--certfile", str(key)): f"antiphon: --certfile: '{key}' holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
    }
    for args, line in cases.items():
        result = _run(*args, "--port", "0")
        assert result.returncode == 2, args
        assert result.stderr.splitlines() == [line], args


def test_certificate_flags_and_keys_make_a_tls_server(tmp_path: Path, pem_files: tuple[Path, Path]) -> None:
    """`--certfile/--keyfile` and the `certfile`/`keyfile` keys both end up as ServerConfig.ssl; `--no-metrics` as metrics."""
    cert, key = pem_files
    args = cli._parser().parse_args(["serve", "--certfile", str(cert), "--keyfile", str(key), "--no-metrics"])
    setup = build(cli._document(args), {})
    assert setup.server.ssl is not None and setup.server.metrics is False
    from_file = build({"certfile": str(cert), "keyfile": str(key)}, {})
    assert from_file.server.ssl is not None and from_file.server.metrics is True
    assert build({}, {}).server.ssl is None


def test_flags_are_the_same_settings_as_the_keys() -> None:
    """Every `serve` flag names a config key, and sets the very settings field that key sets."""
    assert set(cli.TOP_LEVEL_FLAGS) <= set(TOP_LEVEL_KEYS) and set(cli.CONNECTOR_FLAGS) <= set(CONNECTOR_KEYS)
    args = cli._parser().parse_args(
        [
            "serve", "--host", "127.0.0.2", "--port", "0", "--shutdown-grace", "2", "--store", "none",
            "--retention-days", "0", "--secret", "s", "--no-streaming", "--session-timeout", "120",
            "--max-messages", "5", "--path", "/x", "--resume-grace", "0",
        ]
    )  # fmt: skip
    setup = build(cli._document(args), {})
    assert (setup.server.host, setup.server.port, setup.server.shutdown_grace_s) == ("127.0.0.2", 0, 2.0)
    assert (setup.store, setup.retention_s) == (None, None)
    (conn,) = setup.connectors
    s = conn.settings
    assert (conn.path, s.secret, s.streaming, s.session_timeout_s, s.max_messages, s.resume_grace_s) == ("/x", "s", False, 120.0, 5, 0.0)
    no_auth = build(cli._document(cli._parser().parse_args(["serve", "--no-auth"])), {})
    assert no_auth.connectors[0].settings.require_auth is False and no_auth.generated_secrets == {}


def test_a_flag_out_of_range_is_named_as_the_flag() -> None:
    """Without a config file, a range error names the flag the user typed."""
    result = _run("serve", "--session-timeout", "5", "--store", "none")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["antiphon: --session-timeout: must be between 60 and 86400 seconds, got 5"]


@pytest.mark.parametrize(
    ("argv", "level", "fmt"),
    [
        (["serve"], "INFO", "text"),
        (["--log-level", "warning", "serve"], "WARNING", "text"),
        (["serve", "--log-level", "debug", "--log-format", "json"], "DEBUG", "json"),
        (["--log-level", "error", "serve", "--log-level", "debug"], "DEBUG", "text"),
        (["tools", "serve", "m:f", "--log-level", "debug"], "DEBUG", "text"),
        (["sessions", "list", "--log-format", "json"], "INFO", "json"),
        (["chat", "ws://h"], "WARNING", "text"),
        (["--log-level", "info", "chat", "ws://h"], "INFO", "text"),
    ],
)
def test_log_flags_go_before_or_after_the_subcommand(argv: list[str], level: str, fmt: str) -> None:
    """`--log-level` / `--log-format` work on the top level and on every subcommand; the later one wins; chat is quieter."""
    args = cli._parser().parse_args(argv)
    assert (cli._log_level(args), args.log_format) == (level, fmt)


def test_json_debug_logs_are_objects_without_frames_or_secrets(tmp_path: Path) -> None:
    """`--log-level debug --log-format json`: every stderr line is a JSON object; no per-frame lines; the secret never shows."""
    secret = "a-long-secret-that-must-not-leak"
    argv = [*ANTIPHON, "serve", "--port", "0", "--store", "none", "--log-level", "debug", "--log-format", "json", "--secret", secret]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            url = re.search(r"listening on (ws://\S+)", proc.stdout.readline())
            assert url, "no listening line"
            assert "Done! Tokens:" in run_public_example(url.group(1), secret)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
            err = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    records = [json.loads(line) for line in err.splitlines()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["level"] == "DEBUG" and r["logger"].startswith("antiphon") for r in records)
    assert not [r for r in records if r["logger"].startswith(("websockets", "antiphon.wire"))]
    assert secret not in err


@pytest.mark.parametrize(
    ("host", "warns"),
    [("0.0.0.0", True), ("", True), ("example.com", True), ("127.0.0.1", False), ("::1", False), ("localhost", False)],
)
def test_no_auth_on_a_non_loopback_address_warns(caplog: pytest.LogCaptureFixture, host: str, warns: bool) -> None:
    """A connector without authentication on an address others can reach gets a warning; loopback does not."""
    open_setup = build({"host": host, "connectors": [{"path": "/open", "require_auth": False}, {"path": "/shut"}]}, {})
    with caplog.at_level(logging.WARNING, logger="antiphon"):
        cli._warn_unauthenticated(open_setup)
    messages = [r.getMessage() for r in caplog.records]
    if warns:
        assert len(messages) == 1 and messages[0].startswith("connector /open accepts clients without a secret, on ")
    else:
        assert messages == []


def test_agent_modules_are_found_in_the_current_directory(tmp_path: Path) -> None:
    """The console script imports `--agent mod:fn` from the current directory; a plain function is refused at load."""
    script = Path(sys.executable).parent / "antiphon"
    if not script.exists():
        pytest.skip(f"the antiphon console script is not installed next to {sys.executable}")
    (tmp_path / "my_agents.py").write_text("def plain(turn):\n    return 'hi'\n")
    result = subprocess.run(
        [str(script), "serve", "--agent", "my_agents:plain", "--store", "none"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "antiphon: --agent: 'my_agents:plain' is a plain function; an agent is an async generator function "
        "(async def ... yield chunks) or a coroutine function (async def ... return text)"
    ]


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
