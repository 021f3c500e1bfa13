"""Operator endpoints behind the admin credential: ``POST /v1/explain`` (a policy dry run).

The admin token (``BROKER_ADMIN_TOKEN_FILE``) is compared in constant time; without one
configured these routes answer 404, so ordinary users cannot even find them.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency

from broker.errors import AuthenticationError, InvalidRequestError, NotFoundError
from broker.explain import explain
from broker.identity import bearer_token
from broker.jsonrpc import decode_strict
from broker.precheck import Target
from broker.routes.body import read_body, require_json
from broker.routes.names import NAME_PATTERN
from broker.state import BrokerState


class ExplainRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    claims: dict[str, Any]
    """The verified claims to evaluate (as the user's JWT would carry them)."""
    issuer: str = ""
    request: Any = None
    """Optional JSON-RPC message to decide."""
    namespace: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)] | None = None
    metadata: dict[str, str] | None = None


def require_admin(broker: BrokerState, authorization: str | None) -> None:
    expected = broker.settings.admin.token
    if expected is None:
        raise NotFoundError("Not found.")
    presented = bearer_token(authorization)
    if not hmac.compare_digest(presented.encode(), expected.reveal().encode()):
        raise AuthenticationError("bad_admin_token")


@post(
    "/v1/explain",
    status_code=200,
    request_max_body_size=256 * 1024,
    summary="Operators: dry-run the loaded policy for some claims (admin credential)",
)
async def explain_route(
    request: Request[Any, Any, Any], broker: NamedDependency[BrokerState]
) -> dict[str, Any]:
    require_admin(broker, request.headers.get("authorization"))
    require_json(request.headers.get("content-type"))
    parsed = decode_strict(
        await read_body(request, broker.settings.server.body_timeout_seconds),
        max_depth=broker.settings.precheck.max_depth + 1,
    )
    try:
        body = msgspec.convert(parsed, ExplainRequest, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from None
    if body.request is not None and body.namespace is None:
        raise InvalidRequestError("namespace is required with request.")
    target = Target(body.namespace, body.metadata) if body.namespace is not None else None
    result = explain(
        broker.policy_set,
        body.claims,
        issuer=body.issuer,
        request=body.request,
        target=target,
        exempt_lifecycle=broker.settings.precheck.exempt_lifecycle,
    )
    return result.as_json()
