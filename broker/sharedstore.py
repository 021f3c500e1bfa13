"""The Redis that broker replicas share: the only module that imports redis.

Every operation is short and bounded (``BROKER_REDIS_TIMEOUT_SECONDS`` for connecting and for
each reply, no client-side retries) and either succeeds or raises ``SharedStoreDown``: callers
fall back to what the replica can do alone, so a dead or slow Redis never stalls a request.
After a failure the store is considered down and not even tried for ``retry_seconds``; the next
successful call marks it up again (the connection pool reconnects by itself). Each transition is
logged once, never each failed request; the URL (which may carry a password) is never logged.

At most ``max_connections`` operations run at once; callers beyond that queue for a slot, within
the same timeout. A caller that gets none does without Redis for that one call (counted in
``broker_redis_busy_total``, logged at most once per ``retry_seconds``): a burst larger than the
pool is this replica's load, not Redis failing, so the store stays up and its connections stay.

Stored values are opaque bytes sealed by ``sealing``; names are HMACs. This module knows the key
layout and the Lua scripts, nothing about tokens, users or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from broker.config import RedisSettings, Secret
from broker.metrics import Metrics

logger = logging.getLogger("broker.sharedstore")

T = TypeVar("T")
DEFAULT_MAX_CONNECTIONS: Final = 64
PURGE_BATCH: Final = 500

# KEYS[1] record, KEYS[2] revocation sequence, KEYS[3..] indexes; ARGV[1] record, ARGV[2] ttl ms,
# ARGV[3] the revocation sequence the mint started under.
# A mint that raced a revocation is not stored: the revocation may have purged before it landed.
# An index is a sorted set of record names scored by when each record expires (ms, Redis' clock);
# each store drops the members already expired, so an index that mints keep alive lists only the
# records still alive, not every record ever stored under it.
_STORE: Final = """
local seq = redis.call('GET', KEYS[2]) or '0'
if seq ~= ARGV[3] then return 0 end
local ttl = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 3, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%d', now))
  redis.call('ZADD', KEYS[i], string.format('%d', now + ttl), KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""

# Compare-and-delete: only the owner that set the lock releases it.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] lock; ARGV[1] owner, ARGV[2] ttl ms: a longer hold, for its owner only.
_EXTEND: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# A token bucket on Redis' clock (one clock for every replica). KEYS[1] bucket;
# ARGV[1] rate per second, ARGV[2] burst. Returns {1, "0"} or {0, seconds to wait}.
_TAKE: Final = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

# KEYS[1] revocation sequence, KEYS[2] the revocation hash; ARGV[1] a random start, ARGV[2] a
# field and ARGV[3] its value (a msgpack map with ``at`` and ``until``). The entry is recorded in
# the same step as the sequence moves, so a replica that sees the new sequence also sees the
# entry, and the stores of mints that started under an earlier sequence are refused (``_STORE``).
# An entry already recorded for the field is merged, not overwritten: the new ``at`` (so every
# replica applies it again) with the later ``until``, so a later, shorter revocation of the same
# scope (a purge-only one, say) never ends a longer one early. An old value that is not such a map
# is replaced. A sequence that Redis lost (a restart without persistence, a failover) starts again
# at a random number, not at 1: counting up from 1 again, it would come back to the number a
# replica last saw, and that replica would take the new revocations for ones it already has.
_RECORD_REVOCATION: Final = """
local function decode(raw)
  local read, entry = pcall(cmsgpack.unpack, raw)
  if read and type(entry) == 'table' and type(entry['until']) == 'number' then return entry end
  return nil
end
local value = ARGV[3]
local old = redis.call('HGET', KEYS[2], ARGV[2])
local previous = old and decode(old)
local entry = previous and decode(value)
if entry and previous['until'] > entry['until'] then
  entry['until'] = previous['until']
  value = cmsgpack.pack(entry)
end
redis.call('HSET', KEYS[2], ARGV[2], value)
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""
SEQUENCE_START_BITS: Final = 52
"""Random starts below 2**52: a repeat is as unlikely as a guess, and INCR stays in range."""

# Compare-and-delete for revocation entries: KEYS[1] the revocation hash; ARGV field, value
# pairs as read. An entry recorded again since it was read (the same scope revoked anew) stays.
_DROP_REVOCATIONS: Final = """
local dropped = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    dropped = dropped + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return dropped
"""

# KEYS[1] an index (sorted set), KEYS[2] the same index as earlier versions wrote it (a set);
# ARGV[1] a batch size. Takes at most that many records off the indexes and deletes them: one
# short step, so a purge of a large index never blocks Redis for the other replicas' calls.
# Returns {records deleted, members taken}; fewer taken than the batch size: both are empty.
_PURGE_INDEXED_BATCH: Final = """
local batch = tonumber(ARGV[1])
local deleted, taken = 0, 0
local popped = redis.call('ZPOPMIN', KEYS[1], batch)
for i = 1, #popped, 2 do
  deleted = deleted + redis.call('UNLINK', popped[i])
  taken = taken + 1
end
if taken < batch then
  for _, member in ipairs(redis.call('SPOP', KEYS[2], batch - taken)) do
    deleted = deleted + redis.call('UNLINK', member)
    taken = taken + 1
  end
end
return {deleted, taken}
"""
INDEX: Final = "index"
"""Key kind of the sorted-set indexes."""
LEGACY_INDEX: Final = "idx"
"""Key kind of the plain-set indexes that earlier versions wrote (and may still write during a
rolling upgrade): a new key kind, so old and new replicas never meet a key of the other type
(WRONGTYPE). Purges still take their records; nothing writes them any more."""
OPERATOR_TIMEOUT_SECONDS: Final = 10.0
"""Bound on a purge, made of many short calls: an operator's action, not a request's."""


class SharedStoreDown(Exception):
    """Redis could not be used for this operation; do without it."""


class SharedStore:
    def __init__(
        self,
        settings: RedisSettings,
        url: Secret,
        *,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
        client: Any = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        """``clock`` is monotonic (the retry pause); ``client`` replaces the Redis client."""
        self._prefix = settings.key_prefix
        self._timeout = settings.timeout_seconds
        self._retry_seconds = settings.retry_seconds
        self._clock = clock
        self._metrics = metrics or Metrics()
        if client is None:
            # A bounded pool whose callers queue briefly for a connection under bursts (a plain
            # pool would fail them at once, which would read as Redis being down).
            pool = redis.BlockingConnectionPool.from_url(
                url.reveal(),
                max_connections=max_connections,
                timeout=settings.timeout_seconds,
                socket_timeout=settings.timeout_seconds,
                socket_connect_timeout=settings.timeout_seconds,
                # One immediate retry, on a fresh connection, only for a connection that turned
                # out to be dead (Redis restarted): a timeout is never retried, so a blackholed
                # Redis costs one timeout, not several.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            client = redis.Redis.from_pool(pool)  # closing the client closes the pool
        self._client: Any = client
        self._up = False
        self._known = False
        self._retry_at = 0.0
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._busy_logged_at: float | None = None
        self._store = self._client.register_script(_STORE)
        self._release = self._client.register_script(_RELEASE)
        self._extend = self._client.register_script(_EXTEND)
        self._take = self._client.register_script(_TAKE)
        self._record_revocation = self._client.register_script(_RECORD_REVOCATION)
        self._drop_revocations = self._client.register_script(_DROP_REVOCATIONS)
        self._purge_indexed_batch = self._client.register_script(_PURGE_INDEXED_BATCH)
        self.errors = 0

    def __repr__(self) -> str:  # the URL may carry a password
        return f"SharedStore(prefix={self._prefix!r}, up={self._up!r})"

    @property
    def up(self) -> bool:
        return self._up

    def key(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}:{name}"

    @property
    def _revocations_key(self) -> str:
        return f"{self._prefix}:revocations"

    @property
    def _sequence_key(self) -> str:
        return f"{self._prefix}:revocations:seq"

    async def _run(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        timeout_seconds: float | None = None,
    ) -> T:
        if not self._up and self._known and self._clock() < self._retry_at:
            raise SharedStoreDown
        if self._slots.locked():  # only then can acquiring wait; the timeout has a cost
            try:
                async with asyncio.timeout(self._timeout):
                    await self._slots.acquire()
            except TimeoutError:
                self._busy(operation)
                raise SharedStoreDown from None
        else:
            await self._slots.acquire()
        try:
            return await self._call(operation, call, timeout_seconds)
        finally:
            self._slots.release()

    async def _call(
        self, operation: str, call: Callable[[], Awaitable[T]], timeout_seconds: float | None
    ) -> T:
        try:
            # The socket timeouts bound each reply; this bounds the whole call (connect + pool).
            async with asyncio.timeout(timeout_seconds or self._timeout * 2):
                result = await call()
        except (RedisError, OSError, TimeoutError, ValueError, TypeError, UnicodeError) as exc:
            # redis-py's reply parser raises a bare ValueError (or TypeError, UnicodeError) on a
            # garbled reply (something else than Redis at that address, or a proxy in between):
            # that is Redis being unusable too, never a crash.
            self._failed(operation, exc)
            # Idle pooled connections to a Redis that went away are dead too; without retries
            # each would fail once more after Redis returns. Drop them now.
            pool = getattr(self._client, "connection_pool", None)
            if pool is not None:
                with contextlib.suppress(RedisError, OSError):
                    await pool.disconnect(inuse_connections=False)
            raise SharedStoreDown from None
        if not self._up:
            logger.warning("redis: available; shared cache, locks and limits in use")
            self._up = True
            self._known = True
        return result

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        self._metrics.inc("broker_redis_errors_total", (("operation", operation),))
        self._retry_at = self._clock() + self._retry_seconds
        if self._up or not self._known:
            # Only the type: a driver's message can carry the address or the command's data.
            logger.warning(
                "redis: unavailable (%s during %s); serving from this replica's memory only",
                type(exc).__name__,
                operation,
            )
        self._up = False
        self._known = True

    def _busy(self, operation: str) -> None:
        self._metrics.inc("broker_redis_busy_total", (("operation", operation),))
        now = self._clock()
        if self._busy_logged_at is None or now - self._busy_logged_at >= self._retry_seconds:
            self._busy_logged_at = now
            logger.warning(
                "redis: all %d connections busy for %gs (during %s); that call went without "
                "Redis (this replica's load, not a Redis failure)",
                self._max_connections,
                self._timeout,
                operation,
            )

    async def ping(self) -> None:
        await self._run("ping", lambda: self._client.ping())

    async def get(self, kind: str, name: str) -> bytes | None:
        value = await self._run("get", lambda: self._client.get(self.key(kind, name)))
        return value if isinstance(value, bytes) else None

    async def delete(self, kind: str, name: str) -> None:
        await self._run("delete", lambda: self._client.delete(self.key(kind, name)))

    async def put_indexed(
        self,
        name: str,
        value: bytes,
        *,
        ttl_ms: int,
        indexes: Sequence[str],
        sequence: int,
    ) -> bool:
        """Store a record (``tok``) with a TTL and list it in ``indexes`` (``idx``); refused
        (False) when the revocation sequence moved since ``sequence``."""
        keys = [self.key("tok", name), self._sequence_key, *(self.key(INDEX, i) for i in indexes)]
        stored = await self._run(
            "store", lambda: self._store(keys=keys, args=[value, max(1, ttl_ms), str(sequence)])
        )
        return bool(stored)

    async def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        """SET NX PX: True when this caller now holds the lock."""
        acquired = await self._run(
            "lock",
            lambda: self._client.set(self.key("lock", name), owner, nx=True, px=max(1, ttl_ms)),
        )
        return bool(acquired)

    async def release_lock(self, name: str, owner: str) -> None:
        await self._run(
            "unlock", lambda: self._release(keys=[self.key("lock", name)], args=[owner])
        )

    async def extend_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Hold the lock ``ttl_ms`` more from now; False when this owner no longer holds it."""
        extended = await self._run(
            "lock",
            lambda: self._extend(keys=[self.key("lock", name)], args=[owner, max(1, ttl_ms)]),
        )
        return self._integer("lock", extended) == 1

    async def take(self, name: str, rate_per_second: float, burst: int) -> float | None:
        """One token from a shared bucket: None when taken, else the seconds to wait."""
        result = await self._run(
            "ratelimit",
            lambda: self._take(keys=[self.key("rate", name)], args=[repr(rate_per_second), burst]),
        )
        if not isinstance(result, list) or len(result) != 2:
            raise self._garbled("ratelimit", result)
        allowed, wait = result
        try:
            if int(allowed) == 1:
                return None
            seconds = float(wait)
        except (TypeError, ValueError):
            raise self._garbled("ratelimit", result) from None
        # The bucket never goes below 0 tokens, so a wait is at most 1 / rate (plus rounding in
        # the script's tostring): anything else (inf, nan, 1e300, negative) is not from _TAKE.
        if not (math.isfinite(seconds) and 0 <= seconds <= 1 / rate_per_second + 1):
            raise self._garbled("ratelimit", result)
        return seconds

    async def sequence(self) -> int:
        value = await self._run("revocations", lambda: self._client.get(self._sequence_key))
        return 0 if value is None else self._integer("revocations", value)

    async def revocations(self) -> dict[str, bytes]:
        entries = await self._run(
            "revocations", lambda: self._client.hgetall(self._revocations_key)
        )
        if not isinstance(entries, dict) or not all(isinstance(v, bytes) for v in entries.values()):
            raise self._garbled("revocations", entries)
        return {
            (field.decode() if isinstance(field, bytes) else str(field)): value
            for field, value in entries.items()
        }

    async def add_revocation(self, field: str, value: bytes) -> int:
        """Record a revocation and move the sequence (refusing the stores of mints that started
        before) in one step; returns the new sequence."""
        start = secrets.randbelow(2**SEQUENCE_START_BITS)
        sequence = await self._run(
            "revoke",
            lambda: self._record_revocation(
                keys=[self._sequence_key, self._revocations_key], args=[start, field, value]
            ),
        )
        return self._integer("revoke", sequence)

    def _integer(self, operation: str, value: object) -> int:
        if isinstance(value, int | bytes | str):
            try:
                return int(value)
            except ValueError:
                pass
        raise self._garbled(operation, value)

    def _garbled(self, operation: str, reply: object) -> SharedStoreDown:
        """A reply of the wrong shape (something else than Redis answers at that address, or a
        proxy in between garbles it): counted and logged as Redis being down, never a crash."""
        self._failed(operation, TypeError(f"unexpected {type(reply).__name__} reply"))
        return SharedStoreDown()

    async def drop_revocations(self, entries: Mapping[str, bytes]) -> None:
        """Delete revocation entries (field → the value as read), each only if it still holds
        that value: one recorded again in between is a new revocation and stays."""
        if entries:
            args = [part for field, value in entries.items() for part in (field, value)]
            await self._run(
                "revocations",
                lambda: self._drop_revocations(keys=[self._revocations_key], args=args),
            )

    async def purge_indexed(self, indexes: Sequence[str]) -> int:
        """Delete every record listed in the indexes, a batch per call; the number deleted."""

        async def purge() -> int:
            purged = 0
            for index in indexes:
                keys = [self.key(INDEX, index), self.key(LEGACY_INDEX, index)]
                taken = PURGE_BATCH
                while taken == PURGE_BATCH:
                    reply = await self._purge_indexed_batch(keys=keys, args=[PURGE_BATCH])
                    if not isinstance(reply, list) or len(reply) != 2:
                        raise self._garbled("purge", reply)
                    deleted, taken = (self._integer("purge", part) for part in reply)
                    purged += deleted
            return purged

        return await self._run("purge", purge, timeout_seconds=self._operator_timeout)

    async def purge_all(self) -> int:
        """Delete every record and index under the prefix (SCAN, in batches)."""

        async def purge() -> int:
            purged = 0
            for kind in ("tok", INDEX, LEGACY_INDEX):
                batch: list[Any] = []
                async for key in self._client.scan_iter(match=self.key(kind, "*"), count=1000):
                    batch.append(key)
                    if len(batch) >= PURGE_BATCH:
                        deleted = int(await self._client.unlink(*batch))
                        purged += deleted if kind == "tok" else 0
                        batch = []
                if batch:
                    deleted = int(await self._client.unlink(*batch))
                    purged += deleted if kind == "tok" else 0
            return purged

        return await self._run("purge", purge, timeout_seconds=self._operator_timeout)

    @property
    def _operator_timeout(self) -> float:
        return max(self._timeout, OPERATOR_TIMEOUT_SECONDS)

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # a dead connection closes quietly
            await self._client.aclose()
