"""The emulator's error tree, shaped like Smithery's error bodies.

Each error carries the HTTP status and the ``error`` code Smithery answers with; ``app.py`` turns
them into ``{"error": ..., "message": ...}`` in one place, except ``JsonRpcEndpointError`` (the MCP
endpoint's errors), which also carries a JSON-RPC error code and becomes a JSON-RPC error object.
Handlers raise, they never build error responses. This module must not import anything from the
broker: the emulator is the independent party the broker is checked against.
"""

from __future__ import annotations

from typing import Any


class EmulatorError(Exception):
    """Root of every error the emulator answers on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        self.message = message
        self.headers = headers or {}
        super().__init__(message)


class InvalidRequestError(EmulatorError):
    """A ``POST /tokens`` body that breaks the ``CreateTokenRequest`` schema (TokenError 400)."""

    status_code = 400
    code = "invalid_request"


class ValidationFailedError(EmulatorError):
    """A ``/connect`` body or query that breaks its schema (OpenAPI ``ValidationError``)."""

    status_code = 400
    code = "validation_error"


class InvalidTokenError(EmulatorError):
    """A token given to the introspection endpoint that is malformed or wrongly signed."""

    status_code = 400
    code = "invalid_token"


class UnauthorizedError(EmulatorError):
    """A missing or unknown bearer, or a service token that is expired or tampered with.

    The body stays generic, like Smithery's: the precise reason is not disclosed.
    """

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "Invalid API key") -> None:
        super().__init__(message)


class ForbiddenError(EmulatorError):
    """A valid bearer whose scope does not allow a read (the write routes answer 404 instead:
    ``NamespaceNotFoundError``)."""

    status_code = 403
    code = "forbidden"


class NotFoundError(EmulatorError):
    """A connection that does not exist, or that the bearer's scope may not see."""

    status_code = 404
    code = "not_found"


class NamespaceNotFoundError(NotFoundError):
    """A write (``PUT``/``POST``/``DELETE`` on ``/connect``) in a namespace the API key does not
    own, or one the bearer's scope may not write to.

    The OpenAPI lists no 403 for these routes: "404 Namespace not found or access denied" (PUT,
    POST), "404 Namespace or connection not found" (DELETE). One message for both causes, so a
    token cannot tell an unowned namespace from a missing write scope.
    """

    def __init__(self) -> None:
        super().__init__("Namespace not found or access denied")


class InjectedStatusError(EmulatorError):
    """A ``status`` fault on ``/tokens`` or the connection routes (``faults.py``): any 4xx/5xx,
    ``error`` derived from the status's reason phrase, with ``Retry-After`` when asked."""

    def __init__(
        self, status_code: int, code: str, phrase: str, *, retry_after: int | None
    ) -> None:
        super().__init__(f"{phrase} (injected fault)", headers=_retry_after(retry_after))
        self.status_code = status_code
        self.code = code


class ConflictError(EmulatorError):
    """A PUT that would change an existing connection's target: its ``mcpUrl``, or its
    transport (OpenAPI: 409 URL mismatch; ``connection.py`` says when a change is allowed)."""

    status_code = 409
    code = "conflict"


RequestId = str | int | float
"""A JSON-RPC request id as MCP allows it: a string or a number, never null."""


class JsonRpcEndpointError(EmulatorError):
    """An error answer of ``POST /connect/{ns}/{id}/mcp``: a JSON-RPC error object.

    Smithery's MCP endpoint answers errors as ``{"jsonrpc": "2.0", "id", "error": {code,
    message}}`` (SMITHERY-SEMANTICS.md, "The MCP endpoint"), not ``{error, message}``. ``app.py``
    renders these; ``request_id`` is echoed when the message was readable, else null.
    """

    status_code = 500
    code = "internal_error"
    rpc_code = -32603
    data: dict[str, Any] | None = None
    """The error object's ``data``, where Smithery documents one."""

    def __init__(
        self,
        message: str,
        *,
        request_id: RequestId | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers=headers)
        self.request_id = request_id


class JsonRpcParseError(JsonRpcEndpointError):
    """The body is not JSON (JSON-RPC 2.0 ``-32700 Parse error``)."""

    status_code = 400
    code = "parse_error"
    rpc_code = -32700

    def __init__(self) -> None:
        super().__init__("Parse error")


class JsonRpcInvalidRequestError(JsonRpcEndpointError):
    """JSON, but not one JSON-RPC message object (JSON-RPC 2.0 ``-32600 Invalid Request``)."""

    status_code = 400
    code = "invalid_request"
    rpc_code = -32600

    def __init__(self) -> None:
        super().__init__("Invalid Request")


class McpForbiddenError(JsonRpcEndpointError):
    """The token's constraints do not allow this message on this connection.

    OPEN (SMITHERY-SEMANTICS.md): undocumented upstream; the emulator answers 403 ``-32003``.
    """

    status_code = 403
    code = "forbidden"
    rpc_code = -32003

    def __init__(self, *, request_id: RequestId | None) -> None:
        super().__init__("Forbidden: request not permitted by token policy", request_id=request_id)


