"""The run-backend interface: what a chat run needs to be shared between processes.

Theory of operation
-------------------
Without a backend (``runs = "memory"``, the default) a run lives in one process's
memory and nothing here is used. With one, every run has one **owner**: the process
that holds its **lease** (a key with a TTL, renewed while the owner lives) and alone
runs its turns and numbers its events. The backend keeps, per run:

* the **event log**: every frame clients receive, by ``seq``, each ``ack`` with the
  request it acknowledges (:class:`Frame`). It holds what a resume replays (about
  ``replay_max_bytes``) and at least everything since the last snapshot;
* a **snapshot** of the run's state at some ``seq``
  (:class:`~antiphon.proto.chat.snapshot.RunSnapshot`: numbering, the message ids accepted
  within :data:`MESSAGE_ID_WINDOW_S`, history within ``history_max_chars``, pending turns
  with their partial text). The snapshot plus the frames after it rebuild the run;
* the **lease**, naming the owner's node.

Each process (a *node*) also has an **inbox**: other nodes send it :class:`Command`\\ s -
a client's ``message`` or ``cancel`` for a run it owns, a connection's claim, attach
or detach, or a reply for one of its own connections.

The owner appends frames before any client sees them (:meth:`RunBackend.write`), fenced:
an append names the ``seq`` the log must end at, so a deposed owner, or a retried
append, can never write. Another node serving a client of the run reads the log
(:meth:`RunBackend.load`), then follows it live (:meth:`RunBackend.wait`, one call for
every run the node follows plus its inbox). When the owner's lease lapses, any node
may :meth:`~RunBackend.take_over` the run and rebuild it from the snapshot and the log.

Every method raises :class:`~antiphon.errors.RunBackendError` when the backend cannot be
reached; the caller retries. Implementations: :mod:`.memory` (one process's memory, for
tests and several gateways in one process) and :mod:`.redis` (Redis Streams).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol, TypeAlias

from attrs import frozen

__all__ = [
    "MESSAGE_ID_WINDOW_S",
    "Append",
    "AppendStatus",
    "Command",
    "CommandKind",
    "Frame",
    "Lease",
    "NodeId",
    "Renewal",
    "RunBackend",
    "StoredRun",
    "TakeOver",
]

NodeId: TypeAlias = str
"""A process serving runs (random per start): leases and inboxes are named by it."""

MESSAGE_ID_WINDOW_S: Final = 300.0
"""How long an accepted message id stays known to a process that takes a run over (as Centrifugo and NATS do)."""


@frozen
class Frame:
    """One frame of a run's log: its ``seq``, its wire text and, for an ``ack``, the request behind it."""

    seq: int
    text: str
    request: str | None = None
    """:func:`~antiphon.proto.chat.snapshot.encode_request` text; clients never see it."""


@frozen(kw_only=True)
class Lease:
    """A run the caller owns, with the TTLs to keep: the lease's, and the state's (log and snapshot)."""

    run_id: str
    lease_ttl_s: float
    state_ttl_s: float


@frozen(kw_only=True)
class Append:
    """Frames for one run's log, from its owner; see :meth:`RunBackend.write`."""

    lease: Lease
    frames: Sequence[Frame]
    after: int
    """The ``seq`` the log ends at now (0: a new run); anything else means another writer."""
    snapshot: str | None = None
    """A new snapshot, taken at the last frame's ``seq`` (at ``after`` when there are no frames)."""
    keep_from: int | None = None
    """Frames below this ``seq`` may be dropped."""
    replace: bool = False
    """The backend lost this run (it restarted empty): start its log afresh from ``frames``."""


class AppendStatus(enum.Enum):
    """What became of an :class:`Append`."""

    OK = "ok"
    LOST = "lost"
    """Another node owns the run, or its log moved on: stop owning it, write nothing more."""
    MISSING = "missing"
    """The backend holds nothing of the run any more: append it again whole (``replace``)."""


