"""Shared by the demo tests: the emulator's API key, and the official MCP client as they drive it.

The client is ``mcp`` 2.x over Streamable HTTP with an optional bearer. mcp 2.x names the
transport ``streamable_http_client`` (1.x: ``streamablehttp_client``) and takes headers only
through an ``httpx2.AsyncClient`` of our own, which also lets us ignore proxy settings from the
environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

CLIENT_TIMEOUT_SECONDS = 20.0
EMULATOR_API_KEY = "demo-test-api-key"


@asynccontextmanager
async def mcp_session(url: str, bearer: str | None = None) -> AsyncIterator[ClientSession]:
    """A client session on ``url``, not yet initialized (the test decides when)."""
    headers = {} if bearer is None else {"Authorization": f"Bearer {bearer}"}
    async with (
        httpx2.AsyncClient(
            headers=headers, timeout=httpx2.Timeout(CLIENT_TIMEOUT_SECONDS), trust_env=False
        ) as http,
        streamable_http_client(url, http_client=http) as (read_stream, write_stream),
        ClientSession(read_stream, write_stream) as session,
    ):
        yield session
