"""Per-subject rate limits: token buckets, bounded in memory, with an injected clock.

One noisy client must not starve the others: each (issuer, subject) gets its own bucket of
``burst`` requests refilled at ``rate_per_second``. A refused request learns when to retry
(``Retry-After``). Buckets live in a bounded LRU, so a flood of distinct subjects cannot grow
memory without limit. Limits apply per broker process, or, with Redis
(``SharedRateLimiter``), across all replicas, with this process's buckets as the fallback while
Redis is unavailable. Shared buckets are named by a keyed hash, never by the subject.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from broker.cache import LRU
from broker.errors import CallerError
from broker.sharedstore import SharedStore, SharedStoreDown

DEFAULT_MAX_SUBJECTS: Final = 100_000


class RateLimitedError(CallerError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self,
        *,
        rate_per_second: float,
        burst: int,
        clock: Callable[[], float],
        what: str,
        max_subjects: int = DEFAULT_MAX_SUBJECTS,
    ) -> None:
        self._rate = rate_per_second
        self._burst = float(burst)
        self._clock = clock
        self._what = what
        self._buckets: LRU[tuple[str, str], _Bucket] = LRU(max_subjects)
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    async def acquire(self, issuer: str, subject: str) -> None:
        """``check``, awaitable: the form shared limiters implement."""
        self.check(issuer, subject)

    def check(self, issuer: str, subject: str) -> None:
        """Take one token from the subject's bucket or raise ``RateLimitedError``."""
        if self._rate <= 0:
            return
        now = self._clock()
        key = (issuer, subject)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
            self._buckets[key] = bucket
        else:
            # Never less than nothing, as in the Lua bucket: the clock is the wall clock, and a
            # step back (an NTP correction) must not drain an idle user's bucket.
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._burst, bucket.tokens + elapsed * self._rate)
            bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        self.refused += 1
        raise self._refusal((1 - bucket.tokens) / self._rate)

    def _refusal(self, wait_seconds: float) -> RateLimitedError:
        """The 429 for a wait of ``wait_seconds``. ``Retry-After`` is whole seconds, from 1 to the
        longest any bucket asks (one token at this rate, from empty): a wait outside that range,
        such as a garbled reply from Redis (NaN, infinite, negative, 1e300), is the longest."""
        longest = 1 / self._rate
        if not 0 <= wait_seconds <= longest:  # also NaN
            wait_seconds = longest
        return RateLimitedError(
            f"Too many {self._what} for this user; retry later.", max(1, math.ceil(wait_seconds))
        )


class SharedRateLimiter(RateLimiter):
    """The same buckets kept in Redis (a Lua token bucket on Redis' clock), so a user's limit is
    one limit whatever replica serves them. ``check`` stays this process's own bucket."""

    def __init__(
        self,
        *,
        store: SharedStore,
        name: Callable[..., str],
        rate_per_second: float,
        burst: int,
        clock: Callable[[], float],
        what: str,
        max_subjects: int = DEFAULT_MAX_SUBJECTS,
    ) -> None:
        super().__init__(
            rate_per_second=rate_per_second,
            burst=burst,
            clock=clock,
            what=what,
            max_subjects=max_subjects,
        )
        self._store = store
        self._name = name

    async def acquire(self, issuer: str, subject: str) -> None:
        if self._rate <= 0:
            return
        bucket = self._name("rate", self._what, issuer, subject)
        try:
            wait = await self._store.take(bucket, self._rate, int(self._burst))
        except SharedStoreDown:
            self.check(issuer, subject)
            return
        if wait is not None:
            self.refused += 1
            raise self._refusal(wait)


class ConcurrencyLimit:
    """At most ``limit`` calls in progress per user, in this process. A proxied MCP call can
    last minutes (a slow tool, a long event stream) and holds a connection from the pool that
    every user shares (``BROKER_SMITHERY_MAX_CONNECTIONS``): the request rate alone would let
    one user take them all. Beyond the limit: 429 ``rate_limited`` with ``Retry-After: 1``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[tuple[str, str], int] = {}

    def acquire(self, issuer: str, subject: str) -> tuple[str, str]:
        """Take a place for the user; hand the result to ``release`` when the call ends."""
        key = (issuer, subject)
        held = self._held.get(key, 0)
        if held >= self.limit:
            raise RateLimitedError(
                f"At most {self.limit} MCP calls may be in progress at once; retry when one ends.",
                1,
            )
        self._held[key] = held + 1
        return key

    def release(self, key: tuple[str, str]) -> None:
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]
