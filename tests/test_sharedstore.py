"""``SharedStore``'s own bookkeeping with a scripted client: a burst larger than the connection
pool is this replica's load, not Redis failing; garbled replies are Redis down, never a crash.
Then its Lua scripts on a real ``redis-server`` (more in ``tests/integration/test_sharedstore.py``):
bounded indexes, purges in short steps, merged and compare-and-deleted revocation entries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.config import RedisSettings, Secret
from broker.metrics import Metrics
from broker.revocation import RevocationEntry
from broker.sharedstore import (
    INDEX,
    LEGACY_INDEX,
    PURGE_BATCH,
    SharedStore,
    SharedStoreDown,
)


class HeldClient:
    """Answers only once ``release`` is set; counts the calls that reached it. The holders in
    these tests are ``purge_all`` calls, whose own bound is 10 s: far beyond the slot wait."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.held = 0  # calls waiting for release right now
        self.fail_next = False
        self._entered = asyncio.Event()

    async def holding(self, count: int) -> None:
        """Until ``count`` calls are waiting for ``release``."""
        while self.held < count:
            self._entered.clear()
            await self._entered.wait()

    async def _hold(self) -> None:
        self.held += 1
        self._entered.set()
        try:
            await self.release.wait()
        finally:
            self.held -= 1

    def register_script(self, script: str) -> Any:
        return None

    async def get(self, key: str) -> bytes:
        self.calls += 1
        if self.fail_next:
            self.fail_next = False
            raise RedisConnectionError("refused")
        await self._hold()
        return b"value"

    async def scan_iter(self, match: str, count: int) -> AsyncIterator[bytes]:
        await self._hold()
        for key in ():
            yield key

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_store(client: HeldClient, clock: Clock, metrics: Metrics) -> SharedStore:
    return SharedStore(
        RedisSettings(timeout_seconds=0.05, retry_seconds=5.0),
        Secret("redis://unused"),
        clock=clock,
        metrics=metrics,
        client=client,
        max_connections=2,
    )


async def test_a_caller_beyond_the_busy_pool_does_without_redis_but_redis_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, clock, metrics = HeldClient(), Clock(), Metrics()
    store = make_store(client, clock, metrics)
    client.release.set()
    assert await store.get("tok", "warm") == b"value"  # known up
    client.release.clear()
    holders = [asyncio.ensure_future(store.purge_all()) for _ in range(2)]
    await client.holding(2)  # both holders are inside Redis calls
    caplog.set_level(logging.WARNING, logger="broker.sharedstore")
    with pytest.raises(SharedStoreDown):
        await store.get("tok", "third")  # no slot within timeout_seconds
    with pytest.raises(SharedStoreDown):
        await store.get("tok", "fourth")
    assert client.calls == 1  # the callers without a slot never reached Redis
    assert store.up
    assert store.errors == 0
    assert metrics.counters["broker_redis_busy_total"][(("operation", "get"),)] == 2
    assert "broker_redis_errors_total" not in metrics.counters
    busy_lines = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert len(busy_lines) == 1  # logged once per retry_seconds, not per call
    assert "all 2 connections busy" in busy_lines[0]
    assert not any("unavailable" in r.getMessage() for r in caplog.records)
    client.release.set()
    assert await asyncio.gather(*holders) == [0, 0]
    assert await store.get("tok", "after") == b"value"  # slots were given back
    clock.now += 5.0
    client.release.clear()
    holders = [asyncio.ensure_future(store.purge_all()) for _ in range(2)]
    await client.holding(2)
    with pytest.raises(SharedStoreDown):
        await store.get("tok", "later")
    assert len([r for r in caplog.records if "busy" in r.getMessage()]) == 2
    client.release.set()
    await asyncio.gather(*holders)


async def test_a_failing_call_gives_its_slot_back_and_marks_redis_down() -> None:
    client, clock, metrics = HeldClient(), Clock(), Metrics()
    store = make_store(client, clock, metrics)
    client.release.set()
    for _ in range(3):  # more failures than slots: each one released its slot
        client.fail_next = True
        clock.now += 10.0  # past the retry pause, so Redis is tried again
        with pytest.raises(SharedStoreDown):
            await store.get("tok", "x")
    assert not store.up
    assert store.errors == 3
    assert "broker_redis_busy_total" not in metrics.counters
    clock.now += 10.0
    assert await store.get("tok", "x") == b"value"
    assert store.up


