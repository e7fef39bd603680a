"""The chat protocol subset every peer gateway speaks, as small sans-IO functions.

It is what a user would write for the same job with orjson: first-message secret
auth (``{"secret"}`` -> ``connected``), ``message`` -> ``ack`` + ``response`` (or
``stream_start`` / ``stream_chunk``... / ``stream_end``), ``ping`` -> ``pong``, and an
``error`` event for anything else. The wire format is byte for byte antiphon's
(``type`` first, compact JSON), so the load generator cannot tell the gateways apart.
No schema validation beyond what the reply needs: that is the peer's advantage, and
part of what antiphon's strict codec has to earn back.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

AGENTS = ["assistant"]


def dumps(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


class ChatState:
    """One connection's state: authenticated yet, messages accepted so far."""

    def __init__(self, secret: str | None, streaming: bool) -> None:
        self.secret = secret
        self.streaming = streaming
        self.authenticated = secret is None
        self.count = 0
        self.session_id = uuid.uuid4().hex

    def connected(self) -> str:
        sid = self.session_id
        return dumps({"type": "connected", "session_id": sid, "connector_run_id": sid, "agents": AGENTS})

    def auth(self, raw: str | bytes) -> tuple[str, bool]:
        """The answer to the first frame, and whether the session may go on."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("secret") == self.secret:
            self.authenticated = True
            return self.connected(), True
        return dumps({"type": "error", "code": "auth_failed", "message": "invalid secret"}), False

    def replies(self, raw: str | bytes) -> Iterator[str]:
        """The frames answering one client frame, produced lazily (a stream may be long)."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            yield dumps({"type": "error", "code": "invalid_json", "message": "$: invalid JSON"})
            return
        if not isinstance(obj, dict):
            yield dumps({"type": "error", "code": "invalid_message", "message": "$: expected an object"})
            return
        kind = obj.get("type")
        if kind == "ping":
            yield '{"type":"pong"}'
            return
        payload = obj.get("payload") if kind == "message" else obj
        text = payload.get("message") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text:
            yield dumps({"type": "error", "code": "invalid_message", "message": "$.payload.message: required"})
            return
        self.count += 1
        mid = obj.get("id") or f"msg_{uuid.uuid4().hex[:16]}"
        yield dumps({"type": "ack", "id": mid, "message_number": self.count})
        context = payload.get("context") or {}
        usage = {"prompt_tokens": math.ceil(len(text) / 4), "candidates_tokens": 0}
        if not self.streaming:
            usage["candidates_tokens"] = math.ceil(len(text) / 4)
            yield dumps({"type": "response", "id": mid, "agent": "assistant", "response": text, "token_usage": usage})
            return
        n = context.get("chunks", 1) if isinstance(context, dict) else 1
        n = n if isinstance(n, int) else 1
        yield dumps({"type": "stream_start", "id": mid, "agent": "assistant"})
        chunk = dumps({"type": "stream_chunk", "id": mid, "agent": "assistant", "chunk": text})
        for _ in range(n):
            yield chunk
        full = text * n
        usage["candidates_tokens"] = math.ceil(len(full) / 4)
        yield dumps({"type": "stream_end", "id": mid, "agent": "assistant", "full_response": full, "token_usage": usage})
