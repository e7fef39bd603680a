"""The tools face's sans-IO core: UTCP call templates and manuals (:mod:`.templates`), the
``ws://``/``wss://`` URL rule (:mod:`.urls`), ``$VAR`` substitution (:mod:`.variables`),
the opening handshake (:mod:`.handshake`), frame text and replies (:mod:`.message`), and
OAuth2 token requests (:mod:`.oauth`)."""

__all__: list[str] = []
