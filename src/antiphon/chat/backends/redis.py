"""The run-backend interface on Redis (5.0 or newer): Streams for logs and inboxes, Lua for fencing.

Keys (``{run}`` and ``{node}`` are Redis Cluster hash tags, so each run's keys share a slot)::

    antiphon:run:{R}:events   stream   the run's frames, entry id "{seq}-0", fields t (text), r (request)
    antiphon:run:{R}:state    string   the latest snapshot (JSON)
    antiphon:run:{R}:lease    string   the owner's node id, PX lease TTL
    antiphon:run:{R}:ended    string   a tombstone: the run ended; no deposed owner may bring it back
    antiphon:node:{N}         string   the node is alive, PX 3 lease TTLs
    antiphon:node:{N}:inbox   stream   commands for the node (MAXLEN ~ 10000)

A run's events and state expire ``state_ttl`` after its owner last wrote or renewed
(``resume_grace`` plus the lease TTL); its frames are trimmed (XTRIM MINID) to what a
resume replays and what a rebuild needs. A writer batch is one Lua call (a few for
hundreds of runs) that, for each run, checks the lease and the log's last id before it
writes (a deposed owner, or a retried append, cannot write), so coredis' own retries
are off and the caller retries.
A node waits on its inbox and every run it follows with one XREAD BLOCK (one
connection per process, however many runs); another node wakes it with an XADD.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import coredis
import coredis.exceptions
from coredis.retry import NoRetryPolicy

from antiphon.chat.backends.base import (
    Append,
    AppendStatus,
    Command,
    CommandKind,
    Frame,
    Lease,
    NodeId,
    Renewal,
    StoredRun,
    TakeOver,
)
from antiphon.chat.store.records import redact_url
from antiphon.errors import RunBackendError

__all__ = [
    "APPEND_CHUNK_RUNS",
    "CONNECT_TIMEOUT_S",
    "INBOX_MAX_ENTRIES",
    "INBOX_TTL_S",
    "RENEW_CHUNK_RUNS",
    "WAIT_MAX_FRAMES",
    "RedisBackend",
    "open_redis_backend",
]

log = logging.getLogger("antiphon.runs")

INBOX_MAX_ENTRIES: Final = 10_000
"""Commands an inbox keeps (approximately): far more than a node reads between two waits."""
INBOX_TTL_S: Final = 60.0
"""An inbox outlives its node by at most this much (its node refreshes it at every renewal)."""
WAIT_MAX_FRAMES: Final = 1000
"""Entries one XREAD returns per stream: bounds one wait's memory; the rest come with the next."""
RENEW_CHUNK_RUNS: Final = 1000
"""Runs per renewal script call: one call blocks Redis for well under a millisecond."""
APPEND_CHUNK_RUNS: Final = 256
"""Runs per append script call (a writer batch is one call, or a few): bounds how long one call holds Redis."""
CONNECT_TIMEOUT_S: Final = 5.0
"""How long connecting to Redis may take at start before ``serve`` gives up."""

