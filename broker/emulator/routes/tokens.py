"""``POST /tokens``: minting service tokens, with the API key or by attenuating a token.

Thin: authentication is ``principal.py``, the body schema is ``constraint.py``, the token format
and attenuation are ``token.py``. This handler wires them and keeps the mint counters.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, post

from broker.emulator.clock import format_timestamp
from broker.emulator.constraint import decode_mint_request
from broker.emulator.errors import EmulatorError
from broker.emulator.faults import fault_route_opt
from broker.emulator.state import EmulatorDependency
from broker.emulator.token import mint_token


class CreateTokenResponse(msgspec.Struct, frozen=True):
    """OpenAPI ``CreateTokenResponse``."""

    token: str
    expires_at: str = msgspec.field(name="expiresAt")


@post("/tokens", status_code=200, opt=fault_route_opt("tokens"))
async def create_token(
    request: Request[Any, Any, Any], emulator: EmulatorDependency
) -> CreateTokenResponse:
    """Mint a token; a service token as bearer gets a child no wider and no longer-lived."""
    try:
        principal = emulator.authenticate(request.headers.get("authorization"))
        mint_request = decode_mint_request(await request.body())
        token, minted = mint_token(
            emulator.codec, mint_request, parent=principal.token, now_ms=emulator.now_ms()
        )
    except EmulatorError:
        emulator.stats.tokens_rejected += 1
        raise
    emulator.stats.tokens_minted += 1
    return CreateTokenResponse(token=token, expires_at=format_timestamp(minted.expires_at_ms))
