"""End to end: the official MCP client, through the emulator's ``/connect/.../mcp``, to the demo.

The emulator and the demo server both run under uvicorn on loopback; connections are seeded with
``seed_dev_connections``; the token is minted by the emulator with a policy shaped like
``policies/support-readonly.yaml`` but for alice's connection: it may start a session, list tools
and call ``search_issues``, nothing else. rpcReqMatch is evaluated by the emulator's node oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import MCPError

from broker.demo import create_demo_mcp_app, seed_dev_connections
from broker.emulator import create_emulator_app
from tests.demo.demo_harness import EMULATOR_API_KEY, mcp_session
from tests.emulator.loopback import LoopbackServer

GRANT = {
    "namespaces": "my-app",
    "resources": "connections",
    "operations": ["read", "execute"],
    "metadata": {"userId": "alice"},
}
SESSION = {
    **GRANT,
    "rpcReqMatch": {"method": "^(initialize|notifications/initialized|tools/list)$"},
}
SEARCH_ONLY = {
    **GRANT,
    "rpcReqMatch": {"method": "^tools/call$", "params.name": "^search_issues$"},
}
FORBIDDEN = "Forbidden: request not permitted by token policy"


async def _mint(emulator_url: str, policy: list[dict[str, Any]]) -> str:
    async with httpx.AsyncClient(base_url=emulator_url, trust_env=False) as http:
        response = await http.post(
            "/tokens",
            headers={"Authorization": f"Bearer {EMULATOR_API_KEY}"},
            json={"policy": policy},
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def _stats(emulator_url: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=emulator_url, trust_env=False) as http:
        stats: dict[str, int] = (await http.get("/_emulator/stats")).json()
    return stats


@pytest.fixture
async def seeded(emulator_url: str, demo_mcp_url: str) -> str:
    await seed_dev_connections(emulator_url, EMULATOR_API_KEY, demo_mcp_url)
    return emulator_url


async def test_token_policy_enforced_through_the_emulator(seeded: str) -> None:
    token = await _mint(seeded, [SESSION, SEARCH_ONLY])
    async with mcp_session(f"{seeded}/connect/my-app/alice-github/mcp", token) as session:
        initialized = await session.initialize()
        listing = await session.list_tools()
        found = await session.call_tool("search_issues", {"query": "colours"})
        with pytest.raises(MCPError) as delete:
            await session.call_tool("delete_repository", {"name": "acme/widgets"})
        with pytest.raises(MCPError) as get:
            await session.call_tool("get_issue", {"number": 4})

    assert initialized.server_info.name == "demo-github"
    assert {tool.name for tool in listing.tools} == {
        "search_issues",
        "get_issue",
        "create_issue",
        "delete_repository",
    }
    assert found.is_error is False
    assert found.structured_content == {
        "issues": [{"number": 4, "title": "Widget export drops colours", "state": "open"}]
    }
    for denied in (delete, get):
        assert (denied.value.code, denied.value.message) == (-32003, FORBIDDEN)
    stats = await _stats(seeded)
    # initialize, notifications/initialized, tools/list, search_issues; two calls refused.
    assert (stats["mcp_allowed"], stats["mcp_forwarded"], stats["mcp_denied"]) == (4, 4, 2)


async def test_other_users_connection_does_not_exist_for_the_token(seeded: str) -> None:
    token = await _mint(seeded, [SESSION, SEARCH_ONLY])
    async with mcp_session(f"{seeded}/connect/my-app/bob-github/mcp", token) as session:
        with pytest.raises(MCPError) as raised:
            await session.initialize()
    assert (raised.value.code, raised.value.message) == (-32000, "Connection not found")


async def test_without_session_grant_initialize_is_refused(seeded: str) -> None:
    # rpcReqMatch applies to every message: a tools-only policy blocks the handshake too.
    token = await _mint(seeded, [SEARCH_ONLY])
    async with mcp_session(f"{seeded}/connect/my-app/alice-github/mcp", token) as session:
        with pytest.raises(MCPError) as raised:
            await session.initialize()
    assert raised.value.code == -32003


@pytest.fixture
def exempting_emulator_url() -> Iterator[str]:
    with LoopbackServer(create_emulator_app(EMULATOR_API_KEY, exempt_lifecycle=True)) as server:
        yield server.url


async def test_lifecycle_exemption_lets_a_tools_only_policy_start_a_session(
    exempting_emulator_url: str,
) -> None:
    with LoopbackServer(create_demo_mcp_app()) as demo:
        await seed_dev_connections(exempting_emulator_url, EMULATOR_API_KEY, f"{demo.url}/mcp")
        token = await _mint(
            exempting_emulator_url,
            [{**GRANT, "rpcReqMatch": {"method": "^tools/list$"}}, SEARCH_ONLY],
        )
        url = f"{exempting_emulator_url}/connect/my-app/alice-github/mcp"
        async with mcp_session(url, token) as session:
            await session.initialize()
            await session.send_ping()
            assert len((await session.list_tools()).tools) == 4
            found = await session.call_tool("search_issues", {"query": "dark"})
            with pytest.raises(MCPError) as denied:
                await session.call_tool("create_issue", {"title": "x"})
    assert found.is_error is False
    assert denied.value.code == -32003
