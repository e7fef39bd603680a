"""Configuring shared runs and workers: TOML keys and flags structured into RunsSettings and WorkerSettings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from antiphon.chat.backends import RunsSettings
from antiphon.chat.config import build, load_file
from antiphon.errors import ConfigError
from antiphon.workers import WorkerSettings


def test_runs_keys_structure_into_their_settings(tmp_path: Path) -> None:
    """`runs`, `lease_ttl` and `workers` in a file land in RunsSettings and WorkerSettings; `reuse_port` in ServerConfig."""
    path = tmp_path / "g.toml"
    path.write_text('runs = "redis://127.0.0.1:6379/0"\nlease_ttl = 2.5\nworkers = 3\nreuse_port = true\n')
    setup = load_file(path, {})
    assert setup.runs == RunsSettings(runs="redis://127.0.0.1:6379/0", lease_ttl_s=2.5)
    assert setup.workers == WorkerSettings(workers=3) and setup.server.reuse_port is True


def test_the_defaults_share_nothing() -> None:
    """Without the keys, runs live in memory and one process serves."""
    setup = build({}, {})
    assert not setup.runs.shared and str(setup.runs) == "memory" and setup.workers.workers == 1


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"runs": "mysql://x"}, "runs: expected 'memory' or a redis:// URL, got 'mysql://x'"),
        ({"runs": "redis://h/0", "lease_ttl": 0}, "lease_ttl: must be between 0.1 and 600 seconds, got 0"),
        ({"workers": 0}, "workers: must be between 1 and 256, got 0"),
        ({"workers": 2}, 'workers: 2 workers need shared runs (runs = "redis://..."): a resume may land on any worker'),
    ],
)
def test_values_it_cannot_use_are_refused_naming_the_key(doc: dict[str, object], message: str) -> None:
    """A bad backend URL, lease TTL or worker count, or workers without shared runs, is a ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        build(doc, {})
    assert str(info.value) == message


def test_a_password_in_the_runs_url_is_never_shown() -> None:
    """RunsSettings prints its URL with the password masked (it is logged at start)."""
    assert str(RunsSettings(runs="redis://:hunter2@db:6379/0")) == "redis://:***@db:6379/0"


def test_a_bad_runs_flag_is_one_line_naming_the_flag() -> None:
    """`antiphon serve --runs nonsense` exits 2 with the error located at `--runs`."""
    result = subprocess.run(
        [sys.executable, "-m", "antiphon", "serve", "--runs", "nonsense", "--store", "none"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["antiphon: --runs: expected 'memory' or a redis:// URL, got 'nonsense'"]
