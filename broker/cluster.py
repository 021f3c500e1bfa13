"""What broker replicas share, assembled from settings: nothing (``memory``) or, with the
``redis`` backend, the store, the shared token tier, shared rate limits and the revocation feed.

``setup_cluster`` is called once by ``create_app``; ``start``/``aclose`` run in its lifespan.
Revocations exist in both modes (one process is a cluster of one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from broker.cache import TokenCache
from broker.config import Settings
from broker.errors import BrokerError, ConfigError
from broker.metrics import Labels, Metrics
from broker.ratelimit import RateLimiter, SharedRateLimiter
from broker.revocation import Revocations
from broker.sealing import Keyring, load_keyring
from broker.sharedcache import SharedCache
from broker.sharedstore import SharedStore, SharedStoreDown
from broker.telemetry import Telemetry

logger = logging.getLogger("broker.cluster")

FIRST_POLL_SECONDS: Final = 0.01
MAX_POLL_SECONDS: Final = 0.2


class ClusterBusyError(BrokerError):
    """Another replica held a cluster-wide lock for longer than the wait allows."""

    status = 503
    code = "busy"
    title = "Busy"
    retry_after_seconds = 1


@dataclass(slots=True)
class Cluster:
    revocations: Revocations
    shared: SharedCache | None = None
    keyring: Keyring | None = None
    sync_interval_seconds: float = 0.25
    required_for_readiness: bool = False
    lock_seconds: float = 15.0
    lock_wait_seconds: float = 5.0
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def store(self) -> SharedStore | None:
        return None if self.shared is None else self.shared.store

    @property
    def ready(self) -> bool:
        """False only when Redis is required for readiness and unavailable."""
        store = self.store
        return store is None or not self.required_for_readiness or store.up

    def limiter(
        self, *, rate_per_second: float, burst: int, clock: Callable[[], float], what: str
    ) -> RateLimiter:
        """A per-user rate limiter: shared through Redis when there is one."""
        if self.shared is None or self.keyring is None:
            return RateLimiter(rate_per_second=rate_per_second, burst=burst, clock=clock, what=what)
        return SharedRateLimiter(
            store=self.shared.store,
            name=self.keyring.name,
            rate_per_second=rate_per_second,
            burst=burst,
            clock=clock,
            what=what,
        )

    @contextlib.asynccontextmanager
    async def exclusive(self, kind: str, *parts: str) -> AsyncIterator[None]:
        """Run the block while holding a lock every replica respects, named by a keyed hash of
        ``kind`` and ``parts`` (``SET NX PX`` in Redis for ``lock_seconds``, extended by its
        owner every third of that while the block runs, released by its owner only). Another
        replica's hold is waited out for ``lock_wait_seconds``, then ``ClusterBusyError`` (503).
        With the memory backend, or while Redis is unavailable, the block runs without it:
        callers keep their own lock for this process."""
        shared, keyring = self.shared, self.keyring
        if shared is None or keyring is None:
            yield
            return
        store, locks = shared.store, shared.locks
        name = keyring.name("lock", kind, *parts)
        owner = secrets.token_hex(16)
        ttl_ms = max(1, int(self.lock_seconds * 1000))
        held = False
        try:
            deadline = self.monotonic() + self.lock_wait_seconds
            delay = FIRST_POLL_SECONDS
            while not (held := await locks.acquire(name, owner, ttl_ms)):
                remaining = deadline - self.monotonic()
                if remaining <= 0:
                    raise ClusterBusyError(
                        "Another replica is doing the same for this user; retry shortly."
                    )
                await self.sleep(min(delay, remaining))
                delay = min(delay * 2, MAX_POLL_SECONDS)
        except SharedStoreDown:
            # Redis unavailable: this replica alone, as for rate limits (``locks`` releases the
            # lock in the background should the SET have been applied all the same).
            held = False
        renewal = (
            asyncio.create_task(self._renew(store, kind, name, owner, ttl_ms)) if held else None
        )
        try:
            yield
        finally:
            if renewal is not None:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
            if held:
                await locks.release(name, owner, ttl_ms)

    @staticmethod
    async def _renew(store: SharedStore, kind: str, name: str, owner: str, ttl_ms: int) -> None:
        """Keep a held lock for as long as its block runs: a block slower than the lock's time
        (a create that pages through a user's connections at Smithery) would otherwise let
        another replica in beside it."""
        while True:
            await asyncio.sleep(ttl_ms / 3000)  # real time: the lock expires in Redis's
            try:
                if not await store.extend_lock(name, owner, ttl_ms):
                    logger.warning("cluster lock (%s) expired while held", kind)
                    return
            except SharedStoreDown:
                continue  # counted and logged by the store; try again

    async def start(self) -> None:
        if self.shared is not None:
            with contextlib.suppress(SharedStoreDown):
                await self.revocations.sync()  # a new replica starts with the current revocations
            self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        """Poll the revocation sequence; doubles as the probe that notices Redis coming back."""
        while True:
            await self.sleep(self.sync_interval_seconds)
            try:
                await self.revocations.sync()
            except SharedStoreDown:
                pass  # counted and logged by the store; the next poll is the probe
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
                # A revocation sync that stopped for good would stop refusing revoked users on
                # this replica without a word; log it, and try again at the next poll.
                logger.error(  # noqa: TRY400 - the type only: a message may carry data
                    "revocation sync failed (%s); retrying", type(exc).__name__
                )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.shared is not None:
            await self.shared.locks.aclose()
            await self.shared.store.aclose()

    def collect_metrics(self) -> Iterable[tuple[str, str, Labels, float]]:
        yield "broker_revocations_active", "gauge", (), len(self.revocations)
        if self.shared is None:
            return
        yield "broker_redis_up", "gauge", (), 1 if self.shared.store.up else 0
        stats = self.shared.stats
        for event, value in (
            ("hit", stats.hits),
            ("miss", stats.misses),
            ("lock_wait", stats.lock_waits),
            ("lock_timeout", stats.lock_timeouts),
            ("unshared_mint", stats.unshared_mints),
            ("stored", stats.stored),
        ):
            yield "broker_shared_cache_events_total", "counter", (("event", event),), value


def load_cluster_keyring(settings: Settings) -> Keyring | None:
    """The keyring for Redis records (None with the memory backend); ``ConfigError`` if bad."""
    if settings.cache.backend != "redis":
        return None
    secret = settings.cache.encryption_key
    if secret is None:
        raise ConfigError(["BROKER_CACHE_ENCRYPTION_KEY: required with BROKER_CACHE_BACKEND=redis"])
    return load_keyring(secret.reveal())


def setup_cluster(
    settings: Settings,
    *,
    cache: TokenCache,
    clock: Callable[[], float],
    metrics: Metrics,
    telemetry: Telemetry | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> Cluster:
    keyring = load_cluster_keyring(settings)
    shared: SharedCache | None = None
    redis = settings.redis
    if keyring is not None:
        if redis.url is None:
            raise ConfigError(["BROKER_REDIS_URL: required with BROKER_CACHE_BACKEND=redis"])
        store = SharedStore(redis, redis.url, clock=monotonic, metrics=metrics)
        shared = SharedCache(
            store,
            keyring,
            cache,
            clock=clock,
            monotonic=monotonic,
            lock_seconds=redis.lock_seconds,
            lock_wait_seconds=redis.lock_wait_seconds,
            metrics=metrics,
            retry_seconds=redis.retry_seconds,
        )
    revocations = Revocations(
        cache=cache,
        clock=clock,
        default_seconds=settings.admin.revocation_seconds,
        namer=None if keyring is None else keyring.name,
        shared=shared,
        telemetry=telemetry,
        metrics=metrics,
    )
    if shared is not None:
        shared.sequence = lambda: revocations.sequence
    return Cluster(
        revocations=revocations,
        shared=shared,
        keyring=keyring,
        sync_interval_seconds=redis.sync_interval_seconds,
        required_for_readiness=redis.required_for_readiness,
        lock_seconds=redis.lock_seconds,
        lock_wait_seconds=redis.lock_wait_seconds,
        monotonic=monotonic,
    )
