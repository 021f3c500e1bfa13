"""Fixtures for the emulator's tests: an in-process app on a fake clock, a minter, and a real
stand-in MCP server on loopback for the MCP endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app
from tests.emulator.emulator_harness import API_KEY, NAMESPACES, SIGNING_KEY, FakeClock, Minter
from tests.emulator.loopback import LoopbackServer
from tests.emulator.mcp_target import McpTarget


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> Iterator[TestClient[Any]]:
    app = create_emulator_app(
        API_KEY, signing_key=SIGNING_KEY, clock=clock, owned_namespaces=NAMESPACES
    )
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def mint(client: TestClient[Any]) -> Minter:
    return Minter(client)


@pytest.fixture(scope="session")
def mcp_target_server() -> Iterator[tuple[McpTarget, str]]:
    """One recording MCP stand-in for the session (a thread of its own); see ``target``."""
    target = McpTarget()
    with LoopbackServer(target) as server:
        yield target, server.url


@pytest.fixture
def target(mcp_target_server: tuple[McpTarget, str]) -> McpTarget:
    """The session's MCP stand-in, with nothing recorded yet."""
    mcp_target, _ = mcp_target_server
    mcp_target.reset()
    return mcp_target


@pytest.fixture
def target_url(mcp_target_server: tuple[McpTarget, str]) -> str:
    return mcp_target_server[1]
