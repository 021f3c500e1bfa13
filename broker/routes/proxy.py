"""``POST /v1/mcp/{namespace}/{connectionId}``: the guarded MCP proxy.

Authenticate, decide, then forward the very bytes that were checked to Smithery's
``/connect/{ns}/{id}/mcp`` with the caller's cached service token, streaming the answer back
(``application/json`` or ``text/event-stream``) without buffering it. A denied request gets a
JSON-RPC error (HTTP 200, code -32003, the reasons in ``data``) so MCP clients keep their
session; a denied notification gets 403 problem details. Smithery enforces the same constraints
again. GET and DELETE are 405, like Smithery's stateless endpoint.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, post
from litestar.openapi import ResponseSpec
from litestar.types import ASGIApp

from broker.errors import RequestDeniedError
from broker.jsonrpc import check_message, is_notification
from broker.precheck import Target
from broker.routes.body import read_strict_json
from broker.routes.caller import limited_caller
from broker.routes.names import check_name
from broker.routes.responses import JsonBody, Relay
from broker.state import BrokerState

FORBIDDEN_CODE: Final = -32003
FORBIDDEN_MESSAGE: Final = "Forbidden: request not permitted by policy"
RETURNED_HEADERS: Final = (b"content-type", b"cache-control")


class JsonRpcError(msgspec.Struct, frozen=True):
    code: int
    message: str
    data: dict[str, Any]


class JsonRpcErrorResponse(msgspec.Struct, frozen=True):
    jsonrpc: str
    id: str | int | None
    error: JsonRpcError


@post(
    "/v1/mcp/{namespace:str}/{connection_id:str}",
    status_code=200,
    request_max_body_size=16 * 1024 * 1024,
    summary="Guarded MCP endpoint: precheck, then forward to Smithery",
    responses={
        200: ResponseSpec(
            JsonRpcErrorResponse,
            description="Smithery's answer streamed through (application/json or "
            "text/event-stream), or a JSON-RPC error -32003 explaining a denial",
        )
    },
)
async def proxy_mcp(request: Request[Any, Any, Any]) -> ASGIApp:
    # The hottest MCP path: the state from the application and the path parameters as the
    # router found them (no dependency injection or parameter models), like /v1/tokens.
    broker: BrokerState = request.app.state.broker
    namespace: str = request.path_params["namespace"]
    connection_id: str = request.path_params["connection_id"]
    principal = await limited_caller(request, broker)
    check_name("namespace", namespace)
    check_name("connectionId", connection_id)
    limits = broker.settings.precheck
    body, parsed = await read_strict_json(
        request,
        timeout_seconds=broker.settings.server.body_timeout_seconds,
        max_bytes=limits.max_body_bytes,
        max_depth=limits.max_depth,
    )
    message = check_message(parsed)
    metadata = await broker.admission.connection_metadata(namespace, connection_id)
    decision = broker.admission.decide(
        principal,
        Target(namespace, metadata),
        message,
        event="proxy.decision",
        connection_id=connection_id,
    )
    if not decision.allowed:
        reasons = [d.as_json() for d in decision.reasons]
        if is_notification(message):
            raise RequestDeniedError(reasons)
        return JsonBody(
            msgspec.json.encode(
                JsonRpcErrorResponse(
                    jsonrpc="2.0",
                    id=message.get("id"),
                    error=JsonRpcError(FORBIDDEN_CODE, FORBIDDEN_MESSAGE, {"reasons": reasons}),
                )
            )
        )
    issued = await broker.issuance.issue(principal)
    with broker.telemetry.span("broker.proxy.forward") as span:
        upstream = await broker.upstream.open_mcp(
            namespace, connection_id, body, request.headers, issued.token
        )
        if span is not None:
            span.set_attribute("http.response.status_code", upstream.status_code)
    headers = [(name, value) for name, value in upstream.headers if name in RETURNED_HEADERS]
    if not any(name == b"content-type" for name, _ in headers):
        headers.append((b"content-type", b"application/json"))
    return Relay(
        upstream.status_code,
        headers,
        upstream.chunks,
        upstream.aclose,
        arrived=upstream.arrived,
        drained=upstream.drained,
    )
