"""Transcripts for people: the tables ``antiphon sessions list`` and ``show`` print.

Everything in a transcript came from a client or an agent, so nothing reaches the
operator's terminal raw: control characters (C0 and C1, so ESC, CSI, OSC, CR, BEL...),
bidirectional overrides and line separators are shown as ``\\x1b``-style escapes. A
message or reply keeps its line breaks, but every line of it is indented, so no text
can pass for a transcript's own header lines. ``--json`` output is ASCII-only JSON.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import orjson

from antiphon.chat.store import RunSummary, TurnRecord

__all__ = [
    "TEXT_INDENT",
    "escape",
    "runs_json",
    "runs_table",
    "transcript_json",
    "transcript_text",
]

_UNSAFE: Final = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f"  # C0 but newline, DEL, C1
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional marks, embeddings, overrides, isolates
    "\u2028\u2029]"  # line and paragraph separators
)
TEXT_INDENT: Final = "    "
"""Every line of a message or reply starts with this: deeper than any header line."""


def escape(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character a terminal would act on shown as an escape (``\\x1b``, ``\\u202e``)."""
    out = _UNSAFE.sub(lambda m: _escape_char(m.group()), text)
    return out if keep_newlines else out.replace("\n", "\\n")


_NAMED: Final = {"\t": "\\t", "\r": "\\r"}


def _escape_char(c: str) -> str:
    code = ord(c)
    return _NAMED.get(c) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _block(text: str) -> list[str]:
    return [TEXT_INDENT + line for line in escape(text, keep_newlines=True).split("\n")]


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def runs_table(runs: list[RunSummary]) -> str:
    """One line a run, newest first, under a header; 'no transcripts' when there are none."""
    if not runs:
        return "no transcripts"
    rows = [("RUN ID", "CONNECTOR", "TURNS", "STARTED (UTC)", "LAST ACTIVITY (UTC)")]
    for r in runs:
        rows.append((escape(r.run_id), escape(r.connector), str(r.turns), _when(r.created_at), _when(r.updated_at)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def transcript_text(run: RunSummary, turns: list[TurnRecord]) -> str:
    """A readable transcript: each user message, then the reply with its status and usage."""
    started = _when(run.created_at)
    lines = [f"run {escape(run.run_id)} at {escape(run.connector)}, started {started} UTC, {run.turns} turns", ""]
    for t in turns:
        lines.append(f"#{t.message_number} [{escape(t.message_id)}] {_when(t.received_at)} user:")
        lines += _block(t.message)
        if t.context:
            lines.append(f"{TEXT_INDENT}context: {escape(_context_text(t.context))}")
        if t.reply is None:
            lines.append(f"  (no reply: {escape(t.status)})")
        else:
            usage = f"{t.prompt_tokens} prompt + {t.candidates_tokens} reply tokens"
            lines.append(f"  {escape(t.agent or '-')} ({escape(t.status)}, {usage}):")
            lines += _block(t.reply)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _context_text(context: dict[str, Any]) -> str:
    try:
        return orjson.dumps(context).decode()  # C code: no recursion limit to hit, no newlines
    except TypeError:
        return "(cannot be shown: nested too deep; see --json)"


def runs_json(runs: list[RunSummary]) -> str:
    """The runs as a JSON list (ASCII only)."""
    return json.dumps([attrs.asdict(r) for r in runs], indent=2)


def transcript_json(run: RunSummary, turns: list[TurnRecord]) -> str:
    """The run and its turns as one JSON object (ASCII only: safe to print, lossless to parse)."""
    doc: dict[str, Any] = attrs.asdict(run)
    doc["turns"] = [attrs.asdict(t, recurse=False) for t in turns]
    return json.dumps(doc, indent=2)
