"""The package as shipped and checked: typed (py.typed), and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_says_it_is_typed() -> None:
    """py.typed is in the package, so type checkers use antiphon's own hints (PEP 561)."""
    assert resources.files("antiphon").joinpath("py.typed").is_file()


def test_ci_runs_the_readmes_test_command() -> None:
    """.ci/run ends with the README's install-lint-typecheck-test command, character for character."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^# install, lint .*\n(python3 -m venv .*)$", readme, re.MULTILINE)
    assert match, "the README's test command is not where it was"
    command = match.group(1)
    assert "ruff check" in command and "mypy" in command and "pytest" in command
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == command
