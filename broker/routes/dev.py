"""Dev mode only: ``POST /dev/login`` signs an app-user JWT with the ephemeral dev key.

This router is mounted only by ``broker dev``; ``broker serve`` has no ``/dev/*`` routes.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency

from broker.errors import InvalidRequestError
from broker.routes.body import decode_json_body, read_body
from broker.state import BrokerState

DEV_TOKEN_LIFETIME_SECONDS: Final = 3600
RESERVED_CLAIMS: Final = ("iss", "aud", "exp", "iat", "nbf", "jti")


class LoginResponse(msgspec.Struct, frozen=True):
    access_token: str
    token_type: str
    expires_in: int


@post(
    "/dev/login",
    status_code=200,
    request_max_body_size=16 * 1024,
    summary="Dev mode: sign a JWT for any dev user",
    include_in_schema=True,
)
async def dev_login(
    request: Request[Any, Any, Any], broker: NamedDependency[BrokerState]
) -> Response[LoginResponse]:
    claims = decode_json_body(
        await read_body(request, broker.settings.server.body_timeout_seconds),
        request.headers.get("content-type"),
        dict[str, Any],
        {},
    )
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 256:
        raise InvalidRequestError('Give "sub": a non-empty string of at most 256 characters.')
    reserved = sorted(set(RESERVED_CLAIMS).intersection(claims))
    if reserved:
        raise InvalidRequestError(
            f"Claims set by the dev issuer cannot be given: {', '.join(reserved)}."
        )
    assert broker.dev_signer is not None  # the route exists only with a dev signer
    token = broker.dev_signer.sign(
        claims, now=broker.clock(), lifetime_seconds=DEV_TOKEN_LIFETIME_SECONDS
    )
    return Response(
        LoginResponse(
            access_token=token,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in=DEV_TOKEN_LIFETIME_SECONDS,
        ),
        headers={"Cache-Control": "no-store"},
    )
