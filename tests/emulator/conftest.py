"""Fixtures for the emulator's tests: an in-process app on a fake clock, and a minter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app
from tests.emulator.emulator_harness import API_KEY, SIGNING_KEY, FakeClock, Minter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> Iterator[TestClient[Any]]:
    app = create_emulator_app(API_KEY, signing_key=SIGNING_KEY, clock=clock)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def mint(client: TestClient[Any]) -> Minter:
    return Minter(client)
