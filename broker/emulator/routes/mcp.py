"""``POST /connect/{namespace}/{connectionId}/mcp``: Smithery's MCP endpoint, guarded by scope.

Stateless Streamable HTTP (SMITHERY-SEMANTICS.md, "The MCP endpoint"; MCP spec, Streamable
HTTP): one JSON-RPC message per POST, answered with the MCP server's own ``application/json`` or
``text/event-stream`` response (202 for notifications), relayed as it streams. ``GET``,
``DELETE``, ``PUT`` and ``PATCH`` are 405 with ``Allow: POST``: there is no session and no
server-initiated stream.

The checks, in order (each step's error is a JSON-RPC error object):

1. the bearer is the API key or a valid service token, else 401 ``-32000`` with a null id (OPEN:
   ``McpUnauthorizedError``; never ``-32001``, which means upstream OAuth);
2. the body is one JSON-RPC message, else 400 ``-32700``/``-32600`` with a null id;
3. the token may execute on connections in the namespace at all, else 403 ``-32003`` (before the
   lookup, so a token cannot probe for connection ids);
4. the connection exists and the token may read or execute it by its metadata, else 404 (OPEN, as
   for ``GET``: a connection the token may not see does not exist for it);
5. some constraint of every block allows ``execute`` on it for this message, ``rpcReqMatch``
   included (``scope.py``; patterns evaluated by node, ``rpc_oracle.py``), else 403 ``-32003``.
   With the lifecycle exemption on, ``initialize``/``ping``/``notifications/*`` skip
   ``rpcReqMatch`` only;
6. the connection is not waiting for the user's OAuth consent (``status`` ``auth_required``),
   else 401 ``-32001 Authorization required`` with ``data.authorizationUrl`` (its setup page),
   nor for inputs (``status`` ``input_required``), else 409 ``-32002 Input required`` with
   ``data: {http, missing}`` from the status;
7. the message is forwarded (``relay.py``): 502 if the connection has no ``mcpUrl`` or its server
   cannot be reached.

Injected faults (``faults.py``, family ``mcp``) apply before step 1, outside this handler.

Thin: this module wires those pieces and keeps the counters; it builds no error bodies.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from litestar import Request, post, route
from litestar.enums import HttpMethod
from litestar.params import FromPath
from litestar.response import Stream
from msgspec import UnsetType

from broker.emulator.errors import (
    McpAuthorizationRequiredError,
    McpBadGatewayError,
    McpConnectionNotFoundError,
    McpForbiddenError,
    McpInputRequiredError,
    McpMethodNotAllowedError,
    McpOracleError,
    McpUnauthorizedError,
    UnauthorizedError,
)
from broker.emulator.faults import fault_route_opt
from broker.emulator.jsonrpc import RpcMessage, decode_message
from broker.emulator.principal import Principal
from broker.emulator.relay import RelayError
from broker.emulator.rpc_oracle import OracleError
from broker.emulator.scope import Action
from broker.emulator.state import EmulatorDependency, EmulatorState

AnyRequest: TypeAlias = Request[Any, Any, Any]

MCP_PATH = "/connect/{namespace:str}/{connection_id:str}/mcp"


@post(MCP_PATH, opt=fault_route_opt("mcp"))
async def post_message(
    request: AnyRequest,
    emulator: EmulatorDependency,
    namespace: FromPath[str],
    connection_id: FromPath[str],
) -> Stream:
    """Check one JSON-RPC message against the bearer's scope, then relay it to ``mcpUrl``."""
    principal = _authenticate(emulator, request)
    body = await request.body()
    message = decode_message(body)
    execute = Action(namespace, "connections", "execute")
    if not principal.permits_action(execute):
        raise _denied(emulator, message)

    item = emulator.connections.get(namespace, connection_id)
    if item is None or not _visible(principal, namespace, item.connection.metadata):
        raise McpConnectionNotFoundError(request_id=message.request_id)
    metadata = item.connection.metadata
    try:
        allowed = await principal.permits_message(
            execute,
            metadata,
            message.text,
            emulator.oracle.match,
            skip_rpc_match=emulator.exempt_lifecycle and message.is_lifecycle,
        )
    except OracleError as error:
        raise McpOracleError(
            f"Internal error: rpcReqMatch could not be evaluated ({error})",
            request_id=message.request_id,
        ) from None
    if not allowed:
        raise _denied(emulator, message)
    emulator.stats.mcp_allowed += 1
    status = item.connection.status
    if not isinstance(status, UnsetType) and status.state == "auth_required":
        raise McpAuthorizationRequiredError(str(status.setup_url), request_id=message.request_id)
    if not isinstance(status, UnsetType) and status.state == "input_required":
        raise McpInputRequiredError(
            {"http": status.http, "missing": status.missing}, request_id=message.request_id
        )

    mcp_url = item.connection.mcp_url
    if mcp_url is None:
        raise McpBadGatewayError(
            "Bad gateway: the connection has no mcpUrl", request_id=message.request_id
        )
    try:
        relayed = await emulator.relay.forward(mcp_url, body, request.headers, item.headers)
    except RelayError as error:
        raise McpBadGatewayError(
            f"Bad gateway: the MCP server could not be reached ({error})",
            request_id=message.request_id,
        ) from None
    emulator.stats.mcp_forwarded += 1
    # Only Content-Type comes back: no Mcp-Session-Id (stateless), no hop-by-hop headers.
    # Without one (a 202's empty body), Litestar labels the body application/json.
    headers = {} if relayed.content_type is None else {"content-type": relayed.content_type}
    return Stream(relayed.body, status_code=relayed.status_code, headers=headers)


@route(
    MCP_PATH,
    http_method=[HttpMethod.GET, HttpMethod.DELETE, HttpMethod.PUT, HttpMethod.PATCH],
)
async def refuse_session_method() -> None:
    """GET (server-initiated SSE stream) and DELETE (end a session): neither exists here. PUT
    and PATCH are refused the same way, so that every 405 here has one shape."""
    raise McpMethodNotAllowedError


def _authenticate(emulator: EmulatorState, request: AnyRequest) -> Principal:
    try:
        return emulator.authenticate(request.headers.get("authorization"))
    except UnauthorizedError:
        emulator.stats.requests_unauthorized += 1
        raise McpUnauthorizedError from None


def _visible(principal: Principal, namespace: str, metadata: dict[str, Any] | None) -> bool:
    """Whether the token may read or execute this connection, rpcReqMatch aside."""
    return any(
        principal.permits(Action(namespace, "connections", operation), metadata)
        for operation in ("read", "execute")
    )


def _denied(emulator: EmulatorState, message: RpcMessage) -> McpForbiddenError:
    emulator.stats.mcp_denied += 1
    emulator.stats.requests_forbidden += 1
    return McpForbiddenError(request_id=message.request_id)
