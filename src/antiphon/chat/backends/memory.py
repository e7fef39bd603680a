"""The run-backend interface in one process's memory: several gateways in one Trio program share runs.

``runs = "memory"`` (the default) uses no backend at all: each run lives in its gateway
and nothing is replicated. This module is for what sits between: gateways in one
process that should behave like separate servers sharing a Redis - tests above all,
on the autojump clock, since every lease and TTL here runs on ``trio.current_time()``.

:class:`MemoryRuns` is the shared store; each gateway gets a node of it with
:meth:`MemoryRuns.node`. Setting ``MemoryRuns.down`` makes every call raise
:class:`~antiphon.errors.RunBackendError`, as an unreachable Redis would.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import trio
from attrs import define, field

from antiphon.chat.backends.base import (
    Append,
    AppendStatus,
    Command,
    Frame,
    Lease,
    NodeId,
    Renewal,
    StoredRun,
    TakeOver,
)
from antiphon.errors import RunBackendError

__all__ = [
    "WAIT_MAX_FRAMES",
    "MemoryBackend",
    "MemoryRuns",
]

WAIT_MAX_FRAMES: Final = 1000
"""Frames :meth:`MemoryBackend.wait` returns per run per call (as the Redis backend's COUNT)."""


@define
class _Run:
    frames: list[Frame] = field(factory=list)
    snapshot: str | None = None
    owner: NodeId | None = None
    lease_until: float = 0.0
    state_until: float = math.inf
    ended_until: float = 0.0


class MemoryRuns:
    """Runs shared by the :class:`MemoryBackend` nodes made from it; see the module docstring."""

    def __init__(self) -> None:
        self.runs: dict[str, _Run] = {}
        self.inboxes: dict[NodeId, list[Command]] = {}
        self.nodes_until: dict[NodeId, float] = {}
        self.down = False
        """True: every call raises RunBackendError (an outage, for tests); see :meth:`set_down`."""
        self.changed = trio.lowlevel.ParkingLot()

    def set_down(self, down: bool) -> None:
        """Start (True) or end an outage: calls raise RunBackendError meanwhile, waiting ones too."""
        self.down = down
        self.changed.unpark_all()

    def node(self, name: NodeId | None = None) -> MemoryBackend:
        """A backend for one gateway, as one node."""
        return MemoryBackend(self, name or uuid.uuid4().hex[:12])

    def _live(self, run_id: str) -> _Run | None:
        run = self.runs.get(run_id)
        now = trio.current_time()
        if run is not None and run.state_until <= now and run.ended_until <= now:
            del self.runs[run_id]
            return None
        if run is not None and run.owner is not None and run.lease_until <= now:
            run.owner = None
        return run


class MemoryBackend:
    """One node of :class:`MemoryRuns`; implements :class:`~antiphon.chat.backends.base.RunBackend`."""

    def __init__(self, runs: MemoryRuns, node: NodeId) -> None:
        self.shared = runs
        self.node = node
        self.cut = False
        """True: this node's calls raise RunBackendError (a process cut off or dead, for tests); :meth:`set_cut`."""
        runs.inboxes.setdefault(node, [])

    def set_cut(self, cut: bool) -> None:
        """Cut this node off from the others (True), or let it back: its calls raise meanwhile, waiting ones too."""
        self.cut = cut
        self.shared.changed.unpark_all()

    def _check(self) -> None:
        if self.shared.down or self.cut:
            raise RunBackendError("runs memory: unreachable (as told)")

    async def _enter(self) -> MemoryRuns:
        await trio.lowlevel.checkpoint()
        self._check()
        return self.shared

    async def write(
        self, appends: Sequence[Append], commands: Sequence[tuple[NodeId, Command]] = ()
    ) -> list[AppendStatus]:
        shared = await self._enter()
        statuses = [self._append(shared, a) for a in appends]
        self._deliver(shared, commands)
        shared.changed.unpark_all()
        return statuses

    def _append(self, shared: MemoryRuns, a: Append) -> AppendStatus:
        now = trio.current_time()
        run_id = a.lease.run_id
        run = shared._live(run_id)
        last = a.frames[-1].seq if a.frames else a.after
        if run is not None and (run.ended_until > now or (run.owner is not None and run.owner != self.node)):
            return AppendStatus.LOST
        top = run.frames[-1].seq if run is not None and run.frames else 0
        if a.replace:
            if run is not None and run.snapshot is not None:
                return AppendStatus.LOST
            run = shared.runs[run_id] = _Run()
        elif top != a.after:
            if top == last and last > a.after:
                return AppendStatus.OK  # a retried append that went in
            if run is None or run.snapshot is None:
                return AppendStatus.MISSING
            return AppendStatus.LOST
        elif run is None:
            if a.after > 0:
                return AppendStatus.MISSING
            run = shared.runs[run_id] = _Run()
        elif run.owner is None and a.after > 0 and run.snapshot is None:
            return AppendStatus.MISSING
        if run.owner is None:
            run.owner, run.lease_until = self.node, now + a.lease.lease_ttl_s
        run.frames.extend(a.frames)
        if a.snapshot is not None:
            run.snapshot = a.snapshot
        if a.keep_from is not None:
            run.frames = [f for f in run.frames if f.seq >= a.keep_from]
        run.state_until = now + a.lease.state_ttl_s
        return AppendStatus.OK

    def _deliver(self, shared: MemoryRuns, commands: Iterable[tuple[NodeId, Command]]) -> None:
        for node, command in commands:
            shared.inboxes.setdefault(node, []).append(command)

    async def load(self, run_id: str) -> StoredRun | None:
        shared = await self._enter()
        run = shared._live(run_id)
        if run is None or run.snapshot is None or run.ended_until > trio.current_time():
            return None
        return StoredRun(run.snapshot, list(run.frames), run.owner)

    async def take_over(self, run_id: str, lease_ttl_s: float) -> tuple[TakeOver, NodeId | None]:
        shared = await self._enter()
        run = shared._live(run_id)
        if run is not None and run.owner is not None:
            return TakeOver.HELD, run.owner
        if run is None or run.snapshot is None or run.ended_until > trio.current_time():
            return TakeOver.GONE, None
        run.owner, run.lease_until = self.node, trio.current_time() + lease_ttl_s
        return TakeOver.TAKEN, None

    async def renew(
        self, owned: Sequence[Lease], watch: Iterable[NodeId], follow: Iterable[str], *, node_ttl_s: float
    ) -> Renewal:
        shared = await self._enter()
        now = trio.current_time()
        lost, missing = set(), set()
        for lease in owned:
            run = shared._live(lease.run_id)
            if run is not None and run.ended_until > now:
                lost.add(lease.run_id)
            elif run is None or run.snapshot is None:
                missing.add(lease.run_id)
            elif run.owner == self.node or (run.owner is None and run.ended_until <= now):
                run.owner, run.lease_until = self.node, now + lease.lease_ttl_s
                run.state_until = now + lease.state_ttl_s
            else:
                lost.add(lease.run_id)
        shared.nodes_until[self.node] = now + node_ttl_s
        dead = {n for n in watch if shared.nodes_until.get(n, math.inf) <= now}
        owners = {}
        for run_id in follow:
            run = shared._live(run_id)
            owners[run_id] = run.owner if run is not None else None
        return Renewal(lost=lost, dead=dead, owners=owners, missing=missing)

    async def release(self, run_id: str) -> None:
        shared = await self._enter()
        run = shared._live(run_id)
        if run is not None and run.owner == self.node:
            run.owner = None
        shared.changed.unpark_all()

    async def end(self, run_id: str, ttl_s: float) -> None:
        shared = await self._enter()
        run = shared._live(run_id)
        if run is not None and run.owner not in (None, self.node):
            return
        shared.runs[run_id] = _Run(ended_until=trio.current_time() + ttl_s, state_until=0.0)

    async def send(self, commands: Sequence[tuple[NodeId, Command]]) -> None:
        shared = await self._enter()
        self._deliver(shared, commands)
        shared.changed.unpark_all()

    async def wait(self, follow: Mapping[str, int], timeout_s: float) -> tuple[list[Command], dict[str, list[Frame]]]:
        shared = await self._enter()
        with trio.move_on_after(timeout_s):
            while True:
                self._check()
                inbox = shared.inboxes.setdefault(self.node, [])
                commands, inbox[:] = list(inbox), []
                frames: dict[str, list[Frame]] = {}
                for run_id, seq in follow.items():
                    run = shared._live(run_id)
                    if run is not None:
                        new = [f for f in run.frames if f.seq > seq][:WAIT_MAX_FRAMES]
                        if new:
                            frames[run_id] = new
                if commands or frames:
                    return commands, frames
                await shared.changed.park()
        return [], {}

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
