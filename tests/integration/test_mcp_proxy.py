"""The guarded proxy end to end with the official MCP client and real servers on loopback:
client → broker process (/v1/mcp) → emulator process (/connect/.../mcp, rpcReqMatch checked by
node) → demo MCP server (official SDK). The same messages sent straight to the emulator with the
minted token get the same allow/deny."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import MCPError

from broker.demo import MCP_PATH, create_demo_mcp_app, seed_dev_connections
from tests.demo.demo_harness import mcp_session
from tests.emulator.loopback import LoopbackServer
from tests.emulator.mcp_target import McpTarget
from tests.integration.conftest import API_KEY, Keys, Process

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_mcp_url() -> Iterator[str]:
    with LoopbackServer(create_demo_mcp_app()) as server:
        yield f"{server.url}{MCP_PATH}"


@pytest.fixture
async def seeded(emulator: Process, demo_mcp_url: str) -> None:
    """Fresh connections on the shared emulator (another module may have seeded other URLs)."""
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        await http.post(f"{emulator.url}/_emulator/reset")
    await seed_dev_connections(emulator.url, API_KEY, demo_mcp_url)


def tool_names(result: Any) -> set[str]:
    return {tool.name for tool in result.tools}


def text_of(result: Any) -> str:
    return " ".join(getattr(item, "text", "") for item in result.content)


async def test_owner_lists_and_calls_tools_through_the_proxy(
    broker: Process, seeded: None, keys: Keys
) -> None:
    jwt = keys.jwt("alice", email_verified=True)
    async with mcp_session(f"{broker.url}/v1/mcp/my-app/alice-github", jwt) as session:
        await session.initialize()
        tools = await session.list_tools()
        assert {"search_issues", "get_issue", "create_issue", "delete_repository"} <= tool_names(
            tools
        )
        result = await session.call_tool("search_issues", {"query": "widget"})
        assert not result.is_error
        assert "Crash when saving an empty widget" in text_of(result)


async def test_denied_tool_is_explained_and_the_session_keeps_working(
    broker: Process, seeded: None, keys: Keys
) -> None:
    jwt = keys.jwt("sam", groups=["support"])
    async with mcp_session(f"{broker.url}/v1/mcp/my-app/support-github", jwt) as session:
        await session.initialize()
        assert "get_issue" in tool_names(await session.list_tools())
        with pytest.raises(MCPError) as denied:
            await session.call_tool("delete_repository", {"name": "demo"})
        assert denied.value.error.code == -32003
        reasons = denied.value.error.data["reasons"]
        assert {(r["rule"], r["reason"], r.get("field")) for r in reasons} == {
            ("support-github-session", "rpc_pattern_mismatch", "method"),
            ("support-github-readonly", "rpc_pattern_mismatch", "params.name"),
        }
        after = await session.call_tool("get_issue", {"number": 1})
        assert not after.is_error


async def test_other_users_connection_is_denied_by_metadata(
    broker: Process, seeded: None, keys: Keys
) -> None:
    jwt = keys.jwt("bob", email_verified=True)
    async with mcp_session(f"{broker.url}/v1/mcp/my-app/alice-github", jwt) as session:
        with pytest.raises(MCPError) as denied:
            await session.initialize()
        assert denied.value.error.code == -32003
        assert denied.value.error.data["reasons"][0]["reason"] == "metadata"


async def test_smithery_stand_in_agrees_with_the_broker(
    broker: Process, emulator: Process, seeded: None, keys: Keys
) -> None:
    jwt = keys.jwt("sam", groups=["support"])
    async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
        minted = await http.post(
            f"{broker.url}/v1/tokens", headers={"Authorization": f"Bearer {jwt}"}
        )
    service_token = minted.json()["token"]
    outcomes: dict[str, dict[str, bool]] = {}
    for name, url, bearer in (
        ("broker", f"{broker.url}/v1/mcp/my-app/support-github", jwt),
        ("emulator", f"{emulator.url}/connect/my-app/support-github/mcp", service_token),
    ):
        async with mcp_session(url, bearer) as session:
            await session.initialize()
            await session.list_tools()
            outcome: dict[str, bool] = {}
            codes: set[int] = set()
            for tool, arguments in (
                ("get_issue", {"number": 1}),
                ("search_issues", {"query": "x"}),
                ("delete_repository", {"name": "demo"}),
                ("create_issue", {"title": "t"}),
            ):
                try:
                    await session.call_tool(tool, arguments)
                    outcome[tool] = True
                except MCPError as exc:
                    codes.add(exc.error.code)
                    outcome[tool] = False
            assert codes == {-32003}
            outcomes[name] = outcome
    assert (
        outcomes["broker"]
        == outcomes["emulator"]
        == {
            "get_issue": True,
            "search_issues": True,
            "delete_repository": False,
            "create_issue": False,
        }
    )


async def put_held_connection(
    http: httpx.AsyncClient, emulator: Process, url: str, name: str
) -> None:
    """A connection of alice's to an ``McpTarget``'s ``/held`` at ``url``."""
    put = await http.put(
        f"{emulator.url}/connect/my-app/{name}",
        json={"mcpUrl": f"{url}/held", "metadata": {"userId": "alice"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert put.status_code in (200, 201), put.text


def alice_mcp_headers(keys: Keys) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {keys.jwt('alice', email_verified=True)}",
        "Accept": "application/json, text/event-stream",
    }


async def test_the_answer_ends_with_the_json_rpc_response_not_with_the_upstream_stream(
    broker: Process, emulator: Process, keys: Keys
) -> None:
    upstream = McpTarget()
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "get_issue"}}
    with LoopbackServer(upstream) as server:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            await put_held_connection(http, emulator, server.url, "alice-held")
            headers = alice_mcp_headers(keys)
            url = f"{broker.url}/v1/mcp/my-app/alice-held"
            # httpx returns once the whole answer is in: the broker ended it with the response
            # while the server's stream was still open (held for 10 s if nobody opens the gate).
            first = await http.post(url, json=call, headers=headers)
            assert not upstream.ended.is_set()
            assert first.status_code == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            data = first.text.split("data: ", 1)[1].strip()
            assert json.loads(data) == {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
            upstream.gate.set()
            second = await http.post(url, json={**call, "id": "eight"}, headers=headers)
            assert second.status_code == 200
            assert '"id": "eight"' in second.text


async def test_a_call_answered_early_frees_the_users_place_at_once(
    emulator: Process, keys: Keys, start_broker: Any
) -> None:
    """With one MCP call in progress allowed per user, calls made one after another all pass,
    although Smithery's stream of each is still open (being drained) when the next one comes."""
    broker = start_broker(emulator.url, BROKER_LIMITS_MCP_CALLS_PER_USER="1")
    upstream = McpTarget()
    try:
        with LoopbackServer(upstream) as server:
            async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
                await put_held_connection(http, emulator, server.url, "alice-held-limit")
                url = f"{broker.url}/v1/mcp/my-app/alice-held-limit"
                for number in range(3):
                    call = {"jsonrpc": "2.0", "id": number, "method": "tools/call"}
                    answer = await http.post(url, json=call, headers=alice_mcp_headers(keys))
                    assert answer.status_code == 200, answer.text
                assert not upstream.ended.is_set()  # no stream had ended when the next call came
                upstream.gate.set()
    finally:
        upstream.gate.set()
