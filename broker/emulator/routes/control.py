"""The emulator's own endpoints: health, and the test controls under ``/_emulator``.

The controls need no authentication because the emulator only ever listens on loopback; they
let tests look inside tokens, count what the broker asked for, and inject faults
(``faults.py``). Smithery has none of them, and faults never apply to them.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post

from broker.emulator.clock import format_timestamp
from broker.emulator.errors import InvalidRequestError, InvalidTokenError
from broker.emulator.faults import FaultsView, decode_fault_request
from broker.emulator.state import EmulatorDependency, Stats
from broker.emulator.token import TokenBlock, TokenInvalidError


class Health(msgspec.Struct, frozen=True):
    """OpenAPI ``Health``."""

    status: str
    timestamp: str


class IntrospectRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    token: str


class BlockView(msgspec.Struct, frozen=True):
    """One ancestor of an introspected token: its constraints as minted and its expiry."""

    policy: list[Any]
    expires_at: str = msgspec.field(name="expiresAt")


class IntrospectResponse(msgspec.Struct, frozen=True):
    """A token's own constraints and expiry, its ancestors root first, and whether it expired."""

    policy: list[Any]
    expires_at: str = msgspec.field(name="expiresAt")
    parents: list[BlockView]
    expired: bool


class ResetResponse(msgspec.Struct, frozen=True):
    status: str = "ok"


@get("/health")
async def health(emulator: EmulatorDependency) -> Health:
    return Health(status="ok", timestamp=format_timestamp(emulator.now_ms()))


@get("/_emulator/stats")
async def stats(emulator: EmulatorDependency) -> Stats:
    return emulator.snapshot_stats()


@post("/_emulator/reset", status_code=200)
async def reset(emulator: EmulatorDependency) -> ResetResponse:
    """Zero the counters, drop every connection and clear every fault (held requests are
    released). Minted tokens stay valid (same key)."""
    emulator.reset()
    return ResetResponse()


@get("/_emulator/faults")
async def get_faults(emulator: EmulatorDependency) -> FaultsView:
    """The active faults and how many requests each family holds (``faults.py``)."""
    return emulator.faults.view()


@post("/_emulator/faults", status_code=200)
async def set_fault(request: Request[Any, Any, Any], emulator: EmulatorDependency) -> FaultsView:
    """Set or clear one family's fault; answers the active faults and how many held requests
    the change released."""
    spec = decode_fault_request(await request.body())
    released = emulator.faults.configure(spec)
    return emulator.faults.view(released=released)


@post("/_emulator/introspect", status_code=200)
async def introspect(
    request: Request[Any, Any, Any], emulator: EmulatorDependency
) -> IntrospectResponse:
    """What a token carries. Expired tokens still introspect, with ``expired: true``."""
    try:
        body = msgspec.json.decode(await request.body(), type=IntrospectRequest)
    except msgspec.DecodeError as error:
        raise InvalidRequestError(f'Expected {{"token": string}}: {error}') from None
    try:
        token = emulator.codec.decode(body.token)
    except TokenInvalidError:
        raise InvalidTokenError("Token is malformed or its signature does not verify") from None
    return IntrospectResponse(
        policy=token.own_block.policy,
        expires_at=format_timestamp(token.expires_at_ms),
        parents=[_view(block) for block in token.parent_blocks],
        expired=token.is_expired(emulator.now_ms()),
    )


def _view(block: TokenBlock) -> BlockView:
    return BlockView(policy=block.policy, expires_at=format_timestamp(block.expires_at_ms))
