"""The baseline server: a bare Litestar app answering ``POST /v1/tokens`` with a fixed body.

It does what any Litestar endpoint with the broker's contract must do (read the Authorization
header and the request body, encode a ``{"token", "expiresAt", "rules", "policyRevision"}``
Struct with the same headers) and nothing of the broker's own work: no JWT verification, no
policy, no cache, no audit log. Served like the broker: uvicorn, 1 worker, uvloop, httptools,
log level warning, no access log.

Run: ``python -m bench.baseline --fd N --body-file FILE`` (FILE holds a real broker response, so
the body has the same size and shape).
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any, Final

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post

NO_STORE: Final = {"Cache-Control": "no-store"}
MAX_BODY_BYTES: Final = 16 * 1024


class TokenResponse(msgspec.Struct, frozen=True):
    token: str
    expiresAt: str
    rules: list[str]
    policyRevision: str


def create_baseline_app(body: TokenResponse) -> Litestar:
    """A Litestar app whose token route always answers ``body``."""

    @post("/v1/tokens", status_code=200, request_max_body_size=MAX_BODY_BYTES)
    async def create_token(request: Request[Any, Any, Any]) -> Response[TokenResponse]:
        headers = request.headers
        headers.get("authorization")
        # Like the broker: a request that declares no body is not read (RFC 9112 §6.3).
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            await request.body()
        return Response(body, headers=NO_STORE)

    @get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(
        route_handlers=[create_token, livez],
        openapi_config=None,
        debug=False,
        logging_config=None,
    )


def serve(app: Litestar, fd: int) -> None:
    """Serve ``app`` on the inherited listening socket ``fd`` with the broker's uvicorn settings."""
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
    args = parser.parse_args()
    body = msgspec.json.decode(args.body_file.read_bytes(), type=TokenResponse)
    serve(create_baseline_app(body), args.fd)


if __name__ == "__main__":
    main()
