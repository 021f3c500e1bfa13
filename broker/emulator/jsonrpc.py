"""JSON-RPC at Smithery's MCP endpoint: reading one message, and the error object it answers.

``decode_message`` accepts exactly one JSON-RPC 2.0 message object with a string ``method`` (a
request or a notification) and no members but ``jsonrpc``, ``id``, ``method`` and ``params``
(OpenAPI ``JsonRpcRequest``: ``additionalProperties: false``), as the stateless endpoint takes
one message per POST, and keeps the body's text for the rpcReqMatch oracle, which parses it
itself. Ids are strings or numbers (MCP:
never null). It does not decide permissions and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from broker.emulator.errors import JsonRpcInvalidRequestError, JsonRpcParseError, RequestId

JSONRPC_VERSION = "2.0"
LIFECYCLE_METHODS = frozenset({"initialize", "ping"})
"""Methods the lifecycle exemption covers, besides every ``notifications/*`` (OPEN switch in
SMITHERY-SEMANTICS.md: Smithery's own TypeScript client skips ``initialize``)."""
NOTIFICATION_METHOD_PREFIX = "notifications/"


class _Envelope(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """OpenAPI ``JsonRpcRequest``: these members and no others. ``params`` is only checked to be
    JSON; the body is forwarded as it came."""

    jsonrpc: Literal["2.0"]
    method: str
    id: RequestId | UnsetType = UNSET
    params: Any = UNSET


@dataclass(frozen=True, slots=True)
class RpcMessage:
    """One JSON-RPC message: its method, its id (None for a notification), its exact text."""

    method: str
    request_id: RequestId | None
    text: str

    @property
    def is_lifecycle(self) -> bool:
        """``initialize``, ``ping`` or a notification: what the lifecycle exemption skips."""
        return self.method in LIFECYCLE_METHODS or self.method.startswith(
            NOTIFICATION_METHOD_PREFIX
        )


class ErrorObject(msgspec.Struct, frozen=True, omit_defaults=True):
    """JSON-RPC 2.0 ``error`` member (``data`` only where Smithery documents one)."""

    code: int
    message: str
    data: dict[str, Any] | None = None


class ErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    """JSON-RPC 2.0 error response; ``id`` is null when the request's id could not be read."""

    jsonrpc: str = JSONRPC_VERSION
    id: RequestId | None
    error: ErrorObject


def decode_message(body: bytes) -> RpcMessage:
    """The one JSON-RPC message in a POST body.

    Raises ``JsonRpcParseError`` when the body is not UTF-8 JSON, and
    ``JsonRpcInvalidRequestError`` when it is JSON but not a single message object with
    ``"jsonrpc": "2.0"``, a string ``method``, if present a string or number ``id``, and no
    other member but ``params`` (batches and responses are refused: JSON-RPC 2.0 section 5,
    MCP Streamable HTTP).
    """
    try:
        text = body.decode("utf-8")
        envelope = msgspec.json.decode(body, type=_Envelope)
    except UnicodeDecodeError:
        raise JsonRpcParseError from None
    except msgspec.ValidationError:
        # The typed decode stops at the first member it refuses, maybe before a syntax error
        # further on: only a body that is JSON throughout is an Invalid Request.
        _require_json(body)
        raise JsonRpcInvalidRequestError from None
    except msgspec.DecodeError:
        raise JsonRpcParseError from None
    request_id = None if isinstance(envelope.id, UnsetType) else envelope.id
    return RpcMessage(method=envelope.method, request_id=request_id, text=text)


def _require_json(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise JsonRpcParseError from None
