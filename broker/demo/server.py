"""The demo MCP server ("demo-github"): four tools over stateless Streamable HTTP at ``/mcp``.

Built on the official ``mcp`` SDK's low-level ``Server`` (not ``MCPServer``, whose constructor
configures the process's root logger: a demo embedded in ``broker dev`` must not). Stateless
because Smithery's ``/connect/{ns}/{id}/mcp`` is (SMITHERY-SEMANTICS.md, "The MCP endpoint"): each
POST is served on its own and no ``Mcp-Session-Id`` is issued (MCP spec, Streamable HTTP). Answers
are ``text/event-stream`` (the SDK's default), so a relay in front of it must stream. Tool
arguments are typed with msgspec, which also writes their input schemas.

Each ``create_demo_mcp_app`` call builds an independent server, tracker and session manager, so
several can run in one process or event loop. The SDK's session manager runs in the app's ASGI
lifespan, so the server must be run with its lifespan (uvicorn does; ``lifespan="on"``). This
module must not import anything from ``broker`` outside ``broker/demo``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import uvicorn
from mcp import MCPError, types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from broker.demo.tracker import REPOSITORY, IssueTracker

if TYPE_CHECKING:
    # The SDK builds the app with Starlette (a dependency of ``mcp``); only its type is named here.
    from starlette.applications import Starlette

DEMO_SERVER_NAME = "demo-github"
DEMO_SERVER_VERSION = "1.0.0"
MCP_PATH = "/mcp"


class SearchIssuesArguments(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    query: str


class GetIssueArguments(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    number: int


class CreateIssueArguments(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    title: str
    body: str = ""


class DeleteRepositoryArguments(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str


@dataclass(frozen=True, slots=True)
class _Tool:
    """One tool: its arguments' type (which gives the input schema), what it does, its docs."""

    arguments: type[msgspec.Struct]
    run: Callable[[IssueTracker, Any], types.CallToolResult]
    description: str
    annotations: types.ToolAnnotations


def _search_issues(tracker: IssueTracker, args: SearchIssuesArguments) -> types.CallToolResult:
    return _result({"issues": msgspec.to_builtins(tracker.search(args.query))})


def _get_issue(tracker: IssueTracker, args: GetIssueArguments) -> types.CallToolResult:
    issue = tracker.get(args.number)
    if issue is None:
        return _error(f"Issue #{args.number} not found in {REPOSITORY}.")
    return _result(msgspec.to_builtins(issue))


def _create_issue(tracker: IssueTracker, args: CreateIssueArguments) -> types.CallToolResult:
    return _result(msgspec.to_builtins(tracker.create(args.title, args.body)))


def _delete_repository(
    tracker: IssueTracker, args: DeleteRepositoryArguments
) -> types.CallToolResult:
    return _result({"message": tracker.delete_repository(args.name)})


_TOOLS: dict[str, _Tool] = {
    "search_issues": _Tool(
        SearchIssuesArguments,
        _search_issues,
        f"Search the issues of {REPOSITORY} by text in their title, body or labels.",
        types.ToolAnnotations(read_only_hint=True),
    ),
    "get_issue": _Tool(
        GetIssueArguments,
        _get_issue,
        f"Get one issue of {REPOSITORY} by number.",
        types.ToolAnnotations(read_only_hint=True),
    ),
    "create_issue": _Tool(
        CreateIssueArguments,
        _create_issue,
        f"Open a new issue in {REPOSITORY}.",
        types.ToolAnnotations(read_only_hint=False, destructive_hint=False),
    ),
    "delete_repository": _Tool(
        DeleteRepositoryArguments,
        _delete_repository,
        "Delete a repository. Destructive: the example policies never grant it.",
        types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
    ),
}


def _tool_listing() -> list[types.Tool]:
    _, schemas = msgspec.json.schema_components([tool.arguments for tool in _TOOLS.values()])
    return [
        types.Tool(
            name=name,
            description=tool.description,
            input_schema=schemas[tool.arguments.__name__],
            annotations=tool.annotations,
        )
        for name, tool in _TOOLS.items()
    ]


def _result(structured: dict[str, Any]) -> types.CallToolResult:
    # MCP spec (tools, structured content): also send it serialized as text, for older clients.
    text = msgspec.json.encode(structured).decode()
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=structured
    )


def _error(message: str) -> types.CallToolResult:
    # A tool execution error (isError), not a protocol error: the model can read and react.
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


def _build_server(tracker: IssueTracker) -> Server[Any]:
    listing = _tool_listing()

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listing)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = _TOOLS.get(params.name)
        if tool is None:
            # MCP spec (tools, error handling): an unknown tool is a protocol error.
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        try:
            arguments = msgspec.convert(params.arguments or {}, tool.arguments)
        except msgspec.ValidationError as error:
            return _error(f"Invalid arguments for {params.name}: {error}")
        return tool.run(tracker, arguments)

    return Server(
        DEMO_SERVER_NAME,
        version=DEMO_SERVER_VERSION,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def create_demo_mcp_app(*, host: str = "127.0.0.1") -> Starlette:
    """A fresh demo MCP server as an ASGI app serving stateless Streamable HTTP at ``/mcp``.

    ``host``: the interface it will listen on. On a loopback host the SDK's DNS-rebinding
    protection is on (only ``127.0.0.1``, ``localhost`` and ``[::1]`` Host headers, any port);
    on another host it is off. Run it with its lifespan, once: the SDK's session manager cannot
    be started twice, so build a new app for each server.
    """
    return _build_server(IssueTracker()).streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, host=host
    )


def run_demo_mcp(host: str, port: int) -> None:
    """Serve a fresh demo MCP server with uvicorn until interrupted (blocking)."""
    uvicorn.run(
        create_demo_mcp_app(host=host), host=host, port=port, log_level="warning", lifespan="on"
    )
