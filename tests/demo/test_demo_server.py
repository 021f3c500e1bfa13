"""The demo MCP server, served for real on loopback and driven by the official ``mcp`` client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from mcp import MCPError

from broker.demo import DEMO_SERVER_NAME, MCP_PATH, create_demo_mcp_app, run_demo_mcp
from tests.demo.demo_harness import mcp_session
from tests.emulator.loopback import LoopbackServer, serve_in_loop

TOOL_NAMES = ["search_issues", "get_issue", "create_issue", "delete_repository"]


def _text(result: Any) -> str:
    [content] = result.content
    assert content.type == "text"
    text: str = content.text
    return text


async def test_initialize_names_the_server(demo_mcp_url: str) -> None:
    async with mcp_session(demo_mcp_url) as session:
        result = await session.initialize()
    assert result.server_info.name == DEMO_SERVER_NAME
    assert result.capabilities.tools is not None


async def test_lists_four_tools_with_input_schemas(demo_mcp_url: str) -> None:
    async with mcp_session(demo_mcp_url) as session:
        await session.initialize()
        listing = await session.list_tools()
    tools = {tool.name: tool for tool in listing.tools}
    assert list(tools) == TOOL_NAMES
    assert tools["search_issues"].input_schema["properties"] == {"query": {"type": "string"}}
    assert tools["search_issues"].input_schema["required"] == ["query"]
    assert tools["get_issue"].input_schema["properties"] == {"number": {"type": "integer"}}
    create = tools["create_issue"].input_schema
    assert create["required"] == ["title"]
    assert create["properties"]["body"] == {"type": "string", "default": ""}
    assert create["additionalProperties"] is False
    assert tools["delete_repository"].annotations is not None
    assert tools["delete_repository"].annotations.destructive_hint is True
    assert tools["search_issues"].annotations is not None
    assert tools["search_issues"].annotations.read_only_hint is True


async def test_search_issues_returns_matching_issues(demo_mcp_url: str) -> None:
    async with mcp_session(demo_mcp_url) as session:
        await session.initialize()
        result = await session.call_tool("search_issues", {"query": "BUG"})
    assert result.is_error is False
    expected = {
        "issues": [
            {"number": 1, "title": "Crash when saving an empty widget", "state": "open"},
            {"number": 4, "title": "Widget export drops colours", "state": "open"},
        ]
    }
    assert result.structured_content == expected
    assert json.loads(_text(result)) == expected


async def test_get_create_and_delete(demo_mcp_url: str) -> None:
    async with mcp_session(demo_mcp_url) as session:
        await session.initialize()
        issue = await session.call_tool("get_issue", {"number": 3})
        created = await session.call_tool("create_issue", {"title": "New", "body": "Text"})
        found = await session.call_tool("search_issues", {"query": "new"})
        deleted = await session.call_tool("delete_repository", {"name": "acme/widgets"})
    assert issue.structured_content is not None
    assert issue.structured_content["title"] == "Typo in the README"
    assert created.structured_content == {
        "number": 5,
        "title": "New",
        "body": "Text",
        "state": "open",
        "labels": [],
    }
    assert found.structured_content == {"issues": [{"number": 5, "title": "New", "state": "open"}]}
    assert deleted.structured_content == {
        "message": "Repository 'acme/widgets' deleted (demo: nothing was deleted)."
    }


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("get_issue", {"number": 99}, "Issue #99 not found in acme/widgets."),
        ("get_issue", {"number": "3"}, "Invalid arguments for get_issue: Expected `int`"),
        ("search_issues", {}, "Invalid arguments for search_issues: Object missing required"),
        ("create_issue", {"title": "x", "extra": 1}, "Invalid arguments for create_issue: Object"),
    ],
    ids=["missing-issue", "wrong-type", "missing-argument", "unknown-argument"],
)
async def test_tool_errors_are_results(
    demo_mcp_url: str, tool: str, arguments: dict[str, Any], message: str
) -> None:
    async with mcp_session(demo_mcp_url) as session:
        await session.initialize()
        result = await session.call_tool(tool, arguments)
    assert result.is_error is True
    assert _text(result).startswith(message)


async def test_unknown_tool_is_a_protocol_error(demo_mcp_url: str) -> None:
    async with mcp_session(demo_mcp_url) as session:
        await session.initialize()
        with pytest.raises(MCPError) as raised:
            await session.call_tool("drop_database", {})
    assert raised.value.code == -32602
    assert raised.value.message == "Unknown tool: drop_database"


async def test_stateless_no_session_issued_or_needed(demo_mcp_url: str) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
        response = await http.post(demo_mcp_url, json=initialize, headers=headers)
        assert response.status_code == 200
        assert "mcp-session-id" not in response.headers
        # Stateless: a tools/list needs no session id and no prior initialize on this "session".
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        headers["MCP-Protocol-Version"] = "2025-06-18"
        response = await http.post(demo_mcp_url, json=listing, headers=headers)
        assert response.status_code == 200
        assert "search_issues" in response.text


async def test_several_servers_in_one_event_loop() -> None:
    async with (
        serve_in_loop(create_demo_mcp_app()) as first,
        serve_in_loop(create_demo_mcp_app()) as second,
    ):
        async with mcp_session(f"{first}{MCP_PATH}") as session:
            await session.initialize()
            created = await session.call_tool("create_issue", {"title": "Only in the first"})
        async with mcp_session(f"{second}{MCP_PATH}") as session:
            await session.initialize()
            found = await session.call_tool("search_issues", {"query": "only in"})
    assert created.structured_content is not None
    assert created.structured_content["number"] == 5
    # Each app has its own tracker: the second server never saw the first one's issue.
    assert found.structured_content == {"issues": []}


async def test_rebinding_protection_on_loopback(demo_mcp_url: str) -> None:
    headers = {"Host": "evil.example", "Accept": "application/json, text/event-stream"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as http:
        response = await http.post(demo_mcp_url, json=body, headers=headers)
    assert response.status_code == 421


async def test_run_demo_mcp_serves_a_demo_app_with_its_lifespan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(
        "broker.demo.server.uvicorn.run", lambda app, **options: calls.append((app, options))
    )
    run_demo_mcp("127.0.0.1", 8765)
    [(app, options)] = calls
    assert options == {"host": "127.0.0.1", "port": 8765, "log_level": "warning", "lifespan": "on"}
    with LoopbackServer(app) as server:
        async with mcp_session(f"{server.url}{MCP_PATH}") as session:
            assert (await session.initialize()).server_info.name == DEMO_SERVER_NAME