@contextlib.asynccontextmanager
async def answering(reply: bytes) -> AsyncIterator[str]:
    """Something else at the Redis URL (a wrong port, a proxy, a garbling middlebox): it answers
    ``reply`` to every command; yields its URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(reply * max(1, data.count(b"*")))  # a reply per command
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def not_redis() -> AsyncIterator[str]:
    async with answering(b"+OK\r\n") as url:
        yield url


@pytest.mark.parametrize(
    "call",
    ["sequence", "revocations", "take", "add_revocation", "purge_indexed"],
)
async def test_replies_of_the_wrong_shape_are_redis_down_not_a_crash(
    not_redis: str, call: str
) -> None:
    """They escaped as ValueError or AttributeError (ending the revocation sync for good), or,
    for the rate limit, read as 'wait 75 s' (the bytes of OK)."""
    metrics = Metrics()
    store = SharedStore(RedisSettings(), Secret(not_redis), clock=lambda: 0.0, metrics=metrics)
    calls = {
        "sequence": store.sequence,
        "revocations": store.revocations,
        "take": lambda: store.take("bucket", 1.0, 5),
        "add_revocation": lambda: store.add_revocation("field", b"value"),
        "purge_indexed": lambda: store.purge_indexed(["index"]),
    }
    try:
        with pytest.raises(SharedStoreDown):
            await calls[call]()
        assert not store.up
        assert store.errors == 1
    finally:
        await store.aclose()


STORE_CALLS: dict[str, Callable[[SharedStore], Awaitable[object]]] = {
    "get": lambda store: store.get("tok", "name"),
    "put_indexed": lambda store: store.put_indexed(
        "name", b"sealed", ttl_ms=1000, indexes=["index"], sequence=0
    ),
    "acquire_lock": lambda store: store.acquire_lock("name", "owner", 1000),
    "extend_lock": lambda store: store.extend_lock("name", "owner", 1000),
    "take": lambda store: store.take("bucket", 1.0, 5),
    "sequence": lambda store: store.sequence(),
    "revocations": lambda store: store.revocations(),
    "add_revocation": lambda store: store.add_revocation("field", b"value"),
    "drop_revocations": lambda store: store.drop_revocations({"field": b"value"}),
    "purge_indexed": lambda store: store.purge_indexed(["index"]),
}


@pytest.mark.parametrize("reply", [b":notint\r\n", b"$abc\r\n", b"*x\r\n"])
@pytest.mark.parametrize("call", list(STORE_CALLS))
async def test_a_garbled_reply_is_redis_down_not_a_crash(reply: bytes, call: str) -> None:
    """redis-py's parser raises a bare ValueError on these: it escaped as a 500 on every
    request, and the store, never marked down, was asked again each time."""
    async with answering(reply) as url:
        store = SharedStore(RedisSettings(), Secret(url), clock=lambda: 0.0, metrics=Metrics())
        try:
            with pytest.raises(SharedStoreDown):
                await STORE_CALLS[call](store)
            assert not store.up
            assert store.errors == 1
        finally:
            await store.aclose()


@pytest.mark.parametrize("wait", [b"inf", b"nan", b"1e300", b"-5"])
async def test_a_rate_limit_wait_no_bucket_gives_is_redis_down(wait: bytes) -> None:
    """A bucket never waits longer than 1 / rate: 'inf' and 'nan' crashed the rate limit's
    Retry-After (OverflowError, ValueError), '1e300' sent a 301-digit one."""
    reply = b"*2\r\n:0\r\n$%d\r\n%s\r\n" % (len(wait), wait)
    async with answering(reply) as url:
        store = SharedStore(RedisSettings(), Secret(url), clock=lambda: 0.0, metrics=Metrics())
        try:
            with pytest.raises(SharedStoreDown):
                await store.take("bucket", 1.0, 5)
            assert not store.up
            assert store.errors == 1
        finally:
            await store.aclose()


# --- the scripts, on a real redis-server ------------------------------------------------------


async def redis_ms(store: SharedStore) -> int:
    seconds, microseconds = await store._client.time()
    return int(seconds) * 1000 + int(microseconds) // 1000


@pytest.mark.integration
async def test_an_index_lists_only_records_still_alive(store: SharedStore) -> None:
    """A rule's index kept every record ever stored under it, as long as mints went on."""
    for i in range(50):
        assert await store.put_indexed(f"old-{i}", b"x", ttl_ms=1, indexes=["rule"], sequence=0)
    stored_by = await redis_ms(store)
    while await redis_ms(store) <= stored_by + 2:  # until every old record has expired
        pass
    assert await store.put_indexed("live", b"x", ttl_ms=60_000, indexes=["rule"], sequence=0)
    index = store.key(INDEX, "rule")
    assert await store._client.zrange(index, 0, -1) == [store.key("tok", "live").encode()]
    assert 50_000 < await store._client.pttl(index) <= 60_000
    assert await store.purge_indexed(["rule"]) == 1
    assert await store.get("tok", "live") is None


