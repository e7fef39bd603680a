"""Group commit: the writes of many tasks go to the database in few transactions.

Theory of operation
-------------------
A task that writes queues its record. If no transaction is in flight it becomes the
*leader*: it takes up to :data:`BATCH_MAX_WRITES` queued records, commits them in one
transaction in a worker thread, and wakes their writers. Writes queued meanwhile wait
for the next transaction, so a thousand sessions acking at once cost a handful of
commits, and a lone write costs one commit with no added delay (no timer, no linger).

Each leader commits until its own record is in, then hands leadership to the first
writer still waiting (it does not keep serving others: under steady load nobody is
stuck leading). Leading is shielded from cancellation, so waiting writers are never
stranded. A writer cancelled while it waits gives up waiting, not its write: the record
is still committed, and if leadership reached it meanwhile it leads, shielded, first.

When a transaction fails, its records are retried one per transaction, so one bad
record (too long, invalid for the database) fails alone and the others are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

import trio

from antiphon.errors import StoreError

__all__ = ["BATCH_MAX_WRITES", "GroupCommit"]

W = TypeVar("W")
"""What a store queues for one record: typically the statement's parameters, checked and encoded."""

BATCH_MAX_WRITES: Final = 512
"""Records per transaction: bounds one commit's latency; the rest go in the next one."""


class _Pending(Generic[W]):
    __slots__ = ("abandoned", "done", "error", "lead", "wake", "write")

    def __init__(self, write: W) -> None:
        self.write = write
        self.wake = trio.Event()  # set when the record is committed or failed, or leadership passes here
        self.done = False
        self.lead = False
        self.abandoned = False  # its writer was cancelled while waiting: never elect it
        self.error: StoreError | None = None


class GroupCommit(Generic[W]):
    """Batches concurrent writes into transactions, one transaction at a time.

    ``write_batch`` runs in a worker thread under ``limiter``; it writes every record it
    is given in one transaction, or raises (and rolls back). ``name`` (a path, a
    redacted URL) goes into error messages.
    """

    def __init__(self, write_batch: Callable[[Sequence[W]], None], limiter: trio.CapacityLimiter, name: str) -> None:
        self._write_batch = write_batch
        self._limiter = limiter
        self._name = name
        self._queue: list[_Pending[W]] = []
        self._writing = False
        self.transactions = 0
        """Transactions committed so far (one per batch, more when a failed batch was retried)."""

    async def write(self, write: W) -> None:
        """Return once ``write`` is committed; raise :class:`StoreError` if it could not be."""
        entry = _Pending(write)
        self._queue.append(entry)
        if not self._writing:
            self._writing = True
            await self._lead(entry)
        else:
            try:
                await entry.wake.wait()
            except trio.Cancelled:
                entry.abandoned = True
                if entry.lead and not entry.done:  # elected just as it was cancelled: lead anyway, then go
                    await self._lead(entry)
                raise
            if entry.lead:
                await self._lead(entry)
        if entry.error is not None:
            raise entry.error

    async def _lead(self, me: _Pending[W]) -> None:
        with trio.CancelScope(shield=True):
            try:
                # Commit until our own record is in and someone still waiting can take over
                # (records whose writers gave up waiting are committed too, by whoever leads).
                while self._queue and (not me.done or all(e.abandoned for e in self._queue)):
                    batch, self._queue = self._queue[:BATCH_MAX_WRITES], self._queue[BATCH_MAX_WRITES:]
                    await self._commit(batch)
            finally:
                successor = next((e for e in self._queue if not e.abandoned), None)
                if successor is not None:
                    successor.lead = True
                    successor.wake.set()
                else:
                    self._writing = False
                    orphans, self._queue = self._queue, []
                    for e in orphans:  # only left when this leader died of a BaseException
                        self._finish(e, StoreError(f"store {self._name}: the writer stopped"))

    async def _commit(self, batch: list[_Pending[W]]) -> None:
        try:
            try:
                await trio.to_thread.run_sync(self._write_batch, [e.write for e in batch], limiter=self._limiter)
            except Exception as exc:
                if len(batch) == 1:
                    self._finish(batch[0], self._error(exc))
                    return
                for e in batch:  # find the bad record: each alone in its own transaction
                    try:
                        await trio.to_thread.run_sync(self._write_batch, [e.write], limiter=self._limiter)
                    except Exception as one:
                        self._finish(e, self._error(one))
                    else:
                        self.transactions += 1
                        self._finish(e, None)
                return
            self.transactions += 1
            for e in batch:
                self._finish(e, None)
        finally:
            for e in batch:
                if not e.done:
                    self._finish(e, StoreError(f"store {self._name}: the write was interrupted"))

    @staticmethod
    def _finish(entry: _Pending[W], error: StoreError | None) -> None:
        entry.done, entry.error = True, error
        entry.wake.set()

    def _error(self, exc: Exception) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return StoreError(f"store {self._name}: cannot write ({detail[:300]})")
