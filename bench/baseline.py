"""The baseline server: a bare Litestar app answering the broker's routes with fixed bodies.

Its handlers do what any Litestar endpoint with the broker's contract must do (read the
Authorization header and the request body, encode a response Struct with the same headers) and
nothing of the broker's own work: no policy, no cache, no audit log. Served like the broker:
uvicorn, 1 worker, uvloop, httptools, log level warning, no access log. Routes:

- ``POST /v1/tokens`` (R1, R5): answers the token response of ``--body-file``;
- ``POST /v1/verified-tokens`` (R2, with ``--jwks-file``): first verifies the bearer JWT with
  PyJWT (``jwt.decode`` with the loaded public key, ``RS256``, audience and issuer), then answers
  like ``/v1/tokens``; a JWT that does not verify gets 401;
- ``POST /v1/precheck`` (R3, with ``--precheck-body-file``): answers that precheck response.

Run: ``python -m bench.baseline --fd N --body-file FILE [--jwks-file F] [--precheck-body-file F]``
(the body files hold real broker responses, so the bodies have the same size and shape).
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path
from typing import Any, Final

import jwt
import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from bench.identity import ALGORITHM, AUDIENCE, ISSUER

NO_STORE: Final = {"Cache-Control": "no-store"}
MAX_BODY_BYTES: Final = 16 * 1024
UNAUTHORIZED: Final = {"WWW-Authenticate": 'Bearer error="invalid_token"', **NO_STORE}


class TokenResponse(msgspec.Struct, frozen=True):
    token: str
    expiresAt: str
    rules: list[str]
    policyRevision: str


class PrecheckResponse(msgspec.Struct, frozen=True):
    allowed: bool
    rule: str | None
    reasons: list[dict[str, Any]]


def load_public_key(jwks_file: Path) -> Any:
    """The public key object of the (single) key in a JWKS file, as PyJWT uses it."""
    [jwk] = json.loads(jwks_file.read_text())["keys"]
    return jwt.PyJWK(jwk).key


def create_baseline_app(
    body: TokenResponse,
    *,
    public_key: Any = None,
    precheck: PrecheckResponse | None = None,
) -> Litestar:
    """A Litestar app answering ``body`` on ``/v1/tokens`` (and the optional routes)."""

    async def read_body(request: Request[Any, Any, Any]) -> None:
        headers = request.headers
        # Like the broker: a request that declares no body is not read (RFC 9112 §6.3).
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            await request.body()

    @post("/v1/tokens", status_code=200, request_max_body_size=MAX_BODY_BYTES)
    async def create_token(request: Request[Any, Any, Any]) -> Response[TokenResponse]:
        request.headers.get("authorization")
        await read_body(request)
        return Response(body, headers=NO_STORE)

    @post("/v1/verified-tokens", status_code=200, request_max_body_size=MAX_BODY_BYTES)
    async def create_verified_token(request: Request[Any, Any, Any]) -> Response[Any]:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise jwt.InvalidTokenError("not a bearer")
            jwt.decode(
                token, key=public_key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER
            )
        except jwt.InvalidTokenError:
            return Response({"error": "invalid_token"}, status_code=401, headers=UNAUTHORIZED)
        await read_body(request)
        return Response(body, headers=NO_STORE)

    @get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    handlers: list[HTTPRouteHandler] = [create_token, livez]
    if public_key is not None:
        handlers.append(create_verified_token)
    if precheck is not None:
        answer = precheck

        @post("/v1/precheck", status_code=200, request_max_body_size=MAX_BODY_BYTES)
        async def precheck_route(request: Request[Any, Any, Any]) -> PrecheckResponse:
            request.headers.get("authorization")
            await request.body()
            return answer

        handlers.append(precheck_route)
    return Litestar(
        route_handlers=handlers,
        openapi_config=None,
        debug=False,
        logging_config=None,
    )


def serve(app: Any, fd: int) -> None:
    """Serve the ASGI ``app`` on the inherited listening socket ``fd`` with the broker's uvicorn
    settings (also used for R4's demo MCP server)."""
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        workers=1,
        log_level="warning",
        access_log=False,
        server_header=False,
        lifespan="on",
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--body-file", type=Path, required=True, help="JSON token response")
    parser.add_argument("--jwks-file", type=Path, help="enables /v1/verified-tokens (R2)")
    parser.add_argument("--precheck-body-file", type=Path, help="enables /v1/precheck (R3)")
    args = parser.parse_args()
    body = msgspec.json.decode(args.body_file.read_bytes(), type=TokenResponse)
    public_key = None if args.jwks_file is None else load_public_key(args.jwks_file)
    precheck = (
        None
        if args.precheck_body_file is None
        else msgspec.json.decode(args.precheck_body_file.read_bytes(), type=PrecheckResponse)
    )
    serve(create_baseline_app(body, public_key=public_key, precheck=precheck), args.fd)


if __name__ == "__main__":
    main()
