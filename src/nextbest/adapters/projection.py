"""The Redis mirror of live contexts (contract §6).

Key ``nextbest:context:<customer id>`` holds the JSON document with a TTL
renewed on every change. A Lua script writes only when the stored ``version``
is not newer, so an older document never replaces a newer one, and publishes
each document it stores on ``nextbest:updates:<customer id>`` for the API's
live streams.

:class:`RedisMirror` never blocks the stream: :meth:`RedisMirror.submit` only
records the newest document per customer; a background task writes what is
pending in pipelined batches. When Redis is unreachable it counts the error,
keeps the newest document of every changed customer and writes them when Redis
answers again.

Contract v0.2 adds three kinds of write, queued the same way:

* a **delete** of a profile's context key (a profile merged away, renamed or
  erased), which also publishes an empty message so that open streams end;
  a write of the same key queued after it wins and is unconditional (the key
  was deleted), one queued before it is dropped;
* the **identity keys** ``nextbest:identity:<type>:<id>`` -> profile id (§10),
  set or deleted, newest wins per key, written by the one partition that owns
  that identifier's directory entry so writes of one key are never reordered;
* a TTL renewal (``PEXPIRE``) of a profile's identity keys with each write of
  its document, from wherever the profile lives.

A delete may carry a token: once Redis has done it, :meth:`RedisMirror.done`
gives the token back to the partition that asked, which then forgets the
durable record of it (erasure must reach Redis even across a crash).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from nextbest.metrics import Metrics

KEY_PREFIX = "nextbest:context:"
UPDATES_PREFIX = "nextbest:updates:"
IDENTITY_PREFIX = "nextbest:identity:"  # contract §10: <type>:<id> -> profile id
log = logging.getLogger(__name__)

# KEYS[1] the context key; ARGV: document, its version, TTL in ms, updates channel,
# "1" to write whatever version Redis holds (the key was deleted since: a profile that
# left and came back). Returns 1 when written (and published), 0 when Redis already
# holds this very document (a restore hands every restored document over again) or,
# unless forced, a newer version.
WRITE_IF_NOT_OLDER = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return 0
end
if current and ARGV[5] ~= '1' then
  local ok, stored = pcall(cjson.decode, current)
  if ok and type(stored) == 'table' then
    local version = tonumber(stored['version'])
    if version and version > tonumber(ARGV[2]) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"""


def context_key(customer_id: str) -> str:
    return KEY_PREFIX + customer_id


def updates_channel(customer_id: str) -> str:
    return UPDATES_PREFIX + customer_id


def identity_key(kind: str, value: str) -> str:
    return f"{IDENTITY_PREFIX}{kind}:{value}"


Token = tuple[int, bytes]  # (partition, table key): who asked for a durable delete


@dataclass(frozen=True, slots=True)
class _Pending:
    version: int
    document: bytes | None  # None: delete the key
    applied_at: float  # time.time() when the change was applied
    force: bool = False  # write whatever version Redis holds
    token: Token | None = None

    def _replace_force(self) -> _Pending:
        return _Pending(self.version, self.document, self.applied_at, True, self.token)


@dataclass(frozen=True, slots=True)
class _KeyWrite:
    value: str | None  # None: delete
    token: Token | None = None


