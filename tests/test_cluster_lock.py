"""``Cluster.exclusive``: a lock every replica respects (a scripted store and clock here; the
real Redis case is ``tests/integration/test_scaleout.py``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from broker.cache import TokenCache
from broker.cluster import Cluster, ClusterBusyError
from broker.revocation import Revocations
from broker.sharedcache import Locks
from broker.sharedstore import SharedStoreDown


@dataclass
class Store:
    """``acquire_lock``/``release_lock`` as Redis does them (SET NX; delete by owner only)."""

    locks: dict[str, str] = field(default_factory=dict)
    down: bool = False
    answers_lost: bool = False
    """Each SET is applied, but its answer never comes (a reply later than the timeout)."""
    attempts: int = 0
    extended: list[str] = field(default_factory=list)
    extended_enough: asyncio.Event | None = None
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def acquire_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        self.attempts += 1
        if self.down:
            raise SharedStoreDown
        if name in self.locks:
            return False
        self.locks[name] = owner
        if self.answers_lost:
            raise SharedStoreDown
        return True

    async def release_lock(self, name: str, owner: str) -> None:
        if self.down:
            raise SharedStoreDown
        if self.locks.get(name) == owner:
            del self.locks[name]
            self.released.set()

    async def extend_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        self.extended.append(name)
        if self.extended_enough is not None and len(self.extended) >= 2:
            self.extended_enough.set()
        return self.locks.get(name) == owner

    async def aclose(self) -> None:
        return None


class Shared:
    def __init__(
        self, store: Store, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self.store = store
        self.locks = Locks(store, monotonic=Clock(), sleep=sleep)  # type: ignore[arg-type]


class Keyring:
    def name(self, *parts: str) -> str:
        return "|".join(parts)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def cluster(
    store: Store | None,
    clock: Clock,
    release_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Cluster:
    revocations = Revocations(cache=TokenCache(clock=clock), clock=clock, default_seconds=60)
    shared: Any = None if store is None else Shared(store, release_sleep)
    keyring: Any = None if store is None else Keyring()
    return Cluster(
        revocations=revocations,
        shared=shared,
        keyring=keyring,
        lock_wait_seconds=2.0,
        monotonic=clock,
        sleep=clock.sleep,
    )


async def test_the_block_holds_the_lock_and_releases_it() -> None:
    store, clock = Store(), Clock()
    replica = cluster(store, clock)
    async with replica.exclusive("provision", "iss", "alice", "my-app"):
        assert list(store.locks) == ["lock|provision|iss|alice|my-app"]
    assert store.locks == {}


async def test_another_holder_is_waited_for_then_busy() -> None:
    store, clock = Store(), Clock()
    store.locks["lock|provision|iss|alice|my-app"] = "other-replica"
    replica = cluster(store, clock)
    ran = False
    with pytest.raises(ClusterBusyError) as caught:
        async with replica.exclusive("provision", "iss", "alice", "my-app"):
            ran = True
    assert not ran
    assert caught.value.status == 503
    assert caught.value.code == "busy"
    assert clock.now == pytest.approx(102.0)  # waited lock_wait_seconds, polling
    assert store.attempts > 3
    assert store.locks == {"lock|provision|iss|alice|my-app": "other-replica"}  # not taken over


async def test_without_redis_the_block_runs_alone() -> None:
    clock = Clock()
    async with cluster(None, clock).exclusive("provision", "iss", "alice", "my-app"):
        pass
    down = Store(down=True)
    async with cluster(down, clock).exclusive("provision", "iss", "alice", "my-app"):
        assert down.locks == {}


async def test_a_lock_whose_answer_was_lost_is_released_once_redis_answers() -> None:
    """The SET was applied but its answer came too late: the block ran without the lock and
    left it held in Redis for its whole time, so another replica's create for the same user
    waited ``lock_wait_seconds`` and then got 503 ``busy`` while nobody was creating anything."""
    store, clock = Store(answers_lost=True), Clock()
    turns: asyncio.Queue[None] = asyncio.Queue()
    waiting = asyncio.Event()

    async def release_sleep(seconds: float) -> None:  # Redis' retry pause, on the test's turn
        waiting.set()
        await turns.get()

    first = cluster(store, clock, release_sleep)
    async with first.exclusive("provision", "iss", "alice", "my-app"):
        assert store.locks  # held in Redis, without this replica knowing
        store.down = True  # and Redis is unavailable for a moment
    async with asyncio.timeout(10):
        await waiting.wait()  # the release failed and waits to try again
        assert store.locks
        store.down = store.answers_lost = False
        turns.put_nowait(None)
        await store.released.wait()
    assert store.locks == {}
    async with cluster(store, clock).exclusive("provision", "iss", "alice", "my-app"):
        assert store.attempts == 2  # at once: no wait, no 503
    await first.aclose()


async def test_a_release_that_failed_is_tried_again() -> None:
    store, clock = Store(), Clock()
    turns: asyncio.Queue[None] = asyncio.Queue()

    async def release_sleep(seconds: float) -> None:
        await turns.get()

    replica = cluster(store, clock, release_sleep)
    async with replica.exclusive("provision", "iss", "alice", "my-app"):
        store.down = True  # the release fails: the lock would stay held for its whole time
    store.down = False
    turns.put_nowait(None)
    async with asyncio.timeout(10):
        await store.released.wait()
    assert store.locks == {}
    await replica.aclose()


async def test_pending_releases_end_quietly_at_shutdown(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = Store(answers_lost=True), Clock()
    waiting = asyncio.Event()

    async def release_sleep(seconds: float) -> None:
        waiting.set()
        await asyncio.Event().wait()  # Redis stays unavailable

    replica = cluster(store, clock, release_sleep)
    async with replica.exclusive("provision", "iss", "alice", "my-app"):
        store.down = True
    async with asyncio.timeout(10):
        await waiting.wait()
    assert replica.shared is not None
    assert len(replica.shared.locks) == 1
    await replica.aclose()  # cancels the pending release and awaits it
    assert len(replica.shared.locks) == 0
    assert store.locks  # left to expire in Redis by itself
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_no_release_is_started_after_shutdown() -> None:
    """A block still running at shutdown whose release then fails must not start a task that
    calls the closed store until the lock expires."""
    store, clock = Store(), Clock()
    replica = cluster(store, clock)
    async with replica.exclusive("provision", "iss", "alice", "my-app"):
        await replica.aclose()
        store.down = True
    assert replica.shared is not None
    assert len(replica.shared.locks) == 0
    assert replica.shared.locks._task is None


async def test_a_failing_block_still_releases_the_lock() -> None:
    store, clock = Store(), Clock()
    with pytest.raises(RuntimeError):
        async with cluster(store, clock).exclusive("provision", "iss", "bob", "ns"):
            raise RuntimeError("create failed")
    assert store.locks == {}


async def test_the_revocation_sync_outlives_an_unexpected_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One unexpected error ended the sync task for good, silently: that replica then stopped
    learning of revocations."""
    calls: asyncio.Queue[int] = asyncio.Queue()
    turns: asyncio.Queue[None] = asyncio.Queue()

    class Flaky:
        count = 0

        async def sync(self) -> None:
            self.count += 1
            calls.put_nowait(self.count)
            if self.count == 2:  # the first sync of the loop
                raise ValueError("a garbled reply")

    async def sleep(seconds: float) -> None:
        await turns.get()

    revocations: Any = Flaky()
    shared: Any = Shared(Store())
    following = Cluster(revocations=revocations, shared=shared, sleep=sleep)
    await following.start()
    assert await calls.get() == 1  # at start
    try:
        async with asyncio.timeout(10):  # a sync task that died never calls again
            for expected in (2, 3):
                turns.put_nowait(None)
                assert await calls.get() == expected
        assert following._task is not None
        assert not following._task.done()
        assert "revocation sync failed (ValueError); retrying" in caplog.text
    finally:
        await following.aclose()


async def test_a_block_slower_than_the_lock_keeps_it() -> None:
    """The lock is extended while the block runs: a create that pages through a user's
    connections can take longer than the lock's time, and another replica got in beside it."""
    store = Store(extended_enough=asyncio.Event())
    clock = Clock()
    slow = cluster(store, clock)
    slow.lock_seconds = 0.03  # extended every 10 ms (real time: Redis expires it so)
    async with slow.exclusive("provision", "iss", "alice"):
        async with asyncio.timeout(10):  # without renewal this would never be set
            await store.extended_enough.wait()
        (name,) = store.locks
        assert set(store.extended) == {name}
    assert store.locks == {}  # released, and the renewal was cancelled and awaited on exit
