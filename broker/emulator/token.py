"""The emulator's service tokens: their format, signing, verification and minting.

Format (opaque to callers, who must never parse it)::

    emu1.<payload>.<signature>

``payload`` is base64url (no padding) of the JSON ``{"blocks": [block, ...]}``, root block first
and the token's own block last, each block being
``{"id": str, "policy": [constraint, ...], "expiresAtMs": int, "organizationId"?: str}``.
``signature`` is base64url (no padding) of HMAC-SHA256 over the ASCII bytes ``emu1.<payload>``
with the emulator's signing key. A block's ``policy`` holds the constraints exactly as the caller
sent them (an empty list when the mint had no policy). A child token keeps its parent's blocks,
so its scope is the intersection of all of them (``scope.py``), and its own expiry is capped at
its parent's.

This module owns the signing key's use; it does not read HTTP headers or decide permissions.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from broker.emulator.constraint import DEFAULT_TTL_SECONDS, Constraint, MintRequest
from broker.emulator.scope import Scope

TOKEN_PREFIX = "emu1"  # noqa: S105 - a format marker, not a secret
SIGNING_KEY_BYTES = 32


class TokenBlock(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """One attenuation block: the constraints one mint added, and that mint's expiry."""

    id: str
    policy: list[Any]
    expires_at_ms: int = msgspec.field(name="expiresAtMs")
    organization_id: str | None = msgspec.field(default=None, name="organizationId")


class TokenPayload(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Everything a token says about itself; the last block is the token's own."""

    blocks: Annotated[list[TokenBlock], Meta(min_length=1)]


class TokenInvalidError(Exception):
    """The string is not a token this emulator signed (malformed, wrong key, or altered)."""


@dataclass(frozen=True, slots=True)
class ServiceToken:
    """A verified token. It may still be expired: callers compare ``expires_at_ms`` to now."""

    payload: TokenPayload
    scope: Scope

    @property
    def own_block(self) -> TokenBlock:
        return self.payload.blocks[-1]

    @property
    def parent_blocks(self) -> list[TokenBlock]:
        """The ancestors' blocks, root first; empty for a token minted with the API key."""
        return self.payload.blocks[:-1]

    @property
    def expires_at_ms(self) -> int:
        """The earliest expiry along the ancestry (equal to the own block's by construction)."""
        return min(block.expires_at_ms for block in self.payload.blocks)

    def is_expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at_ms


class TokenCodec:
    """Signs and verifies tokens with one HMAC-SHA256 key.

    ``signing_key``: the secret that makes tokens unforgeable. Anyone holding it can mint tokens
    of any scope, so it must never be logged or exposed; by default it is random per process.
    """

    def __init__(self, signing_key: bytes | None = None) -> None:
        self._key = (
            signing_key if signing_key is not None else secrets.token_bytes(SIGNING_KEY_BYTES)
        )
        if not self._key:
            raise ValueError("signing_key must not be empty")

    def __repr__(self) -> str:
        return "TokenCodec(signing_key=<redacted>)"

    def encode(self, payload: TokenPayload) -> str:
        body = _b64encode(msgspec.json.encode(payload))
        return f"{TOKEN_PREFIX}.{body}.{self._sign(body)}"

    def decode(self, token: str) -> ServiceToken:
        """Verify the signature, then decode. Raises ``TokenInvalidError`` on any problem."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise TokenInvalidError("not an emulator token")
        _, body, signature = parts
        # Compare in constant time, before looking at the payload at all.
        if not hmac.compare_digest(self._sign(body).encode(), signature.encode()):
            raise TokenInvalidError("bad signature")
        try:
            payload = msgspec.json.decode(_b64decode(body), type=TokenPayload)
            blocks = tuple(
                tuple(msgspec.convert(block.policy, list[Constraint])) for block in payload.blocks
            )
        except (msgspec.DecodeError, binascii.Error, ValueError) as error:
            # Only reachable with a leaked signing key or a bug: the signature was valid.
            raise TokenInvalidError("malformed payload") from error
        return ServiceToken(payload=payload, scope=Scope(blocks=blocks))

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, f"{TOKEN_PREFIX}.{body}".encode(), hashlib.sha256)
        return _b64encode(mac.digest())


def mint_token(
    codec: TokenCodec, request: MintRequest, parent: ServiceToken | None, now_ms: int
) -> tuple[str, ServiceToken]:
    """Mint a token for ``request``: a root when ``parent`` is None, else an attenuated child.

    The child keeps every parent block and adds its own, so it can only narrow. Its expiry is
    the requested one (default 1h) capped at the parent's (INF in SMITHERY-SEMANTICS.md).
    The caller has checked that ``parent`` is not expired.
    """
    ttl_ms = request.ttl_ms if request.ttl_ms is not None else DEFAULT_TTL_SECONDS * 1000
    expires_at_ms = now_ms + ttl_ms
    ancestry: list[TokenBlock] = []
    if parent is not None:
        ancestry = list(parent.payload.blocks)
        expires_at_ms = min(expires_at_ms, parent.expires_at_ms)
    block = TokenBlock(
        id=secrets.token_hex(16),
        policy=request.raw_policy,
        expires_at_ms=expires_at_ms,
        organization_id=request.organization_id,
    )
    payload = TokenPayload(blocks=[*ancestry, block])
    token = codec.encode(payload)
    return token, codec.decode(token)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
