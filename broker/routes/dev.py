"""Dev mode only: ``POST /dev/login`` signs an app-user JWT with the ephemeral dev key, and
``GET /dev/`` serves the dev console (``broker/static/console/``), a page that uses the same
``/v1/client.js`` as any app would.

These routes are mounted only by ``broker dev``; ``broker serve`` has no ``/dev/*`` routes.
The console's HTML, script and style are separate files, so it runs under a strict
``Content-Security-Policy`` (no inline script or style), and it carries no secret: users'
JWTs come from ``/dev/login`` at run time and stay in the page's memory.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath

from broker.errors import InvalidJSONError, InvalidRequestError
from broker.routes.body import (
    decode_json_body,
    read_body,
)
from broker.routes.openapi import BODY_FAILURES, documented, problem_responses
from broker.routes.static import CSS, HTML, JAVASCRIPT, asset_response, load_asset
from broker.state import BrokerState

DEV_TOKEN_LIFETIME_SECONDS: Final = 3600
RESERVED_CLAIMS: Final = ("iss", "aud", "exp", "iat", "nbf", "jti")
CONSOLE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Everything the console needs comes from the broker's own origin; nothing inline."""
CONSOLE_HEADERS: Final = {
    "Content-Security-Policy": CONSOLE_CSP,
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
CONSOLE_FILES: Final = {
    "console.js": JAVASCRIPT,
    "console.css": CSS,
}


LOGIN_REQUEST: Final = Schema(
    type=OpenAPIType.OBJECT,
    description="The dev user's claims; the dev issuer sets iss, aud, exp, iat, nbf and jti.",
    required=["sub"],
    properties={"sub": Schema(type=OpenAPIType.STRING, min_length=1, max_length=256)},
    additional_properties=True,
)


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
    responses=problem_responses(
        InvalidJSONError,
        InvalidRequestError,
        *BODY_FAILURES,
    ),
    operation_class=documented(LOGIN_REQUEST),
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


@get("/dev/", include_in_schema=False, sync_to_thread=False)
def dev_console(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The dev console page."""
    page = load_asset("console/index.html", HTML)
    return asset_response(request, page, CONSOLE_HEADERS)


@get("/dev/{name:str}", include_in_schema=False, sync_to_thread=False)
def dev_console_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    """The console's script and style (a fixed list: no path from the request reaches a file)."""
    media_type = CONSOLE_FILES.get(name)
    if media_type is None:
        raise NotFoundException()
    return asset_response(request, load_asset(f"console/{name}", media_type), CONSOLE_HEADERS)
