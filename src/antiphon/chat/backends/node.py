"""The Trio half of a shared run backend: one :class:`Node` per gateway moves runs through it.

Theory of operation
-------------------
With a backend, a :class:`~antiphon.chat.runs.LiveRun` is either the **owner** of its
run (it has a :class:`Replica`: the bookkeeping of what is durable) or a **follower**
(it has a :class:`Follow`: its ChatRun is a replica of a run another node owns, kept
for a client connected here). Three tasks per node do all the I/O, however many runs:

* **writer**: runs whose owner emitted frames are marked dirty (a set insertion and a
  wake-up); the writer takes every dirty run, builds one fenced :class:`Append` each
  (with a snapshot now and then) plus the commands queued for other nodes, and writes
  them in one round trip. A frame reaches a client only once it is durable: the owner
  sets ``visible_through`` and the writer delivers what became visible. So a client
  never holds an event that a process taking the run over would not know.
* **tail**: one :meth:`~antiphon.chat.backends.base.RunBackend.wait` for this node's
  inbox and every followed run's log. Followed frames are applied to the replica and
  delivered to its connection; commands are dispatched (a remote client's message or
  cancel to its run, a claim or attach by a connection elsewhere, which the owner holds
  as a :class:`RemoteHolder`; replies and closes for this node's own connections).
* **renewal**: every third of the lease TTL, one call renews the leases of owned runs,
  checks that nodes holding runs remotely are alive, and looks up the owners of
  followed runs. An owner gone (its lease lapsed) is replaced: the follower takes the
  run over, ends the interrupted turn ``failed`` (``turn_interrupted``), runs the
  turns still queued, and re-sends its client's messages that were never acked.

When the backend cannot be reached the node is *unavailable* (logged once): new
messages are refused with ``backend_unavailable``, running turns wait (their frames are
held back, with backpressure), and everything carries on once it answers again.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import orjson
import trio

from antiphon.chat.backends.base import (
    Command,
    CommandKind,
    NodeId,
    RunBackend,
    TakeOver,
)
from antiphon.chat.backends.replica import Follow, RemoteHolder, Replica
from antiphon.errors import DecodeError, LocalProtocolError, RunBackendError
from antiphon.proto.chat.messages import UserMessage, decode_client_message
from antiphon.proto.chat.snapshot import decode_snapshot
from antiphon.proto.close import CloseCode

if TYPE_CHECKING:
    from antiphon.chat.runs import LiveRun, RunRegistry

__all__ = [
    "END_TOMBSTONE_FACTOR",
    "LEASE_TTL_S",
    "NODE_TTL_FACTOR",
    "OUTBOX_BATCH",
    "RENEWALS_PER_TTL",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "TAIL_BLOCK_S",
    "Node",
]

log = logging.getLogger("antiphon.runs")

LEASE_TTL_S: Final = 10.0
"""How long a run's owner may go silent before another process takes the run over."""
RENEWALS_PER_TTL: Final = 3
"""Leases are renewed this many times per TTL: two renewals can fail before one lapses."""
TAIL_BLOCK_S: Final = 5.0
"""The longest one wait blocks; a changed set of followed runs wakes it at once anyway."""
OUTBOX_BATCH: Final = 1000
"""Commands to other nodes per write."""
RETRY_MIN_S: Final = 0.05
RETRY_MAX_S: Final = 1.0
"""Backoff between attempts while the backend is unreachable: it is back within a second of returning."""
NODE_TTL_FACTOR: Final = 3
"""A node counts as dead once it has not renewed its liveness for this many lease TTLs."""
END_TOMBSTONE_FACTOR: Final = 2
"""An ended run's tombstone lives this many state TTLs, longer than any deposed owner's lease."""


