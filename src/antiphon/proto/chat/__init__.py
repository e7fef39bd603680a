"""The chat face's sans-IO core: wire messages (:mod:`.messages`), the connection's state
machine (:mod:`.session`) and the conversation that outlives connections (:mod:`.run`)."""

__all__: list[str] = []
