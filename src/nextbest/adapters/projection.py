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
log = logging.getLogger(__name__)

# KEYS[1] the context key; ARGV: document, its version, TTL in ms, updates channel.
# Returns 1 when written (and published), 0 when Redis already holds this very
# document (a restore hands every restored document over again) or a newer version.
WRITE_IF_NOT_OLDER = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return 0
end
if current then
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


@dataclass(frozen=True, slots=True)
class _Pending:
    version: int
    document: bytes
    applied_at: float  # time.time() when the change was applied


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
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sha: str | None = None  # of WRITE_IF_NOT_OLDER once loaded into Redis

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(
        self, customer_id: str, version: int, document: bytes, *, applied_at: float | None = None
    ) -> None:
        """Queue ``document`` for Redis; never waits. A newer submit replaces an older one.

        ``applied_at`` (``time.time()``, default now) is when the change was
        applied; the mirror lag is measured from the oldest change a write
        carries, so replacing a pending document keeps the older time.
        """
        applied = time.time() if applied_at is None else applied_at
        current = self._pending.get(customer_id)
        if current is None:
            self._pending[customer_id] = _Pending(version, document, applied)
        elif current.version <= version:
            oldest = min(current.applied_at, applied)
            self._pending[customer_id] = _Pending(version, document, oldest)
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Write pending documents until cancelled; retry with back-off when Redis fails."""
        failures = 0
        while True:
            if not self._pending:
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
        self._metrics.mirror_pending.set(len(self._pending))
        try:
            if self._sha is None:
                self._sha = str(await self._client.script_load(WRITE_IF_NOT_OLDER))
            async with self._client.pipeline(transaction=False) as pipe:
                for customer_id, item in batch:
                    pipe.evalsha(
                        self._sha,
                        1,
                        context_key(customer_id),
                        item.document,
                        item.version,
                        self._ttl_ms,
                        updates_channel(customer_id),
                    )
                await pipe.execute()
        except BaseException:
            self._restore(batch)
            raise
        written = time.time()
        for _, item in batch:
            self._metrics.mirror_lag.observe(max(0.0, written - item.applied_at))

    def _restore(self, batch: list[tuple[str, _Pending]]) -> None:
        """Put a failed batch back, unless a newer document arrived meanwhile."""
        for customer_id, item in batch:
            current = self._pending.get(customer_id)
            if current is None or current.version < item.version:
                self._pending[customer_id] = item
        self._metrics.mirror_pending.set(len(self._pending))