class Node:
    """One gateway's link to a shared run backend; see the module docstring."""

    def __init__(self, backend: RunBackend, registry: RunRegistry, *, lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.backend = backend
        self.registry = registry
        self.lease_ttl_s = lease_ttl_s
        self.available = True
        self.replicas: dict[str, Replica] = {}
        self.followers: dict[str, LiveRun] = {}
        self._dirty: dict[Replica, None] = {}
        self._outbox: list[tuple[NodeId, Command]] = []
        self._writer_wakeup = trio.lowlevel.ParkingLot()
        self._flushed = trio.lowlevel.ParkingLot()
        self._remote: dict[str, RemoteHolder] = {}
        self._conns = itertools.count(1)
        self._taking: set[str] = set()
        self._nursery: trio.Nursery | None = None

    @property
    def id(self) -> NodeId:
        return self.backend.node

    def new_conn(self) -> str:
        """A token naming one of this node's connections to an owner elsewhere."""
        return f"{self.id}/{next(self._conns)}"

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer, tail and renewal tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer)
            nursery.start_soon(self._tail)
            nursery.start_soon(self._renewal)
            task_status.started()

    def register(self, run: LiveRun, *, snapshot_seq: int | None = None) -> Replica:
        """``run`` is owned here: replicate it (nothing is written before it emits its first frame)."""
        replica = Replica(self, run, snapshot_seq=snapshot_seq)
        self.replicas[run.run_id] = replica
        return replica

    def forget(self, run: LiveRun) -> None:
        """``run`` is over here: end it in the backend, or release it, once its last frames are written.

        A follower is just dropped; a run never written, or lost to another owner, too.
        """
        if self.followers.get(run.run_id) is run:
            del self.followers[run.run_id]
        replica = self.replicas.get(run.run_id)
        if replica is None or replica.run is not run or replica.finishing is not None:
            return
        if run.lost or not replica.written:
            self._drop(replica)
            return
        replica.finishing = "release" if run.releasing else "end"
        self.mark(replica)

    async def wait_finished(self, runs: Iterable[LiveRun]) -> None:
        """Return once every one of ``runs`` is written and ended or released, and the commands queued are sent.

        Returns at once while the backend is unreachable: the leases lapse by themselves.
        """
        ids = {r.run_id for r in runs}
        while self.available and (
            self._outbox or any(i in self.replicas and self.replicas[i].finishing is not None for i in ids)
        ):
            await self._flushed.park()

    def mark(self, replica: Replica) -> None:
        if replica not in self._dirty:
            self._dirty[replica] = None
            self._writer_wakeup.unpark()

    def send(self, node: NodeId, command: Command) -> None:
        """Queue a command for another node (written with the next batch, in order)."""
        self._outbox.append((node, command))
        self._writer_wakeup.unpark()

    def _unavailable(self, exc: RunBackendError) -> None:
        if self.available:
            self.available = False
            log.warning("runs backend unavailable: %s; new messages are refused until it is back", exc)
            self._flushed.unpark_all()

    def _back(self) -> None:
        if not self.available:
            self.available = True
            log.warning("runs backend available again")

    # ------------------------------------------------------------------ writer

    async def _writer(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            while not self._dirty and not self._outbox:
                await self._writer_wakeup.park()
            replicas = [r for r in self._dirty if not r.done]
            self._dirty.clear()
            built = [(r, r.build()) for r in replicas]
            appends = [(r, a) for r, a in built if a is not None]
            commands = self._outbox[:OUTBOX_BATCH]
            try:
                if appends or commands:
                    statuses = await self.backend.write([a for _, a in appends], commands)
                    self._back()
                    del self._outbox[: len(commands)]
                    for (r, a), status in zip(appends, statuses, strict=True):
                        r.written_as(a, status)
                for r in replicas:
                    if r.finishing is not None and not r.done and not r.replace and r.flushed == r.run.state.seq:
                        await self._finish(r)
                        self._back()
            except RunBackendError as exc:
                self._unavailable(exc)
                for r in replicas:
                    if not r.done:
                        self.mark(r)
                await trio.sleep(backoff)
                backoff = min(2 * backoff, RETRY_MAX_S)
                continue
            backoff = RETRY_MIN_S
            if not self._outbox:
                self._flushed.unpark_all()

    async def _finish(self, replica: Replica) -> None:
        run = replica.run
        if replica.finishing == "release":
            await self.backend.release(run.run_id)
            for holder in (run.holder, run.claimant):
                if isinstance(holder, RemoteHolder):  # the node serving that client takes the run over
                    self.send(holder.node_id, Command(kind=CommandKind.RELEASED, run_id=run.run_id, conn=holder.conn))
                elif holder is not None:
                    holder.run_lost(CloseCode.SERVICE_RESTART, "server restart: reconnect and resume")
        else:
            ttl = END_TOMBSTONE_FACTOR * replica.lease().state_ttl_s
            await self.backend.end(run.run_id, ttl)
        self._drop(replica)

    def _drop(self, replica: Replica) -> None:
        replica.done = True
        run = replica.run
        if self.replicas.get(run.run_id) is replica:
            del self.replicas[run.run_id]
        for conn, holder in list(self._remote.items()):
            if holder.run is run:
                del self._remote[conn]
        replica.room.unpark_all()
        self._flushed.unpark_all()

    # ------------------------------------------------------------------ tail

    async def _tail(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            follow = {run_id: run.state.seq for run_id, run in self.followers.items()}
            try:
                commands, frames = await self.backend.wait(follow, TAIL_BLOCK_S)
            except RunBackendError as exc:
                self._unavailable(exc)
                await trio.sleep(backoff)
                backoff = min(2 * backoff, RETRY_MAX_S)
                continue
            backoff = RETRY_MIN_S
            self._back()
            for command in commands:
                try:
                    self._dispatch(command)
                except (DecodeError, ValueError) as exc:
                    log.warning("runs: ignoring a %s command for run %s: %s", command.kind, command.run_id, exc)
            for run_id, arrived in frames.items():
                run = self.followers.get(run_id)
                if run is None:
                    continue
                try:
                    run.frames_arrived(arrived)
                except LocalProtocolError as exc:
                    log.warning("%s; reloading it", exc)
                    self._spawn(self._reload, run)

    def _dispatch(self, c: Command) -> None:
        kind = c.kind
        if kind is CommandKind.WAKE:
            return
        if kind in (CommandKind.REPLY, CommandKind.CLOSE, CommandKind.RELEASED):
            follower = self.followers.get(c.run_id)
            if follower is None or follower.follow is None:
                return
            if kind is CommandKind.RELEASED:
                self._spawn(self.take_over, follower)
                return
            holder = follower.follow.holder_for(c.conn)
            if holder is None:
                return
            if kind is CommandKind.REPLY:
                follower.follow.replied(c.body)
                holder.deliver(c.body)
            else:
                code, _, reason = c.body.partition(" ")
                holder.run_lost(int(code), reason)
            return
        run = self.registry.runs.get(c.run_id)
        if run is None or run.follow is not None or run.ended:
            if kind is not CommandKind.DETACH:
                body = f"{int(CloseCode.SERVICE_RESTART)} the run is not here any more: resume again"
                self.send(c.node, Command(kind=CommandKind.CLOSE, run_id=c.run_id, conn=c.conn, body=body))
            return
        if kind is CommandKind.CLAIM:
            claimant = RemoteHolder(self, run, c.conn)
            self._remote[c.conn] = claimant
            run.claim(claimant)
            return
        remote = self._remote.get(c.conn)
        if remote is None or remote.run is not run:
            return
        if kind is CommandKind.ATTACH:
            if run.claimant is remote:
                run.attach(remote)
        elif kind is CommandKind.DETACH:
            del self._remote[c.conn]
            code, _, by_peer = c.body.partition(" ")
            run.detach(remote, code=int(code), by_peer=by_peer == "1")
        elif kind is CommandKind.MESSAGE:
            message = decode_client_message(c.body)
            if isinstance(message, UserMessage):
                run.receive_forwarded(message, remote)
        elif kind is CommandKind.CANCEL and (run.holder is remote or run.claimant is remote):
            id = orjson.loads(c.body)
            if isinstance(id, str | int):
                run.cancel(id)

    # ------------------------------------------------------------------ renewal and takeover

    async def _renewal(self) -> None:
        first = True
        while True:
            if not first:
                await trio.sleep(self.lease_ttl_s / RENEWALS_PER_TTL)
            first = False  # at once at start: other nodes must see this one alive before it claims anything
            owned = [r.lease() for r in self.replicas.values() if r.written and not r.done]
            watch = {h.node_id for h in self._remote.values()}
            try:
                renewal = await self.backend.renew(
                    owned, watch, list(self.followers), node_ttl_s=NODE_TTL_FACTOR * self.lease_ttl_s
                )
            except RunBackendError as exc:
                self._unavailable(exc)
                continue
            self._back()
            for run_id in renewal.lost:
                replica = self.replicas.get(run_id)
                if replica is not None:
                    log.warning("run %s: its lease was taken; letting it go here", run_id)
                    replica.run.lose()
            for run_id in renewal.missing:
                replica = self.replicas.get(run_id)
                if replica is not None and not replica.done:
                    replica.replace = True
                    self.mark(replica)
            for dead in renewal.dead:
                for holder in [h for h in self._remote.values() if h.node_id == dead]:
                    del self._remote[holder.conn]
                    holder.run.detach(holder, code=CloseCode.ABNORMAL, by_peer=True)
            for run_id, owner in renewal.owners.items():
                follower = self.followers.get(run_id)
                if follower is None or follower.follow is None:
                    continue
                if owner is None:
                    self._spawn(self.take_over, follower)
                elif owner != follower.follow.owner:
                    follower.follow.reclaim(owner)

    def _spawn(self, fn: object, run: LiveRun) -> None:
        if self._nursery is not None and run.run_id not in self._taking:
            self._nursery.start_soon(fn, run)  # type: ignore[arg-type]

    async def open_remote(self, run_id: str, path: str, adopt: Callable[[], LiveRun]) -> LiveRun | None:
        """A run owned elsewhere (or by nobody now), followed here by a run ``adopt`` makes; None when there is none.

        Taken over at once when nobody holds its lease. Raises :class:`RunBackendError`
        when the backend cannot be reached.
        """
        stored = await self.backend.load(run_id)
        existing = self.registry.runs.get(run_id)
        if existing is not None and not existing.ended:
            return existing if existing.path == path else None
        if stored is None:
            return None
        try:
            snapshot = decode_snapshot(stored.snapshot)
            if snapshot.path != path:
                return None
            run = adopt()
            run.state.load(snapshot, ((f.seq, f.text, f.request) for f in stored.frames))
        except (LocalProtocolError, DecodeError) as exc:
            log.warning("run %s: it cannot be resumed here (%s)", run_id, exc)
            stale = self.registry.runs.get(run_id)
            if stale is not None and stale.follow is None and not stale.state.owned:
                self.registry._forget(stale)
            return None
        run.follow = Follow(self, run, stored.owner)
        self.followers[run_id] = run
        self.send(self.id, Command(kind=CommandKind.WAKE, run_id=run_id))
        if run.follow.owner is None:
            await self.take_over(run)
        return run

    def unfollow(self, run: LiveRun) -> None:
        """Stop following ``run`` (its connection here is gone): it leaves the registry too."""
        if self.followers.get(run.run_id) is run:
            run.ended = True
            self.registry._forget(run)

    async def _reload(self, run: LiveRun) -> None:
        self._taking.add(run.run_id)
        try:
            stored = await self.backend.load(run.run_id)
            if stored is not None and run.follow is not None:
                run.state.load(decode_snapshot(stored.snapshot), ((f.seq, f.text, f.request) for f in stored.frames))
                run.deliver_visible()
        except (RunBackendError, LocalProtocolError, DecodeError) as exc:
            log.warning("run %s: reloading failed: %s", run.run_id, exc)
        finally:
            self._taking.discard(run.run_id)

    async def take_over(self, run: LiveRun) -> None:
        """Own ``run``, a follower whose owner let its lease lapse (or released it); see the module docstring."""
        if run.run_id in self._taking:
            return
        self._taking.add(run.run_id)
        try:
            status, owner = await self.backend.take_over(run.run_id, self.lease_ttl_s)
            follow = run.follow
            if follow is None:
                return
            if status is TakeOver.HELD:
                if owner is not None and owner != follow.owner:
                    follow.reclaim(owner)  # another process took it first: claim it there
                return
            stored = await self.backend.load(run.run_id) if status is TakeOver.TAKEN else None
            if stored is None:
                log.info("run %s: ended or expired before it could be taken over", run.run_id)
                for holder in (run.holder, run.claimant):
                    if holder is not None:
                        holder.run_lost(CloseCode.SESSION_EXPIRED, "the run ended")
                self.unfollow(run)
                return
            snapshot = decode_snapshot(stored.snapshot)
            state = run.state
            if not stored.frames or stored.frames[-1].seq != state.seq:
                fresh = [f for f in stored.frames if f.seq > state.seq]
                if fresh and fresh[0].seq == state.seq + 1:
                    run.frames_arrived(fresh)
                else:
                    state.load(snapshot, ((f.seq, f.text, f.request) for f in stored.frames))
            log.info("run %s: taken over from %s", run.run_id, follow.owner or "an owner that let it go")
            del self.followers[run.run_id]
            state.owned = True
            run.replica = self.register(run, snapshot_seq=snapshot.seq)
            run.became_owner(follow.forwarded.values())
        except (RunBackendError, LocalProtocolError, DecodeError) as exc:
            log.warning("run %s: taking it over failed (%s); trying again later", run.run_id, exc)
        finally:
            self._taking.discard(run.run_id)
