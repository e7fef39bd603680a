"""antiphon's sans-IO core: wire messages, codecs and state machines.

Nothing in this package does I/O or imports Trio: it turns bytes and JSON into typed
events and back, and decides what a session should do next. The Trio layer beside it
only moves bytes and keeps time.
"""

__all__: list[str] = []
