"""A store that keeps transcripts in this process's memory: for tests, and for keeping none on disk."""

from __future__ import annotations

import trio
from attrs import define, evolve

from antiphon.chat.store.records import (
    MessageRecord,
    ReplyRecord,
    RunSummary,
    TurnRecord,
)

__all__ = ["MemoryStore"]


@define
class MemoryStore:
    """Keeps transcripts in dicts; everything goes with the process."""

    runs: dict[str, RunSummary] = {}
    turns: dict[str, dict[int, TurnRecord]] = {}

    def __attrs_post_init__(self) -> None:
        self.runs, self.turns = {}, {}

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    async def save_message(self, record: MessageRecord) -> None:
        await trio.lowlevel.checkpoint()
        prev = self.runs.get(record.run_id)
        created = prev.created_at if prev else record.received_at
        turns = self.turns.setdefault(record.run_id, {})
        turns[record.message_number] = TurnRecord(
            message_id=record.message_id,
            message_number=record.message_number,
            message=record.text,
            context=record.context,
            received_at=record.received_at,
            agent=None,
            reply=None,
            status="pending",
            prompt_tokens=None,
            candidates_tokens=None,
            finished_at=None,
        )
        self.runs[record.run_id] = RunSummary(
            run_id=record.run_id,
            connector=record.connector,
            created_at=created,
            updated_at=record.received_at,
            turns=len(turns),
        )

    async def save_reply(self, record: ReplyRecord) -> None:
        await trio.lowlevel.checkpoint()
        turn = self.turns.get(record.run_id, {}).get(record.message_number)
        if turn is None:
            return
        self.turns[record.run_id][record.message_number] = evolve(
            turn,
            agent=record.agent,
            reply=record.text,
            status=record.status,
            prompt_tokens=record.prompt_tokens,
            candidates_tokens=record.candidates_tokens,
            finished_at=record.finished_at,
        )
        self.runs[record.run_id] = evolve(self.runs[record.run_id], updated_at=record.finished_at)

    async def list_runs(self, limit: int = 50) -> list[RunSummary]:
        await trio.lowlevel.checkpoint()
        return sorted(self.runs.values(), key=lambda r: r.updated_at, reverse=True)[:limit]

    async def get_run(self, run_id: str) -> tuple[RunSummary, list[TurnRecord]] | None:
        await trio.lowlevel.checkpoint()
        if run_id not in self.runs:
            return None
        return self.runs[run_id], [t for _, t in sorted(self.turns[run_id].items())]

    async def cleanup(self, older_than: float) -> int:
        await trio.lowlevel.checkpoint()
        old = [rid for rid, r in self.runs.items() if r.updated_at < older_than]
        for rid in old:
            del self.runs[rid], self.turns[rid]
        return len(old)
