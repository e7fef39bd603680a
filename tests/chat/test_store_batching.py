"""Group commit: batches, leadership hand-over, cancelled writers and failing records."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from antiphon.chat.store.batching import BATCH_MAX_WRITES, GroupCommit
from antiphon.errors import StoreError


class GatedWriter:
    """A write_batch that records each batch and, while gated, blocks its thread until released."""

    def __init__(self, *, gated: bool = True) -> None:
        self.batches: list[list[str]] = []
        self._gate = threading.Semaphore(0)
        self.gated = gated

    def release(self, batches: int = 1) -> None:
        for _ in range(batches):
            self._gate.release()

    def __call__(self, writes: Sequence[str]) -> None:
        if self.gated:
            self._gate.acquire()
        if "bad" in writes:
            raise ValueError("bad record\nsecond line")
        self.batches.append(list(writes))


def committer(writer: GatedWriter) -> GroupCommit[str]:
    return GroupCommit(writer, trio.CapacityLimiter(1), "'test.db'")


async def test_writes_queued_during_a_commit_share_the_next_one() -> None:
    """While one transaction runs, every write that arrives waits and goes in a single next one."""
    writer = GatedWriter()
    commits = committer(writer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.write, "first")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(100):
            nursery.start_soon(commits.write, f"w{i}")
        await trio.testing.wait_all_tasks_blocked()
        writer.release(2)
    assert writer.batches[0] == ["first"]
    assert sorted(writer.batches[1]) == sorted(f"w{i}" for i in range(100))  # Trio starts tasks in any order
    assert len(writer.batches) == 2
    assert commits.transactions == 2


async def test_a_batch_holds_at_most_the_bound() -> None:
    """More queued writes than BATCH_MAX_WRITES go in several transactions, oldest first."""
    writer = GatedWriter()
    commits = committer(writer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.write, "first")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(BATCH_MAX_WRITES + 1):
            nursery.start_soon(commits.write, f"w{i}")
        await trio.testing.wait_all_tasks_blocked()
        writer.release(3)
    assert [len(b) for b in writer.batches] == [1, BATCH_MAX_WRITES, 1]


async def test_a_leader_returns_after_its_own_commit() -> None:
    """Under steady load the leader hands over once its record is in: it does not keep writing for others."""
    writer = GatedWriter()
    commits = committer(writer)
    first_done = trio.Event()

    async def first() -> None:
        await commits.write("first")
        first_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(commits.write, "second")
        await trio.testing.wait_all_tasks_blocked()
        writer.release()  # only the first transaction may finish
        with trio.fail_after(5):
            await first_done.wait()
        assert writer.batches == [["first"]]  # "second" is being written by its own writer
        writer.release()
    assert writer.batches == [["first"], ["second"]]


async def test_a_cancelled_writer_still_gets_its_record_committed() -> None:
    """Cancelling a waiting writer abandons the wait, not the write, and strands nobody behind it."""
    writer = GatedWriter()
    commits = committer(writer)
    results: dict[str, str] = {}

    async def write(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await commits.write(name)
            results[name] = "committed"
            return
        results[name] = "cancelled"

    scopes = {name: trio.CancelScope() for name in ("a", "b", "c")}
    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(write, name, scopes[name])
            await trio.testing.wait_all_tasks_blocked()
        scopes["b"].cancel()  # b is queued behind a's running transaction
        scopes["a"].cancel()  # a leads, shielded: its commit goes on
        await trio.testing.wait_all_tasks_blocked()
        writer.release(2)
    assert results == {"a": "committed", "b": "cancelled", "c": "committed"}
    assert writer.batches == [["a"], ["b", "c"]]


async def test_a_bad_record_fails_alone() -> None:
    """A failing transaction is retried one record at a time: only the bad record's writer gets StoreError."""
    writer = GatedWriter()
    commits = committer(writer)
    errors: dict[str, str] = {}

    async def write(name: str) -> None:
        try:
            await commits.write(name)
        except StoreError as exc:
            errors[name] = str(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "first")
        await trio.testing.wait_all_tasks_blocked()
        for name in ("x", "bad", "y"):
            nursery.start_soon(write, name)
        await trio.testing.wait_all_tasks_blocked()
        writer.gated = False
        writer.release()
    assert errors == {"bad": "store 'test.db': cannot write (bad record second line)"}
    assert writer.batches[0] == ["first"] and sorted(writer.batches[1:]) == [["x"], ["y"]]
    assert commits.transactions == 3


async def test_an_exception_in_a_lone_write_is_a_store_error() -> None:
    """A write that fails on its own raises StoreError, and the committer keeps working afterwards."""
    writer = GatedWriter(gated=False)
    commits = committer(writer)
    with pytest.raises(StoreError, match="cannot write"):
        await commits.write("bad")
    await commits.write("good")
    assert writer.batches == [["good"]]
