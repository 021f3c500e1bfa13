"""The shared token tier's logic with an in-memory fake of the store: one mint across replicas,
bounded lock waits, fallbacks when Redis is unavailable, rejected records, refresh-ahead."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.cache import CacheKey, TokenCache
from broker.sealing import Keyring
from broker.sharedcache import SharedCache
from broker.sharedstore import SharedStoreDown

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
