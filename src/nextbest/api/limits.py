"""Per-client request rate limits: a token bucket per client, ``now`` passed in."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """``rate`` requests per second per client, bursts of up to ``burst``.

    Remembers at most ``clients`` clients (least recently seen forgotten first),
    so memory stays bounded whatever the callers send.
    """

    def __init__(self, rate: float, burst: int, clients: int = 10_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clients = clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, client: str, now: float) -> float:
        """0 when the request may go ahead, else the seconds to wait before retrying."""
        bucket = self._buckets.pop(client, None) or _Bucket(self._burst, now)
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        self._buckets[client] = bucket
        if len(self._buckets) > self._clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate
