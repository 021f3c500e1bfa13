"""``POST /v1/mcp/{namespace}/{connectionId}``: the guarded MCP proxy.

Authenticate, decide, then forward the very bytes that were checked to Smithery's
``/connect/{ns}/{id}/mcp`` with the caller's cached service token, streaming the answer back
(``application/json`` or ``text/event-stream``) without buffering it. A denied request gets a
JSON-RPC error (HTTP 200, code -32003, the reasons in ``data``) so MCP clients keep their
session; a denied notification gets 403 problem details. Smithery enforces the same constraints
again. GET and DELETE are 405, like Smithery's stateless endpoint. Denials, and answers for which
Smithery names no ``Cache-Control``, are ``no-store``: they are about one user.

The hottest MCP path is a plain ASGI handler: Litestar routes to it and its middleware (CORS,
tracing, the metrics hook, the problem-details exception handlers) wraps it as any route, but
it reads the raw headers and the body itself and answers with ASGI apps it built, instead of
Litestar's request model, parameter parsing, dependency injection and response rendering (R4 in
``bench/`` measured those as a large share of the broker's CPU per proxied call).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Final

import msgspec
from litestar import Litestar, asgi, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi import ResponseSpec
from litestar.params import FromPath
from litestar.types import ASGIApp, Receive, Scope, Send

from broker.errors import InvalidRequestError, RequestDeniedError
from broker.identity import Principal
from broker.jsonrpc import check_message, decode_strict, is_notification
from broker.policy import PolicySet
from broker.routes.body import receive_body, require_json
from broker.routes.names import check_name
from broker.routes.openapi import JSONRPC_MESSAGE, METHOD_NOT_ALLOWED, documented, problem_responses
from broker.routes.precheck import PRECHECK_FAILURES
from broker.routes.responses import NO_STORE, DisconnectWatch, JsonBody, Relay, request_headers
from broker.sse import ResponseWatch
from broker.state import BrokerState

PATH: Final = "/v1/mcp/{namespace:str}/{connection_id:str}"
MOUNT: Final = "/v1/mcp"
"""Mounted, so Litestar hands over every path below it: its router does not pass path
parameters to ASGI handlers (2.25 fails with a KeyError), so the handler splits the rest of the
path itself, ``/{namespace}/{connectionId}``."""
FORBIDDEN_CODE: Final = -32003
FORBIDDEN_MESSAGE: Final = "Forbidden: request not permitted by policy"
RETURNED_HEADERS: Final = (b"content-type", b"cache-control", b"retry-after")
"""Smithery's headers passed back: how to read the answer, who may keep it, and when to come
back after a 429 or 503 (the browser client honours it)."""
_HEADERS: Final = (
    b"authorization",
    b"content-type",
    b"content-length",
    b"transfer-encoding",
    b"accept",
    b"mcp-protocol-version",
)
_PROTOCOL_VERSION: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
"""MCP protocol versions are dates (YYYY-MM-DD)."""
_NO_CONTENT: Final = JsonBody(b"", ((b"allow", b"OPTIONS, POST"),), status=204)


class JsonRpcError(msgspec.Struct, frozen=True):
    code: int
    message: str
    data: dict[str, Any]


class JsonRpcErrorResponse(msgspec.Struct, frozen=True):
    jsonrpc: str
    id: str | int | None
    error: JsonRpcError


@asgi(MOUNT, is_mount=True, copy_scope=False)
async def proxy_mcp(scope: Scope, receive: Receive, send: Send) -> None:
    # The mount replaced the path with the part below it; the metrics hook, spans and problem
    # details name the route by the whole path, so it is put back first.
    rest = scope["path"]
    scope["path"] = MOUNT + rest.rstrip("/")
    namespace, slash, connection_id = rest.strip("/").partition("/")
    if not slash or not namespace or not connection_id or "/" in connection_id:
        raise NotFoundException("Use /v1/mcp/{namespace}/{connectionId}.")
    await _serve(scope, receive, send, namespace, connection_id)


@post(
    PATH,
    status_code=200,
    summary="Guarded MCP endpoint: precheck, then forward to Smithery",
    description="Stateless MCP (Streamable HTTP): one JSON-RPC message per POST. GET and DELETE "
    "are 405, like Smithery's stateless endpoint; OPTIONS is 204. Once the broker allows a "
    "message, Smithery's answer is relayed as it comes: its status, its body (JSON or "
    "text/event-stream), its Content-Type, Cache-Control and Retry-After. A 4xx or 5xx may "
    "therefore also be Smithery's own answer rather than the broker's problem details.",
    responses={
        200: ResponseSpec(
            JsonRpcErrorResponse,
            generate_examples=False,
            description="Smithery's answer relayed (application/json or text/event-stream), or "
            "the broker's JSON-RPC error -32003 explaining a denied request (the schema)",
        ),
        202: ResponseSpec(None, description="Smithery accepted a notification (relayed)"),
        **problem_responses(*PRECHECK_FAILURES, RequestDeniedError, METHOD_NOT_ALLOWED),
    },
    operation_class=documented(
        JSONRPC_MESSAGE,
        relayed="Any other answer of Smithery's MCP endpoint, relayed with its status",
    ),
)
async def proxy_mcp_documented(namespace: FromPath[str], connection_id: FromPath[str]) -> ASGIApp:
    """The OpenAPI entry of the proxy. Requests do not reach it: the mount above takes every
    path under ``/v1/mcp`` first. Should a router ever hand it one, it serves it the same way."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        await _serve(scope, receive, send, namespace, connection_id)

    return serve


async def _serve(
    scope: Scope, receive: Receive, send: Send, namespace: str, connection_id: str
) -> None:
    method = scope.get("method")
    if method != "POST":
        if method == "OPTIONS":
            await _NO_CONTENT(scope, receive, send)
            return
        raise HTTPException(
            status_code=405,
            detail="Method not allowed: this endpoint takes POST only (stateless MCP).",
            headers={"Allow": "POST"},
        )
    broker: BrokerState = Litestar.from_scope(scope).state.broker
    authorization, content_type, length, encoding, accept, protocol = request_headers(
        scope, *_HEADERS
    )
    principal = await broker.authenticator.authenticate(authorization)
    if broker.request_limit is not None:
        await broker.request_limit.acquire(principal.issuer, principal.subject)
    policy_set = broker.policy_set  # one snapshot decides and mints, whatever reloads meanwhile
    constraints = broker.admission.admit(principal, policy_set)
    check_name("namespace", namespace)
    check_name("connectionId", connection_id)
    limits = broker.settings.precheck
    body = await receive_body(
        receive,
        content_length=length,
        transfer_encoding=encoding,
        max_bytes=limits.max_body_bytes,
        timeout_seconds=broker.settings.server.body_timeout_seconds,
    )
    require_json(content_type)
    forwarded = _forwarded_headers(accept, protocol)
    message = check_message(decode_strict(body, max_depth=limits.max_depth))
    target = await broker.admission.target(principal, constraints, namespace, connection_id)
    decision = broker.admission.decide(
        principal,
        constraints,
        target,
        message,
        event="proxy.decision",
        connection_id=connection_id,
    )
    if not decision.allowed:
        reasons = [d.as_json() for d in decision.reasons]
        if is_notification(message):
            raise RequestDeniedError(reasons)
        denial = JsonRpcErrorResponse(
            jsonrpc="2.0",
            id=message.get("id"),
            error=JsonRpcError(FORBIDDEN_CODE, FORBIDDEN_MESSAGE, {"reasons": reasons}),
        )
        await JsonBody(msgspec.json.encode(denial), NO_STORE)(scope, receive, send)
        return
    calls = broker.mcp_calls  # a place per call in progress, held until its answer ends
    place = None if calls is None else calls.acquire(principal.issuer, principal.subject)

    def release() -> None:
        nonlocal place
        if calls is not None and place is not None:
            calls.release(place)
            place = None

    try:
        await _forward(
            broker,
            scope,
            receive,
            send,
            principal,
            policy_set,
            namespace,
            connection_id,
            body,
            forwarded,
            message.get("id"),
            release,
        )
    finally:
        release()


async def _forward(
    broker: BrokerState,
    scope: Scope,
    receive: Receive,
    send: Send,
    principal: Principal,
    policy_set: PolicySet,
    namespace: str,
    connection_id: str,
    body: bytes,
    forwarded: list[tuple[str, str]],
    request_id: int | str | None,
    answered: Callable[[], None],
) -> None:
    """The allowed call: the user's service token, then Smithery's answer relayed as it comes.
    An event stream answering a request ends for the client with its JSON-RPC response."""
    issued = await broker.issuance.issue(principal, for_proxy=True, policy_set=policy_set)
    # Smithery may think for minutes (a slow tool): a client that leaves meanwhile frees the
    # upstream connection at once instead of at the MCP timeout.
    watch = DisconnectWatch(receive)
    try:
        with broker.telemetry.span("broker.proxy.forward") as span:
            upstream = await broker.upstream.open_mcp(
                namespace, connection_id, body, forwarded, issued.token
            )
            if span is not None:
                span.set_attribute("http.response.status_code", upstream.status_code)
    except BaseException as exc:
        watch.stop()
        if isinstance(exc, asyncio.CancelledError) and watch.forgive():
            return  # the client left: nobody to answer
        raise
    headers = [(name, value) for name, value in upstream.headers if name in RETURNED_HEADERS]
    ends = None
    if request_id is not None and upstream.status_code == 200:
        media_type = next((v for n, v in headers if n == b"content-type"), b"").partition(b";")[0]
        if media_type.strip().lower() == b"text/event-stream":
            ends = ResponseWatch(request_id).feed
    names = {name for name, _ in headers}
    if b"content-type" not in names:
        headers.append((b"content-type", b"application/json"))
    if b"cache-control" not in names:  # a user's tool results: no cache may keep them
        headers.extend(NO_STORE)
    relay = Relay(
        upstream.status_code,
        headers,
        upstream.chunks,
        upstream.aclose,
        arrived=upstream.arrived,
        drained=upstream.drained,
        ends=ends,
        answered=answered,
        watch=watch,
    )
    await relay(scope, receive, send)


def _forwarded_headers(accept: str | None, protocol: str | None) -> list[tuple[str, str]]:
    """The MCP headers passed on, checked like the body before anything is decided. The body
    is read as UTF-8 JSON, and that is what Smithery is told it is."""
    forwarded = [("content-type", "application/json")]
    if accept is not None:
        if not (accept.isascii() and accept.isprintable()):
            raise InvalidRequestError("The Accept header must be printable ASCII.")
        forwarded.append(("accept", accept))
    if protocol is not None:
        if not _PROTOCOL_VERSION.fullmatch(protocol):
            raise InvalidRequestError("MCP-Protocol-Version must be a date such as 2025-06-18.")
        forwarded.append(("mcp-protocol-version", protocol))
    return forwarded
