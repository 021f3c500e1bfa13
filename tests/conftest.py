"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.config import RedisSettings, Secret
from broker.metrics import Metrics
from broker.sharedstore import SharedStore
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` of the test's own, stopped after it."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[SharedStore]:
    """A ``SharedStore`` on ``redis_server``. Its calls may take 5 s: the production 0.25 s,
    first connection included, failed on a loaded CI machine, and these tests are about what the
    scripts do, not speed."""
    shared = SharedStore(
        RedisSettings(retry_seconds=0.05, timeout_seconds=5.0),
        Secret(redis_server.url),
        clock=time.monotonic,
        metrics=Metrics(),
    )
    yield shared
    await shared.aclose()