class McpConnectionNotFoundError(JsonRpcEndpointError):
    """No such connection, or one the token may not see (404, as for ``GET``).

    OPEN: Smithery documents the 404 but not its JSON-RPC code; the emulator uses ``-32000``,
    the first implementation-defined server error code of JSON-RPC 2.0.
    """

    status_code = 404
    code = "not_found"
    rpc_code = -32000

    def __init__(self, *, request_id: RequestId | None) -> None:
        super().__init__("Connection not found", request_id=request_id)


class McpAuthorizationRequiredError(JsonRpcEndpointError):
    """The connection's MCP server needs the user's OAuth consent first (``status`` is
    ``auth_required``): 401 ``-32001 Authorization required`` with ``data.authorizationUrl``,
    as documented (SMITHERY-SEMANTICS.md, "The MCP endpoint"; ``AuthRequiredError``).
    OPEN: whether Smithery checks this before or after the token's constraints; the emulator
    checks it after them, so a token learns nothing about a connection it may not use."""

    status_code = 401
    code = "authorization_required"
    rpc_code = -32001

    def __init__(self, authorization_url: str, *, request_id: RequestId | None) -> None:
        super().__init__("Authorization required", request_id=request_id)
        self.data = {"authorizationUrl": authorization_url}


class McpUnauthorizedError(JsonRpcEndpointError):
    """A missing or unknown bearer, or a service token that is expired or tampered with, at the
    MCP endpoint: 401 as on every route, but as a JSON-RPC error object, because the endpoint's
    errors are JSON-RPC error objects (SMITHERY-SEMANTICS.md, "The MCP endpoint").

    OPEN: Smithery documents only the upstream-OAuth 401 (``-32001 Authorization required``,
    with ``data.authorizationUrl``). A bad bearer is not that, so it gets ``-32000`` (as the
    endpoint's other non-protocol errors) and never ``-32001``, which clients take as "send the
    user to ``authorizationUrl``". Checked before the body is read: the id is null. The message
    is as generic as the REST routes' 401 (``UnauthorizedError``).
    """

    status_code = 401
    code = "unauthorized"
    rpc_code = -32000

    def __init__(self) -> None:
        super().__init__("Invalid API key")


class McpInputRequiredError(JsonRpcEndpointError):
    """The connection's MCP server needs inputs the connection does not carry yet (``status``
    is ``input_required``): 409 ``-32002 Input required`` with ``data: {http, missing}``, as
    documented (SMITHERY-SEMANTICS.md, "The MCP endpoint"; OpenAPI ``InputRequiredError``).
    Checked where ``McpAuthorizationRequiredError`` is: after the token's constraints."""

    status_code = 409
    code = "input_required"
    rpc_code = -32002

    def __init__(self, data: dict[str, Any], *, request_id: RequestId | None) -> None:
        super().__init__("Input required", request_id=request_id)
        self.data = data


class McpMethodNotAllowedError(JsonRpcEndpointError):
    """Any method but POST (``GET``, ``DELETE``, ``PUT``, ``PATCH``): the endpoint is stateless
    Streamable HTTP, POST only.

    MCP spec (Streamable HTTP): a server that offers no SSE stream answers GET with 405, and one
    without sessions may answer DELETE with 405. PUT and PATCH mean nothing there at all; they
    get the same answer so that every 405 of the endpoint has one shape and ``Allow: POST``.
    """

    status_code = 405
    code = "method_not_allowed"
    rpc_code = -32000

    def __init__(self) -> None:
        super().__init__(
            "Method not allowed: this endpoint is stateless", headers={"Allow": "POST"}
        )


class McpBadGatewayError(JsonRpcEndpointError):
    """The connection has no ``mcpUrl``, or its MCP server could not be reached (502)."""

    status_code = 502
    code = "bad_gateway"
    rpc_code = -32000


class McpOracleError(JsonRpcEndpointError):
    """The rpcReqMatch oracle (node) gave no answer: neither allow nor deny, fail the request."""

    status_code = 500
    code = "internal_error"
    rpc_code = -32603


class McpInjectedStatusError(JsonRpcEndpointError):
    """A ``status`` fault on the MCP endpoint (``faults.py``): answered before the body is read,
    so the id is null; ``-32000`` as for the endpoint's other non-protocol errors."""

    code = "injected_fault"
    rpc_code = -32000

    def __init__(self, status_code: int, phrase: str, *, retry_after: int | None) -> None:
        super().__init__(f"{phrase} (injected fault)", headers=_retry_after(retry_after))
        self.status_code = status_code


def _retry_after(seconds: int | None) -> dict[str, str]:
    return {} if seconds is None else {"Retry-After": str(seconds)}