class CommandKind(enum.StrEnum):
    """What an inbox entry asks of the node that reads it."""

    CLAIM = "claim"  # to the owner: a connection elsewhere resumes the run (it stops receiving live)
    ATTACH = "attach"  # to the owner: that connection caught up; it holds the run now
    DETACH = "detach"  # to the owner: that connection ended (body: "code by_peer")
    MESSAGE = "message"  # to the owner: a client's message (body: the client frame)
    CANCEL = "cancel"  # to the owner: a client's cancel (body: the id as JSON)
    REPLY = "reply"  # to a connection's node: a frame without seq for it (body: the text)
    CLOSE = "close"  # to a connection's node: close it (body: "code reason")
    RELEASED = "released"  # to a connection's node: the owner let the run go; take it over
    WAKE = "wake"  # to oneself: stop waiting, the set of followed runs changed


@frozen(kw_only=True)
class Command:
    """One inbox entry; ``conn`` names the connection it is from or for (``"node/number"``)."""

    kind: CommandKind
    run_id: str
    conn: str = ""
    body: str = ""

    @property
    def node(self) -> NodeId:
        """The node of ``conn``."""
        return self.conn.partition("/")[0]


@frozen
class StoredRun:
    """What :meth:`RunBackend.load` found of a run: its latest snapshot, every frame held, its owner."""

    snapshot: str
    frames: list[Frame]
    owner: NodeId | None


class TakeOver(enum.Enum):
    TAKEN = "taken"  # the caller owns the run now
    HELD = "held"  # a live node holds the lease
    GONE = "gone"  # the run ended, or expired


@frozen
class Renewal:
    """What :meth:`RunBackend.renew` found."""

    lost: set[str]
    """Runs the caller thought it owned and does not."""
    dead: set[NodeId]
    """Watched nodes that stopped renewing."""
    owners: dict[str, NodeId | None]
    """The current lease holder of each followed run (None: nobody; it can be taken over)."""
    missing: set[str]
    """Owned runs the backend holds nothing of (it restarted empty): append them again whole."""


class RunBackend(Protocol):
    """Shared state of chat runs; see the module docstring. Every method may raise RunBackendError."""

    node: NodeId

    async def write(
        self, appends: Sequence[Append], commands: Sequence[tuple[NodeId, Command]] = ()
    ) -> list[AppendStatus]:
        """Append frames to runs' logs (fenced by the lease and ``after``), and send commands, in one go.

        A new run (``after == 0``, nothing stored) gets its lease here. A retried append
        whose frames are in already answers OK.
        """
        ...

    async def load(self, run_id: str) -> StoredRun | None:
        """The run's snapshot, frames and owner; None when the backend has no such run (ended, expired)."""
        ...

    async def take_over(self, run_id: str, lease_ttl_s: float) -> tuple[TakeOver, NodeId | None]:
        """Take the lease of a run whose owner let it lapse; ``(HELD, owner)`` when one holds it."""
        ...

    async def renew(
        self, owned: Sequence[Lease], watch: Iterable[NodeId], follow: Iterable[str], *, node_ttl_s: float
    ) -> Renewal:
        """Renew ``owned`` runs' leases and this node's liveness (``node_ttl_s``).

        Also checks the ``watch`` nodes and the owners of ``follow`` runs.
        """
        ...

    async def release(self, run_id: str) -> None:
        """Let go of the lease, keeping the run: another node may take it over at once."""
        ...

    async def end(self, run_id: str, ttl_s: float) -> None:
        """The run is over: drop its log and snapshot; for ``ttl_s`` a deposed owner cannot bring it back."""
        ...

    async def send(self, commands: Sequence[tuple[NodeId, Command]]) -> None:
        """Add commands to nodes' inboxes."""
        ...

    async def wait(self, follow: Mapping[str, int], timeout_s: float) -> tuple[list[Command], dict[str, list[Frame]]]:
        """Wait until this node's inbox has commands or a followed run has frames past its ``seq``.

        Returns what arrived (possibly nothing, after ``timeout_s``). Each command is
        returned once; frames are returned by run, in order, up to a bounded number per call.
        """
        ...

    async def aclose(self) -> None: ...