_APPEND: Final = """
-- Every run of a batch in one call: KEYS are 4 per run (lease, events, state, ended);
-- ARGV is the node, then per run: lease ms, state ms, after, snapshot, keep_from,
-- replace, n, then n times (seq, text, request). Returns one status per run.
local node, a, out = ARGV[1], 2, {}
for r = 0, #KEYS / 4 - 1 do
  local lease, events, state, ended = KEYS[r * 4 + 1], KEYS[r * 4 + 2], KEYS[r * 4 + 3], KEYS[r * 4 + 4]
  local after, n = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 6])
  local first = a + 7
  local last = after
  if n > 0 then last = tonumber(ARGV[first + (n - 1) * 3]) end
  local owner = redis.call('GET', lease)
  local top = 0
  local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
  if newest[1] then top = tonumber(string.match(newest[1][1], '^(%d+)')) end
  local status = 'ok'
  if owner ~= node or top ~= after or after == 0 or ARGV[a + 5] == '1' then
    -- Not the usual case (our lease, the log where we left it): look closer.
    local stored = redis.call('EXISTS', state) == 1
    if (owner and owner ~= node) or redis.call('EXISTS', ended) == 1 then
      status = 'lost'
    elseif ARGV[a + 5] == '1' then
      if stored then status = 'lost' else redis.call('DEL', events) end
    elseif top ~= after then
      if top == last and last > after then status = 'done'
      elseif not stored then status = 'missing' else status = 'lost' end
    elseif after > 0 and not stored then
      status = 'missing'
    end
    if status == 'ok' and not owner then redis.call('SET', lease, node, 'PX', ARGV[a]) end
  end
  if status == 'ok' then
    for i = 0, n - 1 do
      local b = first + i * 3
      if ARGV[b + 2] == '' then
        redis.call('XADD', events, ARGV[b] .. '-0', 't', ARGV[b + 1])
      else
        redis.call('XADD', events, ARGV[b] .. '-0', 't', ARGV[b + 1], 'r', ARGV[b + 2])
      end
    end
    if ARGV[a + 3] ~= '' then redis.call('SET', state, ARGV[a + 3], 'PX', ARGV[a + 1]) end
    if ARGV[a + 4] ~= '' then redis.call('XTRIM', events, 'MINID', ARGV[a + 4]) end
    if n > 0 and (after == 0 or ARGV[a + 5] == '1') then redis.call('PEXPIRE', events, ARGV[a + 1]) end
  end
  if status == 'done' then status = 'ok' end
  out[r + 1] = status
  a = first + n * 3
end
return out
"""

_TAKE_OVER: Final = """
local owner = redis.call('GET', KEYS[1])
if owner then return {'held', owner} end
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[2]) == 0 then return {'gone', ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'taken', ''}
"""

