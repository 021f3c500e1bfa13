"""The shared token tier behind each replica's memory cache: sealed records in Redis and a
cross-replica single-flight, so N replicas mint a user's token once, not N times.

On a memory miss (the ``TokenCache`` already lets one request per key and replica through),
``fetch_or_mint`` reads the sealed record; failing that it takes the key's lock (``SET NX PX``
with a random owner) and mints, or, when another replica holds the lock, polls for the record
that replica stores, until ``lock_wait_seconds``; past that deadline it mints by itself rather
than wait any longer. A record is taken only while servable (the memory cache's margins) and
newer than what memory holds, so refresh-ahead still refreshes. Redis unavailable at any step:
the replica mints alone, exactly as without Redis.

Records live as long as the token (``PX``), are listed in per-subject and per-rule index sets
so a revocation can purge them, and are not stored when a revocation happened while minting.
Nothing here logs or returns a token except to the caller that asked for it.

``Locks`` takes and releases the cross-replica locks (this tier's and ``Cluster.exclusive``'s)
so that a lost answer never leaves one held until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from broker.cache import CachedToken, CacheKey, Minted, TokenCache
from broker.metrics import Metrics
from broker.sealing import Keyring, SealError
from broker.sharedstore import SharedStore, SharedStoreDown

logger = logging.getLogger("broker.sharedcache")

FIRST_POLL_SECONDS: Final = 0.005
MAX_POLL_SECONDS: Final = 0.1
DEFAULT_RELEASE_RETRY_SECONDS: Final = 1.0
"""Between attempts to release a lock while Redis is unavailable (``BROKER_REDIS_RETRY_SECONDS``
in the app: the store does not try Redis again sooner anyway)."""
MAX_PENDING_RELEASES: Final = 10_000


class TokenRecord(msgspec.Struct, array_like=True, frozen=True):
    """The plaintext of a sealed record."""

    token: str
    expires_at: float
    minted_at: float


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(TokenRecord)


@dataclass(frozen=True, slots=True, repr=False)
class SharedToken:
    """A token with the time it was minted (by whichever replica)."""

    token: str
    expires_at: float
    minted_at: float

    def __repr__(self) -> str:  # the token itself must never reach a log
        return f"SharedToken(expires_at={self.expires_at!r}, minted_at={self.minted_at!r})"


@dataclass(slots=True)
class SharedCacheStats:
    hits: int = 0
    """Tokens read from Redis (another replica minted them, or this one before a restart)."""
    misses: int = 0
    lock_waits: int = 0
    """Lookups that found another replica minting and waited for it."""
    lock_timeouts: int = 0
    """Waits that reached ``lock_wait_seconds``; the replica then minted by itself."""
    unshared_mints: int = 0
    """Mints made without Redis (unavailable, or after a lock timeout)."""
    stored: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    """Records that could not be opened, by reason: treated as misses."""


class Locks:
    """The cross-replica locks (``SET NX PX`` with a random owner, released by compare-and-delete),
    never left behind when Redis' answer is lost.

    A ``SET NX`` or a release that fails with ``SharedStoreDown`` (a reply later than the timeout,
    a dropped connection) may have been applied all the same: the lock would then stay held for
    its whole time, and every other replica wanting it would wait ``lock_wait_seconds`` for
    nothing (a mint) or give up (a connection create: 503 ``busy``). Such a lock is released in
    the background as soon as Redis answers again. Owners are random, so the compare-and-delete
    never frees another's lock. One task works through the pending releases, oldest first, one
    Redis call at a time; none is tried past the time its lock expires by itself, and at most
    ``max_pending`` wait (beyond, the oldest is left to expire).
    """

    def __init__(
        self,
        store: SharedStore,
        *,
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_seconds: float = DEFAULT_RELEASE_RETRY_SECONDS,
        max_pending: int = MAX_PENDING_RELEASES,
    ) -> None:
        self._store = store
        self._monotonic = monotonic
        self._sleep = sleep
        self._retry_seconds = retry_seconds
        self._max_pending = max_pending
        self._pending: OrderedDict[tuple[str, str], float] = OrderedDict()
        """(name, owner) -> when the lock expires by itself (monotonic)."""
        self._task: asyncio.Task[None] | None = None
        """The task releasing ``_pending``, while there are any (the reference keeps it alive)."""
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    async def acquire(self, name: str, owner: str, ttl_ms: int) -> bool:
        """True when ``owner`` now holds the lock; ``SharedStoreDown`` when Redis could not say
        (the lock is then released in the background, in case it was taken)."""
        try:
            return await self._store.acquire_lock(name, owner, ttl_ms)
        except SharedStoreDown:
            self._release_later(name, owner, ttl_ms)
            raise

    async def release(self, name: str, owner: str, ttl_ms: int) -> None:
        """Release a held lock: now, or in the background once Redis answers again."""
        try:
            await self._store.release_lock(name, owner)
        except SharedStoreDown:
            self._release_later(name, owner, ttl_ms)

    def _release_later(self, name: str, owner: str, ttl_ms: int) -> None:
        if self._closed:  # shut down: the store is closed, and the lock expires by itself
            return
        self._pending[(name, owner)] = self._monotonic() + ttl_ms / 1000
        while len(self._pending) > self._max_pending:
            self._pending.popitem(last=False)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._release_pending())

    async def _release_pending(self) -> None:
        while self._pending:
            (name, owner), expires_at = next(iter(self._pending.items()))
            if self._monotonic() < expires_at:
                try:
                    await self._store.release_lock(name, owner)
                except SharedStoreDown:  # counted and logged by the store
                    await self._sleep(self._retry_seconds)
                    continue
            self._pending.pop((name, owner), None)

    async def aclose(self) -> None:
        """Stop releasing: what is still pending expires in Redis by itself."""
        self._closed = True
        task, self._task = self._task, None
        self._pending.clear()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class SharedCache:
    def __init__(
        self,
        store: SharedStore,
        keyring: Keyring,
        cache: TokenCache,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        lock_seconds: float,
        lock_wait_seconds: float,
        sequence: Callable[[], int] = lambda: 0,
        metrics: Metrics | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry_seconds: float = DEFAULT_RELEASE_RETRY_SECONDS,
    ) -> None:
        self.store = store
        self.locks = Locks(store, monotonic=monotonic, sleep=sleep, retry_seconds=retry_seconds)
        """Also ``Cluster.exclusive``'s: one task releases every lock whose answer was lost."""
        self.stats = SharedCacheStats()
        self._keyring = keyring
        self._cache = cache
        self._clock = clock
        self._monotonic = monotonic
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self._lock_wait_seconds = lock_wait_seconds
        self.sequence = sequence
        """The revocation sequence a mint starts under (set by ``Revocations``' owner)."""
        self._metrics = metrics or Metrics()
        self._sleep = sleep

    def record_name(self, key: CacheKey) -> str:
        return self._keyring.name("token", key.issuer, key.subject, key.digest.hex(), key.revision)

    def indexes(self, subject: str, rule_ids: Sequence[str]) -> list[str]:
        return [
            self._keyring.name("subject-index", subject),
            *(self._keyring.name("rule-index", rule) for rule in rule_ids),
        ]

    async def fetch_or_mint(
        self,
        key: CacheKey,
        rule_ids: Sequence[str],
        mint: Callable[[], Awaitable[Minted]],
        before_mint: Callable[[], Awaitable[None]] | None = None,
    ) -> Minted:
        """The token another replica stored, or one minted here (once across replicas).

        ``before_mint`` runs only when this call is about to mint (e.g. the mint rate limit).
        """
        name = self.record_name(key)
        current = self._cache.peek(key)
        owner = secrets.token_hex(16)
        try:
            found = await self._read(name, current)
            if found is not None:
                self.stats.hits += 1
                return found
            self.stats.misses += 1
            deadline = self._monotonic() + self._lock_wait_seconds
            delay = FIRST_POLL_SECONDS
            waited = False
            while not await self.locks.acquire(name, owner, self._lock_ms):
                if not waited:
                    waited = True
                    self.stats.lock_waits += 1
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    self.stats.lock_timeouts += 1
                    logger.warning("shared cache: lock wait timed out; minting without it")
                    return await self._mint_alone(mint, before_mint)
                await self._sleep(min(delay, remaining))
                delay = min(delay * 2, MAX_POLL_SECONDS)
                found = await self._read(name, current)
                if found is not None:
                    self.stats.hits += 1
                    return found
        except SharedStoreDown:
            return await self._mint_alone(mint, before_mint)
        try:
            # The previous holder may have stored its token between our read and our lock.
            with contextlib.suppress(SharedStoreDown):
                found = await self._read(name, current)
                if found is not None:
                    self.stats.hits += 1
                    return found
            return await self._mint_and_store(name, key, rule_ids, mint, before_mint)
        finally:
            await self.locks.release(name, owner, self._lock_ms)

    async def _read(self, name: str, current: CachedToken | None) -> SharedToken | None:
        raw = await self.store.get("tok", name)
        if raw is None:
            return None
        try:
            record = _DECODER.decode(self._keyring.open(name, raw))
        except SealError as exc:
            self._reject(exc.reason)
            return None
        except msgspec.DecodeError:
            self._reject("malformed")
            return None
        entry = CachedToken(record.token, record.expires_at, record.minted_at)
        if not self._cache.servable(entry, self._clock()):
            return None
        if current is not None and record.expires_at <= current.expires_at:
            return None  # not newer than what memory holds: a refresh must mint
        return SharedToken(record.token, record.expires_at, record.minted_at)

    def _reject(self, reason: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        self._metrics.inc("broker_shared_cache_rejected_total", (("reason", reason),))
        logger.warning("shared cache: a record could not be opened (%s); treated as a miss", reason)

    async def _mint_alone(
        self,
        mint: Callable[[], Awaitable[Minted]],
        before_mint: Callable[[], Awaitable[None]] | None,
    ) -> Minted:
        self.stats.unshared_mints += 1
        if before_mint is not None:
            await before_mint()
        return await mint()

    async def _mint_and_store(
        self,
        name: str,
        key: CacheKey,
        rule_ids: Sequence[str],
        mint: Callable[[], Awaitable[Minted]],
        before_mint: Callable[[], Awaitable[None]] | None,
    ) -> Minted:
        sequence = self.sequence()
        if before_mint is not None:
            await before_mint()
        minted_at = self._clock()
        minted = await mint()
        token = SharedToken(minted.token, minted.expires_at, minted_at)
        ttl_ms = int((minted.expires_at - self._clock()) * 1000)
        if ttl_ms > 0:
            sealed = self._keyring.seal(
                name, _ENCODER.encode(TokenRecord(token.token, token.expires_at, minted_at))
            )
            with contextlib.suppress(SharedStoreDown):
                if await self.store.put_indexed(
                    name,
                    sealed,
                    ttl_ms=ttl_ms,
                    indexes=self.indexes(key.subject, rule_ids),
                    sequence=sequence,
                ):
                    self.stats.stored += 1
        return token

    async def purge(self, subject: str | None, rule: str | None) -> int:
        """Delete the records of a subject (any issuer), of a rule, or all of them."""
        if subject is not None:
            return await self.store.purge_indexed([self._keyring.name("subject-index", subject)])
        if rule is not None:
            return await self.store.purge_indexed([self._keyring.name("rule-index", rule)])
        return await self.store.purge_all()
