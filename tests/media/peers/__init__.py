"""Real Pipecat peers for the media tests: where they live, and why a test skips without them.

Stock Pipecat (``pipecat-ai[websocket]``, ~0.5 GB) runs in a venv of its own, and Pipecat's
browser client (``@pipecat-ai/client-js`` + ``@pipecat-ai/websocket-transport``) comes from
npm; ``.ci/run`` installs both, best effort, under one cache folder (``ANTIPHON_CI_CACHE``,
default ``~/.cache/antiphon-ci``) and exports where they are. A test needing a peer skips
with a reason that says what is missing and how to get it; when ``.ci/run`` tried to install
the peer and failed, the reason says that too (``ANTIPHON_PIPECAT_SKIP_REASON``,
``ANTIPHON_PIPECAT_WEB_SKIP_REASON``). When a peer was installed but does not work, the test
fails instead of skipping.

The scripts beside this file (``pipecat_client.py``, ``pipecat_server.py``) run in Pipecat's
venv, never in the test venv: Pipecat is asyncio, the transports under test are Trio.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

PEERS_DIR: Final = Path(__file__).parent
BROWSER_DIR: Final = PEERS_DIR.parent / "browser"
PIPECAT_IMPORT_TIMEOUT_S: Final = 120
"""Importing Pipecat takes ~1 s; a cold disk cache on a loaded 2-core CI machine, much longer."""


def ci_cache() -> Path:
    """The folder ``.ci/run`` installs peers into (``ANTIPHON_CI_CACHE``, default ``~/.cache/antiphon-ci``)."""
    if env := os.environ.get("ANTIPHON_CI_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "antiphon-ci"


def pipecat_python() -> str:
    """A Python that imports Pipecat's WebSocket transports; skips (or fails) the calling test without one.

    Looks at ``ANTIPHON_PIPECAT_PYTHON``, then ``.ci/run``'s venv in :func:`ci_cache`, then the
    test interpreter itself. Fails when ``ANTIPHON_PIPECAT_PYTHON`` is set but cannot import
    Pipecat: then the install worked and something else broke, which must not pass as a skip.
    """
    explicit = os.environ.get("ANTIPHON_PIPECAT_PYTHON")
    candidates = [explicit] if explicit else [str(ci_cache() / "pipecat-venv" / "bin" / "python"), sys.executable]
    for python in candidates:
        if Path(python).exists() and _imports_pipecat(python):
            return python
    if explicit:
        pytest.fail(f"ANTIPHON_PIPECAT_PYTHON={explicit} cannot import pipecat.transports.websocket")
    why = os.environ.get("ANTIPHON_PIPECAT_SKIP_REASON") or "pipecat-ai is not installed"
    pytest.skip(
        f"STOCK PIPECAT INTEROP NOT TESTED: {why}. .ci/run installs pipecat-ai[websocket] into "
        f"{ci_cache() / 'pipecat-venv'}; or point ANTIPHON_PIPECAT_PYTHON at a Python that has it"
    )


def _imports_pipecat(python: str) -> bool:
    probe = "import pipecat.transports.websocket.client, pipecat.transports.websocket.server"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, timeout=PIPECAT_IMPORT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def chromium() -> str:
    """Debian's Chromium binary; skips the calling test without one."""
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and Path(path).exists():
            return path
    pytest.skip("PIPECAT BROWSER CLIENT NOT TESTED: no Chromium installed (apt-get install chromium; .ci/run tries)")


def pipecat_web_modules() -> Path:
    """``node_modules`` holding Pipecat's browser client and esbuild (``tests/media/browser/package.json``).

    Looks at ``ANTIPHON_PIPECAT_WEB_MODULES``, then ``.ci/run``'s install in :func:`ci_cache`,
    then ``tests/media/browser/node_modules`` (``npm ci`` run there by hand); skips without.
    Fails when ``ANTIPHON_PIPECAT_WEB_MODULES`` is set but lacks the packages.
    """
    explicit = os.environ.get("ANTIPHON_PIPECAT_WEB_MODULES")
    installed = [ci_cache() / "pipecat-web" / "node_modules", BROWSER_DIR / "node_modules"]
    candidates = [Path(explicit)] if explicit else installed
    needed = ("@pipecat-ai/client-js", "@pipecat-ai/websocket-transport", ".bin/esbuild")
    for modules in candidates:
        if all((modules / name).exists() for name in needed):
            return modules
    if explicit:
        pytest.fail(f"ANTIPHON_PIPECAT_WEB_MODULES={explicit} lacks one of {', '.join(needed)}")
    why = os.environ.get("ANTIPHON_PIPECAT_WEB_SKIP_REASON") or "the npm packages are not installed"
    pytest.skip(
        f"PIPECAT BROWSER CLIENT NOT TESTED: {why}. .ci/run runs `npm ci` for tests/media/browser/package.json "
        f"into {ci_cache() / 'pipecat-web'}; or run `npm ci` in {BROWSER_DIR}"
    )
