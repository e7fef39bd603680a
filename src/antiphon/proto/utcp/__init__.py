"""The tools face's sans-IO core: UTCP call templates and manuals (:mod:`.templates`), the
``ws://``/``wss://`` URL rule (:mod:`.urls`), frame text, handshakes and replies
(:mod:`.message`), and OAuth2 token requests (:mod:`.oauth`)."""
