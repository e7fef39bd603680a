"""antiphon's gateway with changes proposed but not yet applied, for measuring them.

``python -m benchmarks.targets.antiphon_variant [--gc] [--fast-codec] serve ...`` runs the
same ``antiphon serve`` command line as the ``antiphon`` target, after:

* ``--gc``: the one line proposed for ``cli.py`` (``antiphon.tuning.tune_gc()`` before
  ``trio.run``);
* ``--fast-codec``: the chat/proto hot-path changes proposed in ``BENCHMARKS.md``,
  applied here as patches (:mod:`benchmarks.targets.proposed`) because those modules
  belong to another change in flight.

Only for the benchmarks: nothing in ``src/`` imports this.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if "--fast-codec" in argv:
        argv.remove("--fast-codec")
        from benchmarks.targets import proposed

        proposed.apply()
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
