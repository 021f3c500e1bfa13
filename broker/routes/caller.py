"""The caller of a user-facing route: authenticated, then counted against the per-user request
limit (precheck, proxy and connections share one limiter)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from broker.identity import Principal
from broker.routes.responses import request_headers
from broker.state import BrokerState


async def limited_caller(request: Request[Any, Any, Any], broker: BrokerState) -> Principal:
    """The verified principal, or 401; 429 when the user is over the request limit."""
    (authorization,) = request_headers(request.scope, b"authorization")
    principal = await broker.authenticator.authenticate(authorization)
    if broker.request_limit is not None:
        await broker.request_limit.acquire(principal.issuer, principal.subject)
    return principal
