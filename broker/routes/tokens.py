"""``POST /v1/tokens``: a scoped Smithery service token for the authenticated app user."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, post
from litestar.openapi import ResponseSpec
from litestar.types import ASGIApp

from broker.errors import (
    AuthenticationError,
    InvalidJSONError,
    InvalidRequestError,
    NoMatchingRuleError,
    RuleNotApplicableError,
    UnknownRuleError,
)
from broker.ratelimit import RateLimitedError
from broker.revocation import AccessRevokedError
from broker.routes.body import (
    declares_body,
    decode_json_body,
    read_body_within,
)
from broker.routes.openapi import BODY_FAILURES, SMITHERY_FAILURES, documented, problem_responses
from broker.routes.responses import NO_STORE, JsonBody, request_headers
from broker.state import BrokerState

MAX_TOKEN_REQUEST_BYTES: Final = 16 * 1024
MAX_REQUESTED_RULES: Final = 64
RuleId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_ENCODE: Final = msgspec.json.Encoder().encode


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Optional body. ``rules`` narrows the token to a subset of the rules that apply."""

    rules: (
        Annotated[tuple[RuleId, ...], msgspec.Meta(min_length=1, max_length=MAX_REQUESTED_RULES)]
        | None
    ) = None


class TokenResponse(msgspec.Struct, frozen=True):
    token: str
    """The Smithery service token. Opaque: pass it as a bearer to Smithery, never parse it."""
    expiresAt: str
    rules: list[str]
    """Ids of the policy rules whose constraints the token carries."""
    policyRevision: str


@functools.lru_cache(maxsize=4096)
def format_timestamp(seconds: float) -> str:
    """Unix seconds → ``2024-01-01T01:00:00.000Z``, the format Smithery uses."""
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@post(
    "/v1/tokens",
    status_code=200,
    request_max_body_size=MAX_TOKEN_REQUEST_BYTES,
    summary="Mint a scoped Smithery service token for the calling user",
    responses={
        200: ResponseSpec(TokenResponse, generate_examples=False, description="The service token"),
        **problem_responses(
            InvalidJSONError,
            InvalidRequestError,
            UnknownRuleError,
            AuthenticationError,
            NoMatchingRuleError,
            RuleNotApplicableError,
            AccessRevokedError,
            *BODY_FAILURES,
            RateLimitedError,
            *SMITHERY_FAILURES,
        ),
    },
    operation_class=documented(
        TokenRequest,
        body_required=False,
        body_description="Optional: frontends usually send no body.",
    ),
)
async def create_token(request: Request[Any, Any, Any]) -> ASGIApp:
    # The hottest route: R1 in bench/ measured Litestar's dependency injection, header container
    # and Response rendering as a visible share of a cached-token request. So it reads the app's
    # resources from the application state (where create_app put them), the three headers it
    # needs in one pass over the raw headers, and answers with the body it encoded itself.
    broker: BrokerState = request.app.state.broker
    authorization, content_type, content_length, transfer_encoding = request_headers(
        request.scope, b"authorization", b"content-type", b"content-length", b"transfer-encoding"
    )
    principal = await broker.authenticator.authenticate(authorization)
    body = TokenRequest()
    # A request that declares no body is not read: how frontends usually call.
    if declares_body(content_length, transfer_encoding):
        raw = await read_body_within(request, broker.settings.server.body_timeout_seconds)
        body = decode_json_body(raw, content_type, TokenRequest, body)
    requested = tuple(dict.fromkeys(body.rules or ()))
    issued = await broker.issuance.issue(principal, requested)
    answer = TokenResponse(
        token=issued.token,
        expiresAt=format_timestamp(issued.expires_at),
        rules=list(issued.rule_ids),
        policyRevision=issued.policy_revision,
    )
    return JsonBody(_ENCODE(answer), NO_STORE)
