"""antiphon's benchmark harness: the chat gateway under concurrency load, beside its peers.

Run ``python -m benchmarks`` (quick suite, under 3 minutes) or ``python -m benchmarks --full``
from the repository root; see ``BENCHMARKS.md`` for what is measured and the latest results.

Layout:

* :mod:`benchmarks.targets` - the servers under test, each a small program that prints
  ``listening on ws://HOST:PORT`` once ready (antiphon itself runs as ``antiphon serve``);
* :mod:`benchmarks.loadgen` - the one load generator (picows on uvloop, its own process),
  the same for every target in a run;
* :mod:`benchmarks.runner` - starts targets and the load generator pinned to one core each,
  samples the server's RSS and CPU, repeats, keeps medians and writes the run's JSON;
* :mod:`benchmarks.report` - the markdown table of ratios and the matplotlib chart.

Nothing here is collected by pytest (``testpaths = ["tests"]``); one smoke test,
``tests/test_benchmarks_smoke.py``, runs the quick harness end to end on tiny numbers.
"""
