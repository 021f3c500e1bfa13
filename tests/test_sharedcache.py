"""The shared token tier's logic with an in-memory fake of the store: one mint across replicas,
bounded lock waits, fallbacks when Redis is unavailable, rejected records, refresh-ahead; then,
against a real redis-server, a lock whose answer was lost, and the mint limit with refresh-ahead
on both backends."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from broker.cache import CacheKey, TokenCache
from broker.config import RedisSettings, Secret
from broker.identity import Principal
from broker.issuance import Issuance
from broker.policy import load_policy_dir
from broker.ratelimit import RateLimitedError, RateLimiter, SharedRateLimiter
from broker.sealing import Keyring
from broker.sharedcache import Locks, SharedCache
from broker.sharedstore import SharedStore, SharedStoreDown
from broker.upstream import MintedToken
from tests.redis_server import RedisServer

KEY = CacheKey("https://idp.test/", "alice", b"\x01" * 32, "rev-1")
RULES = ("own-connections",)


@dataclass
class FakeStore:
    """The ``SharedStore`` surface the tier uses, in memory; ``down`` makes every call fail."""

    records: dict[str, bytes] = field(default_factory=dict)
    locks: dict[str, str] = field(default_factory=dict)
    indexes: dict[str, set[str]] = field(default_factory=dict)
    sequence_now: int = 0
    down: bool = False
    calls: list[str] = field(default_factory=list)

    def _use(self, operation: str) -> None:
        self.calls.append(operation)
        if self.down:
            raise SharedStoreDown

    async def get(self, kind: str, name: str) -> bytes | None:
        self._use("get")
        return self.records.get(name)

    async def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        self._use("lock")
        if name in self.locks:
            return False
        self.locks[name] = owner
        return True

    async def release_lock(self, name: str, owner: str) -> None:
        self._use("unlock")
        if self.locks.get(name) == owner:
            del self.locks[name]

    async def put_indexed(
        self, name: str, value: bytes, *, ttl_ms: int, indexes: Any, sequence: int
    ) -> bool:
        self._use("store")
        if sequence != self.sequence_now:
            return False
        self.records[name] = value
        for index in indexes:
            self.indexes.setdefault(index, set()).add(name)
        return True

    async def purge_indexed(self, indexes: Any) -> int:
        self._use("purge")
        purged = 0
        for index in indexes:
            for name in self.indexes.pop(index, set()):
                purged += self.records.pop(name, None) is not None
        return purged

    async def purge_all(self) -> int:
        self._use("purge")
        count = len(self.records)
        self.records.clear()
        self.indexes.clear()
        return count


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Minted:
    token: str
    expires_at: float


class Upstream:
    """Counts mints; each mint yields to the loop so concurrent callers really overlap."""

    def __init__(self, clock: Clock, lifetime: float = 900.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.mints = 0

    async def mint(self) -> Minted:
        self.mints += 1
        await asyncio.sleep(0)
        return Minted(f"token-{self.mints}", self.clock() + self.lifetime)


NAMING = os.urandom(32)
KEYS = {"k1": os.urandom(32)}


def replica(store: FakeStore, clock: Clock, **kwargs: Any) -> tuple[TokenCache, SharedCache]:
    cache = TokenCache(clock=clock)
    shared = SharedCache(
        store,  # type: ignore[arg-type]
        Keyring(KEYS, "k1", NAMING),
        cache,
        clock=clock,
        monotonic=kwargs.pop("monotonic", clock),
        lock_seconds=15,
        lock_wait_seconds=kwargs.pop("lock_wait_seconds", 5),
        **kwargs,
    )
    return cache, shared


async def issue(cache: TokenCache, shared: SharedCache, mint: Callable[[], Awaitable[Any]]) -> str:
    entry, _ = await cache.get_or_mint(KEY, lambda: shared.fetch_or_mint(KEY, RULES, mint))
    return entry.token


async def test_replicas_share_one_mint() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)
    replicas = [replica(store, clock) for _ in range(3)]
    tokens = await asyncio.gather(
        *(issue(*replicas[i % 3], upstream.mint) for i in range(30)),
    )
    assert upstream.mints == 1
    assert set(tokens) == {"token-1"}
    assert not store.locks  # released
    assert sum(shared.stats.hits for _, shared in replicas) == 2


async def test_waiter_polls_until_the_winner_stores() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)
    _, winner = replica(store, clock)
    release = asyncio.Event()

    async def slow_mint() -> Minted:
        await release.wait()
        return await upstream.mint()

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            release.set()
        await asyncio.sleep(0)

    _, waiter = replica(store, clock, sleep=sleep)
    first = asyncio.ensure_future(winner.fetch_or_mint(KEY, RULES, slow_mint))
    await asyncio.sleep(0)
    assert store.locks
    second = await waiter.fetch_or_mint(KEY, RULES, upstream.mint)
    assert (await first).token == second.token == "token-1"
    assert upstream.mints == 1
    assert waiter.stats.lock_waits == 1
    assert sleeps[:3] == [0.005, 0.01, 0.02]  # backing off, bounded by MAX_POLL_SECONDS


async def test_lock_wait_is_bounded_then_mints_alone() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)
    store.locks[SharedCache.record_name(replica(store, clock)[1], KEY)] = "a dead replica"
    monotonic = Clock(0.0)

    async def sleep(seconds: float) -> None:
        monotonic.now += seconds

    _, shared = replica(store, clock, monotonic=monotonic, sleep=sleep, lock_wait_seconds=2)
    minted = await shared.fetch_or_mint(KEY, RULES, upstream.mint)
    assert minted.token == "token-1"
    assert shared.stats.lock_timeouts == 1
    assert 2 <= monotonic.now < 2.2
    assert store.locks  # someone else's lock is never released by us


async def test_redis_down_mints_alone_and_serves() -> None:
    store, clock = FakeStore(down=True), Clock()
    upstream = Upstream(clock)
    cache, shared = replica(store, clock)
    assert await issue(cache, shared, upstream.mint) == "token-1"
    assert await issue(cache, shared, upstream.mint) == "token-1"  # memory still caches
    assert shared.stats.unshared_mints == 1


async def test_redis_failing_after_the_lock_still_answers() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)

    async def mint_then_fail() -> Minted:
        store.down = True
        return await upstream.mint()

    _, shared = replica(store, clock)
    assert (await shared.fetch_or_mint(KEY, RULES, mint_then_fail)).token == "token-1"


async def test_before_mint_runs_only_for_the_minting_replica() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)
    limited: list[str] = []

    async def before() -> None:
        limited.append("mint")

    replicas = [replica(store, clock) for _ in range(3)]
    for cache, shared in replicas:
        await cache.get_or_mint(
            KEY, lambda s=shared: s.fetch_or_mint(KEY, RULES, upstream.mint, before)
        )
    assert limited == ["mint"]


@pytest.mark.parametrize("damage", ["tamper", "foreign_key", "garbage"])
async def test_bad_record_is_a_miss(damage: str) -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)
    _, first = replica(store, clock)
    await first.fetch_or_mint(KEY, RULES, upstream.mint)
    name = first.record_name(KEY)
    if damage == "tamper":
        record = bytearray(store.records[name])
        record[-1] ^= 1
        store.records[name] = bytes(record)
    elif damage == "foreign_key":
        store.records[name] = Keyring({"k9": os.urandom(32)}, "k9", NAMING).seal(name, b"x")
    else:
        store.records[name] = b"\xff\x00garbage"
    _, second = replica(store, clock)
    minted = await second.fetch_or_mint(KEY, RULES, upstream.mint)
    assert minted.token == "token-2"
    reason = {"tamper": "tampered", "foreign_key": "unknown_key", "garbage": "malformed"}[damage]
    # Read once before taking the lock and once after: a miss both times, never an error.
    assert second.stats.rejected == {reason: 2}


async def test_record_past_its_margin_is_not_taken() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock, lifetime=300)
    _, first = replica(store, clock)
    await first.fetch_or_mint(KEY, RULES, upstream.mint)
    clock.now += 250  # 50 s left: under the 60 s margin
    _, second = replica(store, clock)
    assert (await second.fetch_or_mint(KEY, RULES, upstream.mint)).token == "token-2"


async def test_refresh_ahead_mints_instead_of_rereading_the_same_token() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock, lifetime=300)
    cache, shared = replica(store, clock)
    assert await issue(cache, shared, upstream.mint) == "token-1"
    clock.now += 190  # 110 s left: due for refresh-ahead (within 2 x 60 s), still servable
    assert await issue(cache, shared, upstream.mint) == "token-1"
    for _ in range(3):
        await asyncio.sleep(0)
    assert upstream.mints == 2
    assert await issue(cache, shared, upstream.mint) == "token-2"


async def test_mint_that_raced_a_revocation_is_not_stored() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)
    _, shared = replica(store, clock)
    store.sequence_now = 1  # a revocation this replica has not seen yet
    await shared.fetch_or_mint(KEY, RULES, upstream.mint)
    assert not store.records


async def test_purge_by_subject_rule_and_all() -> None:
    store, clock = FakeStore(), Clock()
    upstream = Upstream(clock)
    _, shared = replica(store, clock)
    bob = KEY._replace(subject="bob")
    await shared.fetch_or_mint(KEY, RULES, upstream.mint)
    await shared.fetch_or_mint(bob, ("other-rule",), upstream.mint)
    assert await shared.purge("alice", None) == 1
    assert list(store.records) == [shared.record_name(bob)]
    assert await shared.purge(None, "other-rule") == 1
    await shared.fetch_or_mint(KEY, RULES, upstream.mint)
    assert await shared.purge(None, None) == 1
    assert not store.records


def test_stored_names_show_no_subject() -> None:
    _, shared = replica(FakeStore(), Clock())
    for name in (shared.record_name(KEY), *shared.indexes("alice", RULES)):
        assert "alice" not in name
        assert "idp.test" not in name
        assert "own-connections" not in name


async def test_a_pending_release_is_dropped_once_its_lock_expired() -> None:
    store, monotonic = FakeStore(down=True), Clock(0.0)
    expired = asyncio.Event()

    async def sleep(seconds: float) -> None:
        monotonic.now += seconds
        if monotonic.now >= 3:
            expired.set()

    locks = Locks(store, monotonic=monotonic, sleep=sleep, retry_seconds=1.0)  # type: ignore[arg-type]
    await locks.release("lock-name", "owner", 3000)  # fails: Redis unavailable
    assert len(locks) == 1
    async with asyncio.timeout(10):
        await expired.wait()
    assert len(locks) == 0  # expired in Redis by itself: not tried any more
    assert store.calls.count("unlock") == 4  # at 0 s, then retries at 0, 1 and 2 s


# Against a real redis-server.


def real_store(
    server: RedisServer, client: Callable[[redis.Redis], Any] | None = None
) -> SharedStore:
    # Generous timeouts: these tests are about what happens to the locks, not about speed.
    settings = RedisSettings(retry_seconds=0.05, timeout_seconds=5.0)
    return SharedStore(
        settings,
        Secret(server.url),
        clock=time.monotonic,
        client=None if client is None else client(redis.Redis.from_url(server.url)),
    )


class LostSetAnswers:
    """A real client whose ``SET`` is applied but whose answer is lost: a reply later than
    ``BROKER_REDIS_TIMEOUT_SECONDS`` (Redis forking, a slow script, a failover)."""

    def __init__(self, real: redis.Redis) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        await self._real.set(*args, **kwargs)
        raise RedisTimeoutError("the answer came too late")


@pytest.fixture
async def observer(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    await client.config_set("notify-keyspace-events", "Kg")  # DEL and EXPIRE, by key
    yield client
    await client.aclose()


async def deleted(events: Any) -> None:
    """Until the key ``events`` follows is deleted (its SET's own EXPIRE comes first)."""
    async for message in events.listen():
        if message["type"] == "message" and message["data"] == b"del":
            return


@pytest.mark.integration
async def test_a_mint_lock_whose_answer_was_lost_is_released(
    redis_server: RedisServer, observer: redis.Redis
) -> None:
    """The lock's SET was applied but its answer came too late: the replica minted alone and
    left the lock held for ``BROKER_REDIS_LOCK_SECONDS``, so every other replica asking for the
    same token waited ``BROKER_REDIS_LOCK_WAIT_SECONDS`` (5 s) for a mint nobody was making."""
    clock = Clock(time.time())
    upstream = Upstream(clock)
    store_a, store_b = real_store(redis_server, LostSetAnswers), real_store(redis_server)
    a = SharedCache(
        store_a,
        Keyring(KEYS, "k1", NAMING),
        TokenCache(clock=clock),
        clock=clock,
        monotonic=time.monotonic,
        lock_seconds=15,
        lock_wait_seconds=5,
        retry_seconds=0.05,
    )
    _, b = replica(store_b, clock, monotonic=time.monotonic)  # type: ignore[arg-type]
    events = observer.pubsub()
    await events.subscribe(f"__keyspace@0__:{store_a.key('lock', a.record_name(KEY))}")
    try:
        assert (await a.fetch_or_mint(KEY, RULES, upstream.mint)).token == "token-1"
        assert not store_a.up  # minted alone
        async with asyncio.timeout(10):
            await deleted(events)  # by replica A, in the background, once Redis answered again
        assert (await b.fetch_or_mint(KEY, RULES, upstream.mint)).token == "token-2"
        assert b.stats.lock_waits == 0  # the lock was free at once
    finally:
        await events.aclose()
        await a.locks.aclose()
        await store_a.aclose()
        await store_b.aclose()


class Smithery:
    """``mint_token`` as Smithery answers it: a 15-minute token."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.mints = 0

    async def mint_token(self, constraints: Any) -> MintedToken:
        self.mints += 1
        await asyncio.sleep(0)
        return MintedToken(f"token-{self.mints}", self.clock() + 900)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_refresh_ahead_spends_none_of_the_mint_limit(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Both backends: refresh-ahead mints behind a served token without taking from the user's
    mint limit. With Redis it took one, so a user whose budget was spent had the refresh fail
    and was refused (429) when the token reached its margin, although they only had hits."""
    clock = Clock(time.time())
    smithery = Smithery(clock)
    cache = TokenCache(clock=clock)
    issuance = Issuance(
        policy=lambda: policies,
        cache=cache,
        upstream=smithery,  # type: ignore[arg-type]
    )
    store: SharedStore | None = None
    if backend == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = real_store(server)
        keyring = Keyring(KEYS, "k1", NAMING)
        issuance.shared = SharedCache(
            store,
            keyring,
            cache,
            clock=clock,
            monotonic=time.monotonic,
            lock_seconds=15,
            lock_wait_seconds=5,
        )
        issuance.mint_limit = SharedRateLimiter(
            store=store, name=keyring.name, rate_per_second=1e-4, burst=1, clock=clock, what="t"
        )
    else:
        issuance.mint_limit = RateLimiter(rate_per_second=1e-4, burst=1, clock=clock, what="t")
    policies = load_policy_dir(Path(__file__).parent.parent / "policies")
    alice = Principal("https://idp.test/", "alice", {"sub": "alice", "email_verified": True}, 2e9)
    try:
        assert (await issuance.issue(alice)).token == "token-1"  # the whole budget
        clock.now += 600  # 300 s left of 900: due; served, the next one minted behind
        assert (await issuance.issue(alice)).cache_hit
        clock.now += 200  # past token-1's margin: served the refreshed token (minted now)
        assert (await issuance.issue(alice)).token == "token-2"
        assert smithery.mints == 2
        clock.now += 800  # past token-2's margin: a mint, and the budget is spent
        with pytest.raises(RateLimitedError):
            await issuance.issue(alice)
    finally:
        if store is not None:
            await store.aclose()
