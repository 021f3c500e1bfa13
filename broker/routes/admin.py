"""Operator endpoints behind the admin credential: ``POST /v1/explain`` (a policy dry run) and
``POST /v1/admin/revoke`` (withdraw a subject, a rule or everyone for a while).

The admin token (``BROKER_ADMIN_TOKEN_FILE``) is compared in constant time; without one
configured these routes answer 404, so ordinary users cannot even find them.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from broker.errors import (
    AuthenticationError,
    InvalidJSONError,
    InvalidRequestError,
    NotFoundError,
)
from broker.explain import explain
from broker.identity import bearer_token
from broker.jsonrpc import (
    BatchNotSupportedError,
    DuplicateKeyError,
    InvalidMessageError,
    TooDeepError,
    decode_strict,
)
from broker.precheck import Target
from broker.revocation import Scope, SharedRevocationError
from broker.routes.body import (
    read_body,
    require_json,
)
from broker.routes.names import NAME_PATTERN
from broker.routes.openapi import (
    BODY_FAILURES,
    JSONRPC_MESSAGE,
    documented,
    problem_responses,
)
from broker.routes.responses import request_headers
from broker.state import BrokerState
from broker.telemetry import audit


class ExplainRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    claims: dict[str, Any]
    """The verified claims to evaluate (as the user's JWT would carry them)."""
    issuer: str = ""
    request: Any = None
    """Optional JSON-RPC message to decide."""
    namespace: Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)] | None = None
    metadata: dict[str, str] | None = None


MAX_REVOCATION_SECONDS: Final = 30 * 86_400
ADMIN_FAILURES: Final = (
    InvalidJSONError,
    InvalidRequestError,
    DuplicateKeyError,
    TooDeepError,
    AuthenticationError,
    *BODY_FAILURES,
)
"""What both operator routes can refuse with (a wrong credential, a malformed body)."""


class RevokeRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Exactly one of ``subject`` (with an optional ``issuer``), ``rule`` or ``all: true``."""

    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None
    issuer: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None
    """Only that issuer's subject; without it the subject is revoked for every issuer."""
    rule: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    all: bool = False
    seconds: Annotated[int, msgspec.Meta(ge=0, le=MAX_REVOCATION_SECONDS)] | None = None
    """How long to refuse (default ``BROKER_ADMIN_REVOCATION_SECONDS``); 0 purges only."""


class RevokeResponse(msgspec.Struct, frozen=True):
    revoked: str
    """``subject``, ``rule`` or ``all``."""
    refusedUntil: str
    purged: int
    """Cached tokens dropped from this replica's memory."""
    purgedShared: int | None
    """Tokens deleted from Redis (null without Redis)."""


def require_admin(broker: BrokerState, authorization: str | None, action: str) -> None:
    """The operator credential, or 401; every attempt at ``action`` with a wrong one is an
    audited denial (someone is trying the operator endpoints)."""
    expected = broker.settings.admin.token
    if expected is None:
        raise NotFoundError("Not found.")
    try:
        presented = bearer_token(authorization)
    except AuthenticationError as exc:
        audit(f"admin.{action}", result="deny", reason=exc.reason)
        raise
    if not hmac.compare_digest(presented.encode(), expected.reveal().encode()):
        audit(f"admin.{action}", result="deny", reason="bad_admin_token")
        raise AuthenticationError("bad_admin_token")


@post(
    "/v1/explain",
    status_code=200,
    request_max_body_size=256 * 1024,
    summary="Operators: dry-run the loaded policy for some claims (admin credential)",
    responses={
        200: ResponseSpec(
            dict[str, Any],
            generate_examples=False,
            description="The explanation, as `broker policy explain --json` prints it",
        ),
        **problem_responses(*ADMIN_FAILURES, BatchNotSupportedError, InvalidMessageError),
    },
    operation_class=documented(ExplainRequest, members={"request": JSONRPC_MESSAGE}),
)
async def explain_route(
    request: Request[Any, Any, Any], broker: NamedDependency[BrokerState]
) -> dict[str, Any]:
    require_admin(broker, request_headers(request.scope, b"authorization")[0], "explain")
    require_json(request.headers.get("content-type"))
    parsed = decode_strict(
        await read_body(request, broker.settings.server.body_timeout_seconds),
        max_depth=broker.settings.precheck.max_depth + 1,
    )
    try:
        body = msgspec.convert(parsed, ExplainRequest, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from None
    if body.namespace is None:
        # Like the CLI's "--namespace: required with --metadata": a dry run that dropped what
        # the operator sent would explain another question than the one asked.
        if body.request is not None:
            raise InvalidRequestError("namespace is required with request.")
        if body.metadata is not None:
            raise InvalidRequestError("namespace is required with metadata.")
    target = Target(body.namespace, body.metadata) if body.namespace is not None else None
    result = explain(
        broker.policy_set,
        body.claims,
        issuer=body.issuer,
        request=body.request,
        target=target,
        exempt_lifecycle=broker.settings.precheck.exempt_lifecycle,
    )
    # A dry run decides nothing, but an operator looked at how the policy treats some claims.
    audit("admin.explain", result="allow", rules=list(result.applied))
    return result.as_json()


@post(
    "/v1/admin/revoke",
    status_code=200,
    request_max_body_size=16 * 1024,
    summary="Operators: purge cached tokens and refuse a subject, a rule or everyone for a while",
    responses=problem_responses(*ADMIN_FAILURES, SharedRevocationError),
    operation_class=documented(RevokeRequest),
)
async def revoke_route(
    request: Request[Any, Any, Any], broker: NamedDependency[BrokerState]
) -> RevokeResponse:
    require_admin(broker, request_headers(request.scope, b"authorization")[0], "revoke")
    require_json(request.headers.get("content-type"))
    parsed = decode_strict(
        await read_body(request, broker.settings.server.body_timeout_seconds), max_depth=4
    )
    try:
        body = msgspec.convert(parsed, RevokeRequest, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(str(exc)) from None
    chosen = [body.subject is not None, body.rule is not None, body.all]
    if sum(chosen) != 1:
        raise InvalidRequestError('Give exactly one of "subject", "rule" or "all": true.')
    if body.issuer is not None and body.subject is None:
        raise InvalidRequestError('"issuer" only goes with "subject".')
    assert broker.cluster is not None
    outcome = await broker.cluster.revocations.revoke(
        Scope(subject=body.subject, issuer=body.issuer, rule=body.rule, everyone=body.all),
        body.seconds,
    )
    until = datetime.fromtimestamp(outcome.until, tz=UTC).isoformat().replace("+00:00", "Z")
    return RevokeResponse(
        revoked=outcome.kind,
        refusedUntil=until,
        purged=outcome.purged_local,
        purgedShared=outcome.purged_shared,
    )
