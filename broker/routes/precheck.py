"""``POST /v1/precheck``: would this JSON-RPC message be allowed for the caller, and why not."""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec
from litestar import Request, post
from litestar.openapi import ResponseSpec
from litestar.types import ASGIApp

from broker.errors import (
    AuthenticationError,
    InvalidJSONError,
    InvalidRequestError,
)
from broker.jsonrpc import (
    BatchNotSupportedError,
    DuplicateKeyError,
    InvalidMessageError,
    TooDeepError,
    check_message,
)
from broker.precheck import Target
from broker.ratelimit import RateLimitedError
from broker.revocation import AccessRevokedError
from broker.routes.body import (
    convert_body,
    read_strict_json,
)
from broker.routes.caller import limited_caller
from broker.routes.names import NAME_PATTERN
from broker.routes.openapi import (
    BODY_FAILURES,
    JSONRPC_MESSAGE,
    SMITHERY_FAILURES,
    documented,
    problem_responses,
)
from broker.routes.responses import NO_STORE, JsonBody
from broker.state import BrokerState

_ENCODE: Final = msgspec.json.Encoder().encode
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, max_length=128)]


class PrecheckRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    namespace: Name
    request: Any
    """One JSON-RPC message, exactly as it would be sent to the MCP endpoint."""
    connectionId: Name | None = None
    """Read the connection's metadata from Smithery (cached briefly)."""
    metadata: dict[str, str] | None = None
    """Or give the connection's metadata directly."""


class Reason(msgspec.Struct, frozen=True, omit_defaults=True):
    rule: str | None
    reason: str
    detail: str
    field: str | None = None
    pattern: str | None = None


class PrecheckResponse(msgspec.Struct, frozen=True):
    allowed: bool
    rule: str | None
    reasons: list[Reason]


PRECHECK_FAILURES: Final = (
    InvalidJSONError,
    InvalidRequestError,
    DuplicateKeyError,
    TooDeepError,
    BatchNotSupportedError,
    InvalidMessageError,
    AuthenticationError,
    AccessRevokedError,
    *BODY_FAILURES,
    RateLimitedError,
    # Reading the connection's metadata from Smithery (connectionId).
    *SMITHERY_FAILURES,
)
"""What ``/v1/precheck`` can refuse with; the proxy decides the same way, so it shares them."""


@post(
    "/v1/precheck",
    status_code=200,
    request_max_body_size=16 * 1024 * 1024,
    summary="Decide whether a JSON-RPC message would be allowed, with reasons",
    responses={
        200: ResponseSpec(PrecheckResponse, generate_examples=False, description="The decision"),
        **problem_responses(*PRECHECK_FAILURES),
    },
    operation_class=documented(PrecheckRequest, members={"request": JSONRPC_MESSAGE}),
)
async def precheck(request: Request[Any, Any, Any]) -> ASGIApp:
    # A hot route: the state from the application (no dependency injection) and a pre-encoded
    # answer (no Litestar response rendering), as for /v1/tokens (R3 in bench/).
    broker: BrokerState = request.app.state.broker
    principal = await limited_caller(request, broker)
    constraints = broker.admission.admit(principal)
    limits = broker.settings.precheck
    _, parsed = await read_strict_json(
        request,
        timeout_seconds=broker.settings.server.body_timeout_seconds,
        max_bytes=limits.max_body_bytes,
        max_depth=limits.max_depth + 1,
    )
    envelope = convert_body(parsed, PrecheckRequest)
    if envelope.connectionId is not None and envelope.metadata is not None:
        raise InvalidRequestError("Give either connectionId or metadata, not both.")
    message = check_message(envelope.request)
    target = Target(envelope.namespace, envelope.metadata)
    if envelope.connectionId is not None:
        target = await broker.admission.target(
            principal, constraints, envelope.namespace, envelope.connectionId
        )
    decision = broker.admission.decide(
        principal,
        constraints,
        target,
        message,
        event="precheck.decision",
        connection_id=envelope.connectionId,
    )
    answer = PrecheckResponse(
        allowed=decision.allowed,
        rule=decision.rule,
        reasons=[Reason(**d.as_json()) for d in decision.reasons],
    )
    return JsonBody(_ENCODE(answer), NO_STORE)  # a decision about this caller only