@pytest.mark.integration
async def test_a_large_purge_runs_in_short_steps(store: SharedStore) -> None:
    """One script purged a whole index: 200k records blocked Redis for 0.6 s, and every other
    replica's calls timed out meanwhile (rate limits and shared tokens lost)."""
    records = 2 * PURGE_BATCH + 200
    await asyncio.gather(
        *(
            store.put_indexed(f"r{i}", b"x", ttl_ms=60_000, indexes=["big"], sequence=0)
            for i in range(records)
        )
    )
    assert await store.purge_indexed(["empty"]) == 0  # the script is loaded now
    await store._client.config_resetstat()
    assert await store.purge_indexed(["big"]) == records
    stats = await store._client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3  # at most PURGE_BATCH records each
    assert await store._client.exists(store.key(INDEX, "big")) == 0
    assert await store.get("tok", "r0") is None
    assert await store.get("tok", f"r{records - 1}") is None


@pytest.mark.integration
async def test_records_an_earlier_version_indexed_are_purged_too(store: SharedStore) -> None:
    """During a rolling upgrade, older replicas list records in plain sets (another key kind, so
    neither meets the other's key type): a revocation still purges theirs."""
    client = store._client
    await client.set(store.key("tok", "old"), b"x", px=60_000)
    await client.sadd(store.key(LEGACY_INDEX, "subject"), store.key("tok", "old"))
    assert await store.put_indexed("new", b"x", ttl_ms=60_000, indexes=["subject"], sequence=0)
    assert await store.purge_indexed(["subject"]) == 2
    assert await store.get("tok", "old") is None
    assert await store.get("tok", "new") is None
    await client.sadd(store.key(LEGACY_INDEX, "other"), store.key("tok", "old"))
    assert await store.put_indexed("new", b"x", ttl_ms=60_000, indexes=["other"], sequence=0)
    assert await store.purge_all() == 1
    assert await client.keys(f"{store._prefix}:*") == []


def entry(at: float, until: float) -> bytes:
    return msgspec.msgpack.encode(RevocationEntry(kind="subject", at=at, until=until))


def read_entry(raw: bytes) -> RevocationEntry:
    return msgspec.msgpack.decode(raw, type=RevocationEntry)


@pytest.mark.integration
async def test_a_shorter_revocation_never_shortens_a_longer_one_in_redis(
    store: SharedStore,
) -> None:
    """The second entry overwrote the first: a purge-only revocation after a day-long one left
    every replica that started afterwards serving the user."""
    await store.add_revocation("subject:x", entry(1000.5, 87400.5))
    await store.add_revocation("subject:x", entry(2000.25, 2000.25))
    merged = read_entry((await store.revocations())["subject:x"])
    assert merged == RevocationEntry(kind="subject", at=2000.25, until=87400.5)
    await store.add_revocation("subject:x", entry(3000.0, 99000.0))  # a longer one extends
    assert read_entry((await store.revocations())["subject:x"]).until == 99000.0
    await store._client.hset(store._revocations_key, "subject:x", b"unreadable")
    await store.add_revocation("subject:x", entry(4000.0, 4000.0))  # unreadable: replaced
    assert read_entry((await store.revocations())["subject:x"]).until == 4000.0


@pytest.mark.integration
async def test_a_revocation_recorded_after_the_read_is_not_dropped(store: SharedStore) -> None:
    """A replica dropped the fields it had read as over with a plain HDEL: a revocation of the
    same scope recorded in between was deleted, and the other replicas never refused."""
    await store.add_revocation("rule:r", entry(1000.0, 1000.0))
    await store.add_revocation("subject:gone", entry(1000.0, 1000.0))
    read = await store.revocations()
    await store.add_revocation("rule:r", entry(5000.0, 9000.0))  # revoked anew meanwhile
    await store.drop_revocations(read)
    assert list(await store.revocations()) == ["rule:r"]
    assert read_entry((await store.revocations())["rule:r"]).at == 5000.0
