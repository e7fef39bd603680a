"""The servers under test; each prints ``listening on ws://HOST:PORT`` (or ``tcp://``) when ready.

antiphon runs as users run it (``python -m antiphon serve --config FILE``); the peers are
the smallest reasonable programs on their stack speaking the same protocol subset
(:mod:`benchmarks.targets.chat_subset`), and the two ceilings speak no protocol at all.
"""
