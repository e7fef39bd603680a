"""antiphon's gateway with changes proposed but not yet applied, for measuring them.

``python -m benchmarks.targets.antiphon_variant --gc serve ...`` runs the same
``antiphon serve`` command line as the ``antiphon`` target, after the one line proposed
for ``cli.py``: ``antiphon.tuning.tune_gc()`` before ``trio.run``.

Only for the benchmarks: nothing in ``src/`` imports this.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    gc = "--gc" in argv
    if gc:
        argv.remove("--gc")
    from antiphon import cli

    if gc:
        from antiphon.tuning import tune_gc

        tune_gc()
    cli.main(argv)


if __name__ == "__main__":
    main()
