"""``python -m benchmarks [--full] ...``: see :func:`benchmarks.runner.main`."""

from __future__ import annotations

from benchmarks.runner import main

main()
