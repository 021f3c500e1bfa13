"""``SharedStore``'s own bookkeeping with a scripted client (the Redis behaviour itself is tested
against a real ``redis-server`` in ``tests/integration/test_sharedstore.py``): a burst larger than
the connection pool is this replica's load, not Redis failing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.config import RedisSettings, Secret
from broker.metrics import Metrics
from broker.sharedstore import SharedStore, SharedStoreDown


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


@pytest.fixture
async def not_redis() -> AsyncIterator[str]:
    """Something else at the Redis URL (a wrong port, a proxy): it answers +OK to everything."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(b"+OK\r\n" * max(1, data.count(b"*")))  # a reply per command
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    server.close()
    await server.wait_closed()


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
