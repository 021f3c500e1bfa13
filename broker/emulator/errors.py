"""The emulator's error tree, shaped like Smithery's error bodies.

Each error carries the HTTP status and the ``error`` code Smithery answers with; ``app.py`` turns
them into ``{"error": ..., "message": ...}`` in one place, except ``JsonRpcEndpointError`` (the MCP
endpoint's errors), which also carries a JSON-RPC error code and becomes a JSON-RPC error object.
Handlers raise, they never build error responses. This module must not import anything from the
broker: the emulator is the independent party the broker is checked against.
"""

from __future__ import annotations


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
    """A valid bearer whose scope does not allow the request."""

    status_code = 403
    code = "forbidden"


class NotFoundError(EmulatorError):
    """A connection that does not exist, or that the bearer's scope may not see."""

    status_code = 404
    code = "not_found"


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
    """A PUT that would change an existing connection's ``mcpUrl`` (OpenAPI: 409 URL mismatch)."""

    status_code = 409
    code = "conflict"


RequestId = str | int | float
"""A JSON-RPC request id as MCP allows it: a string or a number, never null."""


class JsonRpcEndpointError(EmulatorError):
    """An answer of ``POST /connect/{ns}/{id}/mcp`` other than 401: a JSON-RPC error object.

    Smithery's MCP endpoint answers errors as ``{"jsonrpc": "2.0", "id", "error": {code,
    message}}`` (SMITHERY-SEMANTICS.md, "The MCP endpoint"), not ``{error, message}``. ``app.py``
    renders these; ``request_id`` is echoed when the message was readable, else null.
    """

    status_code = 500
    code = "internal_error"
    rpc_code = -32603
    data: dict[str, str] | None = None
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


class McpMethodNotAllowedError(JsonRpcEndpointError):
    """``GET`` or ``DELETE``: the endpoint is stateless Streamable HTTP, POST only.

    MCP spec (Streamable HTTP): a server that offers no SSE stream answers GET with 405, and one
    without sessions may answer DELETE with 405.
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