class RedisMirror:
    """Mirrors context documents to Redis in the background, newest version wins."""

    def __init__(
        self,
        client: Redis,
        metrics: Metrics,
        *,
        ttl: timedelta,
        batch_size: int = 500,
        gather: float = 0.005,
        retry_delays: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._ttl_ms = int(ttl.total_seconds() * 1000)
        self._batch_size = batch_size
        self._gather = gather
        self._retry_delays = retry_delays
        self._pending: dict[str, _Pending] = {}
        self._keys: dict[str, _KeyWrite] = {}  # identity keys to set or delete
        self._touch: set[str] = set()  # identity keys whose TTL to renew
        self._done: dict[int, list[bytes]] = {}  # partition -> tokens of deletes done
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sha: str | None = None  # of WRITE_IF_NOT_OLDER once loaded into Redis

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._keys) + len(self._touch)

    def submit(
        self,
        customer_id: str,
        version: int,
        document: bytes,
        *,
        applied_at: float | None = None,
        force: bool = False,
        touch: tuple[str, ...] = (),
    ) -> None:
        """Queue ``document`` for Redis; never waits. A newer submit replaces an older one.

        ``applied_at`` (``time.time()``, default now) is when the change was
        applied; the mirror lag is measured from the oldest change a write
        carries, so replacing a pending document keeps the older time.
        ``force``: write whatever version Redis holds (the profile's key was
        deleted or taken over since). ``touch``: identity keys whose TTL to renew.
        """
        applied = time.time() if applied_at is None else applied_at
        current = self._pending.get(customer_id)
        if current is None:
            self._pending[customer_id] = _Pending(version, document, applied, force)
        elif current.document is None:  # written again after a delete: whatever Redis holds
            self._pending[customer_id] = _Pending(version, document, applied, True)
        elif current.version <= version:
            oldest = min(current.applied_at, applied)
            self._pending[customer_id] = _Pending(version, document, oldest, force or current.force)
        self._touch.update(touch)
        self._wake()

    def delete(self, customer_id: str, *, token: Token | None = None) -> None:
        """Queue the deletion of a profile's context (merged away, renamed, erased)."""
        current = self._pending.get(customer_id)
        applied = current.applied_at if current is not None else time.time()
        self._pending[customer_id] = _Pending(-1, None, applied, token=token)
        self._wake()

    def set_identity(self, key: str, profile_id: str) -> None:
        """Queue ``nextbest:identity:<type>:<id>`` (``key``) -> ``profile_id``."""
        self._keys[key] = _KeyWrite(profile_id)
        self._touch.discard(key)
        self._wake()

    def delete_identity(self, key: str, *, token: Token | None = None) -> None:
        self._keys[key] = _KeyWrite(None, token)
        self._touch.discard(key)
        self._wake()

    def done(self, partition: int) -> list[bytes]:
        """The table keys of the durable deletes of ``partition`` that Redis has done."""
        return self._done.pop(partition, [])

    def _wake(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Write pending documents until cancelled; retry with back-off when Redis fails."""
        failures = 0
        while True:
            if not (self._pending or self._keys or self._touch):
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                # let a few ms of changes gather: fewer, fuller pipelines and
                # repeated changes of one customer written once
                await asyncio.sleep(self._gather)
            try:
                await self._flush_batch()
                failures = 0
            except NoScriptError:  # Redis restarted or flushed its script cache
                self._sha = None
            except (RedisError, OSError) as error:
                self._metrics.redis_errors.inc()
                delay = self._retry_delays[min(failures, len(self._retry_delays) - 1)]
                if failures == 0:
                    log.warning("Redis mirror write failed (%s); retrying", type(error).__name__)
                failures += 1
                await asyncio.sleep(delay)

    async def drained(self, within: float) -> bool:
        """Wait until nothing is pending; False if ``within`` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    async def _flush_batch(self) -> None:
        batch: list[tuple[str, _Pending]] = []
        for customer_id in list(self._pending)[: self._batch_size]:
            batch.append((customer_id, self._pending.pop(customer_id)))
        keys = [(key, self._keys.pop(key)) for key in list(self._keys)[: self._batch_size]]
        touch = [self._touch.pop() for _ in range(min(len(self._touch), self._batch_size))]
        self._metrics.mirror_pending.set(len(self._pending))
        try:
            if self._sha is None:
                self._sha = str(await self._client.script_load(WRITE_IF_NOT_OLDER))
            async with self._client.pipeline(transaction=False) as pipe:
                for customer_id, item in batch:
                    if item.document is None:
                        pipe.delete(context_key(customer_id))
                        pipe.publish(updates_channel(customer_id), b"")  # open streams end
                        continue
                    pipe.evalsha(
                        self._sha,
                        1,
                        context_key(customer_id),
                        item.document,
                        item.version,
                        self._ttl_ms,
                        updates_channel(customer_id),
                        "1" if item.force else "0",
                    )
                for key, write in keys:
                    if write.value is None:
                        pipe.delete(key)
                    else:
                        pipe.set(key, write.value, px=self._ttl_ms)
                for key in touch:
                    pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()
        except BaseException:
            self._restore(batch, keys, touch)
            raise
        written = time.time()
        for _, item in batch:
            if item.document is not None:
                self._metrics.mirror_lag.observe(max(0.0, written - item.applied_at))
        for token in [i.token for _, i in batch] + [w.token for _, w in keys]:
            if token is not None:
                self._done.setdefault(token[0], []).append(token[1])

    def _restore(
        self,
        batch: list[tuple[str, _Pending]],
        keys: list[tuple[str, _KeyWrite]],
        touch: list[str],
    ) -> None:
        """Put a failed batch back, unless something newer arrived meanwhile."""
        for customer_id, item in batch:
            current = self._pending.get(customer_id)
            if current is None:
                self._pending[customer_id] = item
            elif current.document is not None and item.document is None:
                # deleted, then written again: the write must not meet the old document
                self._pending[customer_id] = current._replace_force()
            elif current.document is not None and current.version < item.version:
                self._pending[customer_id] = item
        for key, write in keys:
            self._keys.setdefault(key, write)
        self._touch.update(touch)
        self._metrics.mirror_pending.set(len(self._pending))