_RENEW: Final = """
local node, lost, missing = ARGV[1], {}, {}
for i = 0, #KEYS / 4 - 1 do
  local k, lease_ms, state_ms = i * 4, ARGV[2 + i * 2], ARGV[3 + i * 2]
  local owner = redis.call('GET', KEYS[k + 1])
  if redis.call('EXISTS', KEYS[k + 4]) == 1 or (owner and owner ~= node) then
    table.insert(lost, i)
  elseif redis.call('EXISTS', KEYS[k + 3]) == 0 then
    table.insert(missing, i)
  else
    redis.call('SET', KEYS[k + 1], node, 'PX', lease_ms)
    redis.call('PEXPIRE', KEYS[k + 2], state_ms)
    redis.call('PEXPIRE', KEYS[k + 3], state_ms)
  end
end
return {lost, missing}
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

_END: Final = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SET', KEYS[4], '1', 'PX', ARGV[2])
return 1
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBackend:
    """:class:`~antiphon.chat.backends.base.RunBackend` on a coredis client; open with :func:`open_redis_backend`."""

    def __init__(self, client: coredis.Redis[str], node: NodeId, name: str, prefix: str = "antiphon:") -> None:
        self.client = client
        self.node = node
        self.name = name
        self.prefix = prefix
        self._inbox_key = self._node_key(node) + ":inbox"
        self._inbox_after = "0-0"
        self._append = client.register_script(_APPEND)
        self._take_over = client.register_script(_TAKE_OVER)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._end = client.register_script(_END)

    # ------------------------------------------------------------------ keys

    def _run_keys(self, run_id: str) -> list[str]:
        base = f"{self.prefix}run:{{{run_id}}}:"
        return [base + "lease", base + "events", base + "state", base + "ended"]

    def _node_key(self, node: NodeId) -> str:
        return f"{self.prefix}node:{{{node}}}"

    def _error(self, exc: BaseException, doing: str) -> RunBackendError:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return RunBackendError(f"runs {self.name}: {doing} failed ({detail[:200]})")

    # ------------------------------------------------------------------ the interface

    async def write(
        self, appends: Sequence[Append], commands: Sequence[tuple[NodeId, Command]] = ()
    ) -> list[AppendStatus]:
        if not appends and not commands:
            return []
        chunks = [appends[i : i + APPEND_CHUNK_RUNS] for i in range(0, len(appends), APPEND_CHUNK_RUNS)]
        try:
            async with self.client.pipeline(transaction=False, raise_on_error=False) as p:
                results: list[Any] = []
                for chunk in chunks:
                    keys: list[str] = []
                    args: list[str | int] = [self.node]
                    for a in chunk:
                        keys += self._run_keys(a.lease.run_id)
                        args += _append_args(a)
                    results.append(self._append(keys, args, client=p))
                self._queue_commands(p, commands)
            statuses: list[AppendStatus] = []
            for chunk, result in zip(chunks, results, strict=True):
                try:
                    statuses += [AppendStatus(str(s)) for s in await result]
                except coredis.exceptions.ResponseError as exc:
                    log.error("runs %s: appending to %d runs failed: %s", self.name, len(chunk), exc)
                    statuses += [AppendStatus.LOST] * len(chunk)
            return statuses
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "writing") from None

    def _queue_commands(self, p: Any, commands: Iterable[tuple[NodeId, Command]]) -> None:
        for node, c in commands:
            inbox = self._node_key(node) + ":inbox"
            fields = {"k": str(c.kind), "run": c.run_id, "c": c.conn, "b": c.body}
            p.xadd(
                inbox,
                fields,
                trim_strategy=coredis.PureToken.MAXLEN,
                threshold=INBOX_MAX_ENTRIES,
                trim_operator=coredis.PureToken.APPROXIMATELY,
            )
            p.pexpire(inbox, _ms(INBOX_TTL_S))

    async def load(self, run_id: str) -> StoredRun | None:
        lease, events, state, ended = self._run_keys(run_id)
        try:
            async with self.client.pipeline(transaction=True) as p:
                snapshot = p.get(state)
                entries = p.xrange(events)
                owner = p.get(lease)
                gone = p.exists([ended])
            text, stored, holder, tombstone = await snapshot, await entries, await owner, await gone
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "loading a run") from None
        if text is None or tombstone:
            return None
        return StoredRun(text, [_frame(e) for e in stored], holder)

    async def take_over(self, run_id: str, lease_ttl_s: float) -> tuple[TakeOver, NodeId | None]:
        lease, events, state, ended = self._run_keys(run_id)
        try:
            reply: Any = await self._take_over([lease, state, ended], [self.node, _ms(lease_ttl_s)])
            status, owner = str(reply[0]), str(reply[1])
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "taking a run over") from None
        return TakeOver(status), owner or None

    async def renew(
        self, owned: Sequence[Lease], watch: Iterable[NodeId], follow: Iterable[str], *, node_ttl_s: float
    ) -> Renewal:
        watched, followed = list(watch), list(follow)
        chunks = [owned[i : i + RENEW_CHUNK_RUNS] for i in range(0, len(owned), RENEW_CHUNK_RUNS)]
        try:
            async with self.client.pipeline(transaction=False) as p:
                renewals: list[Any] = []
                for chunk in chunks:
                    keys: list[str] = []
                    args: list[str | int] = [self.node]
                    for lease in chunk:
                        keys += self._run_keys(lease.run_id)
                        args += [_ms(lease.lease_ttl_s), _ms(lease.state_ttl_s)]
                    renewals.append(self._renew(keys, args, client=p))
                p.set(self._node_key(self.node), "1", px=_ms(node_ttl_s))
                p.pexpire(self._inbox_key, _ms(INBOX_TTL_S))
                alive = p.mget([self._node_key(n) for n in watched]) if watched else None
                owners = p.mget([self._run_keys(r)[0] for r in followed]) if followed else None
            lost: set[str] = set()
            missing: set[str] = set()
            for chunk, result in zip(chunks, renewals, strict=True):
                lost_at, missing_at = await result
                lost.update(chunk[int(i)].run_id for i in lost_at)
                missing.update(chunk[int(i)].run_id for i in missing_at)
            dead = {n for n, v in zip(watched, await alive, strict=True) if v is None} if alive is not None else set()
            holders = dict(zip(followed, await owners, strict=True)) if owners is not None else {}
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "renewing leases") from None
        return Renewal(lost=lost, dead=dead, owners=holders, missing=missing)

    async def release(self, run_id: str) -> None:
        try:
            await self._release([self._run_keys(run_id)[0]], [self.node])
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "releasing a run") from None

    async def end(self, run_id: str, ttl_s: float) -> None:
        try:
            await self._end(self._run_keys(run_id), [self.node, _ms(ttl_s)])
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "ending a run") from None

    async def send(self, commands: Sequence[tuple[NodeId, Command]]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as p:
                self._queue_commands(p, commands)
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "sending commands") from None

    async def wait(self, follow: Mapping[str, int], timeout_s: float) -> tuple[list[Command], dict[str, list[Frame]]]:
        streams = {self._inbox_key: self._inbox_after}
        by_key = {}
        for run_id, seq in follow.items():
            key = self._run_keys(run_id)[1]
            streams[key] = f"{seq}-0"
            by_key[key] = run_id
        try:
            found = await self.client.xread(streams, count=WAIT_MAX_FRAMES, block=_ms(timeout_s))
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise self._error(exc, "waiting") from None
        commands: list[Command] = []
        frames: dict[str, list[Frame]] = {}
        for key, entries in (found or {}).items():
            if key == self._inbox_key:
                for e in entries:
                    self._inbox_after = str(e.identifier)
                    fv = e.field_values
                    try:
                        kind = CommandKind(str(fv["k"]))
                        commands.append(
                            Command(
                                kind=kind, run_id=str(fv["run"]), conn=str(fv.get("c", "")), body=str(fv.get("b", ""))
                            )
                        )
                    except (KeyError, ValueError):
                        log.warning(
                            "runs %s: ignoring an inbox entry this version does not know: %r", self.name, dict(fv)
                        )
            elif key in by_key:
                frames[by_key[key]] = [_frame(e) for e in entries]
        return commands, frames

    async def aclose(self) -> None:
        """Nothing to do: :func:`open_redis_backend` closes the client."""


def _append_args(a: Append) -> list[str | int]:
    args: list[str | int] = [
        _ms(a.lease.lease_ttl_s),
        _ms(a.lease.state_ttl_s),
        a.after,
        a.snapshot or "",
        "" if a.keep_from is None else a.keep_from,
        "1" if a.replace else "0",
        len(a.frames),
    ]
    for f in a.frames:
        args += [f.seq, f.text, f.request or ""]
    return args


def _frame(entry: Any) -> Frame:
    fv = entry.field_values
    return Frame(int(entry.identifier.partition("-")[0]), fv["t"], fv.get("r"))


@asynccontextmanager
async def open_redis_backend(url: str, node: NodeId) -> AsyncIterator[RedisBackend]:
    """Connect to Redis at ``url`` for the block; raise :class:`RunBackendError` (one line) when it cannot be reached.

    An exception from the block comes out as itself, not wrapped in coredis' task group.
    """
    name = redact_url(url)
    try:
        client: coredis.Redis[str] = coredis.Redis.from_url(
            url, decode_responses=True, retry_policy=NoRetryPolicy(), connect_timeout=CONNECT_TIMEOUT_S
        )
    except (ValueError, coredis.exceptions.RedisError) as exc:
        raise RunBackendError(f"runs {name}: not a usable Redis URL ({exc})") from None
    try:
        async with client:
            try:
                await client.ping()
            except (coredis.exceptions.RedisError, OSError) as exc:
                raise RunBackendError(f"runs {name}: cannot connect ({' '.join(str(exc).split())})") from None
            yield RedisBackend(client, node, name)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) != 1:
            raise
        leaf = leaves[0]
        if isinstance(leaf, coredis.exceptions.RedisError | OSError):
            raise RunBackendError(f"runs {name}: cannot connect ({' '.join(str(leaf).split())})") from None
        raise leaf from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out
