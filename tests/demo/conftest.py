"""Real servers on loopback for the demo tests: the demo MCP server and the Smithery emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.demo import MCP_PATH, create_demo_mcp_app
from broker.emulator import create_emulator_app
from tests.demo.demo_harness import EMULATOR_API_KEY
from tests.emulator.loopback import LoopbackServer


@pytest.fixture
def demo_mcp_url() -> Iterator[str]:
    """A fresh demo MCP server (its own thread and event loop); yields its ``/mcp`` URL."""
    with LoopbackServer(create_demo_mcp_app()) as server:
        yield f"{server.url}{MCP_PATH}"


@pytest.fixture
def emulator_url() -> Iterator[str]:
    """A fresh Smithery emulator under uvicorn, owning ``my-app`` (the dev connections' default)
    and ``other`` (where a test seeds them too); yields its base URL."""
    app = create_emulator_app(EMULATOR_API_KEY, owned_namespaces=("my-app", "other"))
    with LoopbackServer(app) as server:
        yield server.url
