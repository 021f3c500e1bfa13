"""``SharedStore`` against a real ``redis-server``: the Lua scripts (compare-and-delete lock,
indexed store with TTL, shared token bucket, revocation sequence) and behaviour while Redis is
down (fast, typed failure; recovery)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from broker.cache import CacheKey, TokenCache
from broker.config import RedisSettings, Secret
from broker.metrics import Metrics
from broker.ratelimit import RateLimitedError, SharedRateLimiter
from broker.revocation import Revocations, Scope
from broker.sealing import Keyring
from broker.sharedcache import SharedCache
from broker.sharedstore import SharedStore, SharedStoreDown
from broker.upstream import MintedToken
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


async def test_lock_is_exclusive_and_released_only_by_its_owner(store: SharedStore) -> None:
    assert await store.acquire_lock("k", "owner-a", 10_000)
    assert not await store.acquire_lock("k", "owner-b", 10_000)
    await store.release_lock("k", "owner-b")  # not the owner: no effect
    assert not await store.acquire_lock("k", "owner-b", 10_000)
    await store.release_lock("k", "owner-a")
    assert await store.acquire_lock("k", "owner-b", 10_000)


async def test_only_the_owner_extends_a_lock(store: SharedStore) -> None:
    assert await store.acquire_lock("k", "owner-a", 50)
    assert not await store.extend_lock("k", "owner-b", 60_000)
    assert await store.extend_lock("k", "owner-a", 60_000)
    await asyncio.sleep(0.1)  # past the first 50 ms
    assert not await store.acquire_lock("k", "owner-b", 10_000)  # still held: extended
    await store.release_lock("k", "owner-a")
    assert not await store.extend_lock("k", "owner-a", 60_000)  # released: nothing to extend


async def test_lock_expires(store: SharedStore) -> None:
    assert await store.acquire_lock("short", "a", 50)
    deadline = time.monotonic() + 5
    while not await store.acquire_lock("short", "b", 50):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)  # poll interval
    assert store.up


async def test_indexed_store_with_ttl_and_purge(store: SharedStore) -> None:
    assert await store.put_indexed("r1", b"sealed-1", ttl_ms=60_000, indexes=["s1"], sequence=0)
    assert await store.put_indexed("r2", b"sealed-2", ttl_ms=60_000, indexes=["s2"], sequence=0)
    assert await store.get("tok", "r1") == b"sealed-1"
    ttl = await store._client.pttl(store.key("tok", "r1"))
    assert 50_000 < ttl <= 60_000
    assert await store.purge_indexed(["s1"]) == 1
    assert await store.get("tok", "r1") is None
    assert await store.get("tok", "r2") == b"sealed-2"
    assert await store.purge_all() == 1
    assert await store.get("tok", "r2") is None


async def test_store_refused_after_a_revocation(store: SharedStore) -> None:
    sequence = await store.add_revocation("all", b"entry")
    assert await store.sequence() == sequence
    assert await store.revocations() == {"all": b"entry"}
    assert not await store.put_indexed("r", b"x", ttl_ms=1000, indexes=[], sequence=0)
    assert await store.put_indexed("r", b"x", ttl_ms=1000, indexes=[], sequence=sequence)
    await store.drop_revocations({"all": b"entry"})
    assert await store.revocations() == {}


async def test_rate_limit_is_shared_between_replicas(store: SharedStore) -> None:
    limiters = [
        SharedRateLimiter(
            store=store,
            name=lambda *parts: "|".join(parts),
            rate_per_second=0.01,
            burst=3,
            clock=time.time,
            what="requests",
        )
        for _ in range(2)
    ]
    await limiters[0].acquire("iss", "alice")
    await limiters[1].acquire("iss", "alice")
    await limiters[0].acquire("iss", "alice")
    with pytest.raises(RateLimitedError) as caught:
        await limiters[1].acquire("iss", "alice")
    assert 1 <= caught.value.retry_after_seconds <= 100
    await limiters[1].acquire("iss", "bob")  # another user's bucket


async def test_down_fails_fast_then_recovers(store: SharedStore, redis_server: RedisServer) -> None:
    await store.ping()
    assert store.up
    redis_server.kill()
    started = time.monotonic()
    with pytest.raises(SharedStoreDown):
        await store.get("tok", "x")
    with pytest.raises(SharedStoreDown):
        await store.get("tok", "x")  # inside the retry pause: not even tried
    assert time.monotonic() - started < 1.0
    assert not store.up
    assert store.errors == 1
    limiter = SharedRateLimiter(
        store=store,
        name=lambda *parts: "|".join(parts),
        rate_per_second=0.01,
        burst=1,
        clock=time.time,
        what="requests",
    )
    await limiter.acquire("iss", "carol")  # falls back to this process's bucket
    with pytest.raises(RateLimitedError):
        await limiter.acquire("iss", "carol")
    redis_server.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            await store.ping()
            break
        except SharedStoreDown:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)  # poll interval
    assert store.up
    assert await store.get("tok", "x") is None


async def test_a_burst_larger_than_the_pool_queues_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    # What is checked is that callers beyond the pool's 64 connections wait for one (a plain pool
    # fails them at once). The wait is bounded by timeout_seconds, 0.25 s by default, which a busy
    # CI machine can exceed for the 500th caller; a longer bound keeps this about queueing.
    store = SharedStore(
        RedisSettings(retry_seconds=0.05, timeout_seconds=5.0),
        Secret(redis_server.url),
        clock=time.monotonic,
        metrics=Metrics(),
    )
    try:
        results = await asyncio.gather(
            *(store.take(f"burst-{i % 7}", 1000.0, 1000) for i in range(500))
        )
        assert results == [None] * 500
        assert store.up
        assert store.errors == 0
    finally:
        await store.aclose()


async def test_a_lost_sequence_never_repeats_a_number_a_replica_saw(
    store: SharedStore, redis_server: RedisServer
) -> None:
    """Redis without persistence forgets the sequence on a restart. Counting up from 1 again,
    it came back to the number a replica last saw, and that replica then took the new
    revocations for ones it had: it never refused the revoked user."""
    seen = await store.add_revocation("before", b"x")
    assert await store.sequence() == seen
    redis_server.kill()
    redis_server.start()
    deadline = time.monotonic() + 10
    while True:  # until the store notices Redis is back (its retry pause is 50 ms)
        try:
            await store.ping()
            break
        except SharedStoreDown:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    assert await store.sequence() == 0  # forgotten
    after = await store.add_revocation("after", b"y")
    assert after not in (0, seen)
    assert await store.sequence() == after
    assert await store.add_revocation("next", b"z") == after + 1


async def test_a_mint_running_during_a_revocation_leaves_no_token_in_redis(
    redis_server: RedisServer,
) -> None:
    """Replica B starts minting for mallory; replica A revokes mallory (purge only); B's token
    lands right after A's purge of Redis. A fresh replica C must not be served that token: A
    moves the sequence before purging, so B's store (started under the old one) is refused."""
    keyring = Keyring({"k": os.urandom(32)}, "k", os.urandom(32))
    key = CacheKey("https://idp.test/", "mallory", b"\x01" * 32, "rev-1")
    stores: list[SharedStore] = []

    def replica() -> tuple[SharedCache, Revocations]:
        store = SharedStore(
            RedisSettings(retry_seconds=0.05, timeout_seconds=5.0),
            Secret(redis_server.url),
            clock=time.time,
            metrics=Metrics(),
        )
        stores.append(store)
        cache = TokenCache(clock=time.time)
        shared = SharedCache(
            store,
            keyring,
            cache,
            clock=time.time,
            monotonic=time.monotonic,
            lock_seconds=10,
            lock_wait_seconds=2,
        )
        revocations = Revocations(
            cache=cache, clock=time.time, default_seconds=0, namer=keyring.name, shared=shared
        )
        shared.sequence = lambda: revocations.sequence
        return shared, revocations

    (shared_a, revocations_a), (shared_b, _), (shared_c, revocations_c) = (
        replica(),
        replica(),
        replica(),
    )
    b_minting, mint_may_end, b_done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def old_mint() -> MintedToken:
        b_minting.set()  # under the old sequence, holding the mint lock
        await mint_may_end.wait()
        return MintedToken("OLD-token-minted-before-the-revocation", time.time() + 900)

    async def new_mint() -> MintedToken:
        return MintedToken("NEW-token", time.time() + 900)

    async def b_mints() -> None:
        await shared_b.fetch_or_mint(key, ("r",), old_mint)
        b_done.set()

    purge = shared_a.purge

    async def purge_then_let_b_store(subject: str | None, rule: str | None) -> int:
        purged = await purge(subject, rule)
        mint_may_end.set()
        await b_done.wait()  # B's store has been tried: between the purge and the record
        return purged

    try:
        b_task = asyncio.create_task(b_mints())
        await b_minting.wait()
        shared_a.purge = purge_then_let_b_store  # type: ignore[method-assign]
        await revocations_a.revoke(Scope(subject="mallory"), 0)
        await b_task
        await revocations_c.sync()
        served = await shared_c.fetch_or_mint(key, ("r",), new_mint)
        assert served.token == "NEW-token"
    finally:
        for store in stores:
            await store.aclose()
