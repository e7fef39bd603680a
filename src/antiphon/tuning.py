"""Process-wide tuning for a long-running server process (the ``antiphon serve`` command).

CPython's cyclic garbage collector runs a young-generation pass every 700 net
allocations of container objects. A busy gateway allocates several per message (event
objects, dicts, frames, Trio's task bookkeeping), so the collector runs hundreds of
times a second, and every third-generation pass walks every live object: with 1000
sessions, tens of thousands of them. Those full passes are the multi-millisecond
stalls behind a poor p99. Almost nothing on the message path makes reference cycles,
so collecting less often loses nothing but a little memory held by cycles a bit
longer. :func:`tune_gc` therefore

* freezes what exists at startup (modules, classes, configuration) into the
  permanent generation, so no pass ever walks it again, and
* raises the thresholds: a young pass every ``gen0`` allocations, an older pass after
  ``gen1`` young ones, a full pass after ``gen2`` older ones.

It changes process-wide state, which a library must not do behind its user's back:
only applications call it (the CLI does, before ``trio.run``); a program embedding
antiphon decides for itself.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLDS", "tune_gc"]

GC_THRESHOLDS: Final = (50_000, 20, 100)
"""(gen0, gen1, gen2): a young pass every 50k allocations instead of 700; see the module docstring."""


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """Freeze the objects alive now and raise the collector's thresholds (call once, at startup)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
