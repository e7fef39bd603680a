"""Transcripts for people: the tables ``antiphon sessions list`` and ``show`` print."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import attrs

from antiphon.chat.store import RunSummary, TurnRecord

__all__ = ["runs_json", "runs_table", "transcript_json", "transcript_text"]


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def runs_table(runs: list[RunSummary]) -> str:
    """One line a run, newest first, under a header; 'no transcripts' when there are none."""
    if not runs:
        return "no transcripts"
    rows = [("RUN ID", "CONNECTOR", "TURNS", "STARTED (UTC)", "LAST ACTIVITY (UTC)")]
    rows += [(r.run_id, r.connector, str(r.turns), _when(r.created_at), _when(r.updated_at)) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def transcript_text(run: RunSummary, turns: list[TurnRecord]) -> str:
    """A readable transcript: each user message, then the reply with its status and usage."""
    lines = [f"run {run.run_id} at {run.connector}, started {_when(run.created_at)} UTC, {run.turns} turns", ""]
    for t in turns:
        lines.append(f"#{t.message_number} [{t.message_id}] {_when(t.received_at)} user:")
        lines.append(f"    {t.message}")
        if t.context:
            lines.append(f"    context: {json.dumps(t.context, ensure_ascii=False)}")
        if t.reply is None:
            lines.append(f"  (no reply: {t.status})")
        else:
            usage = f"{t.prompt_tokens} prompt + {t.candidates_tokens} reply tokens"
            lines.append(f"  {t.agent} ({t.status}, {usage}):")
            lines.append(f"    {t.reply}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def runs_json(runs: list[RunSummary]) -> str:
    return json.dumps([attrs.asdict(r) for r in runs], indent=2)


def transcript_json(run: RunSummary, turns: list[TurnRecord]) -> str:
    doc: dict[str, Any] = attrs.asdict(run)
    doc["turns"] = [attrs.asdict(t) for t in turns]
    return json.dumps(doc, indent=2, ensure_ascii=False)
