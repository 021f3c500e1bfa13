"""Authenticating a request's bearer: the verified-token cache, verification, and one key
refetch when a token names a signing key the issuer has just rotated in.

A verified result is remembered by the SHA-256 of the token (never the token itself) until the
token's ``exp`` (or its maximum age), and only while the key that verified it is still in the
issuer's key set, so removing a key at the identity provider takes effect at the next refresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from broker.cache import ExpiringCache
from broker.errors import AuthenticationError, UnknownKeyError
from broker.identity import Principal, Verified, Verifier, bearer_token
from broker.jwks import JwksManager
from broker.telemetry import Telemetry, deny


class Authenticator:
    def __init__(
        self,
        verifier: Verifier,
        *,
        clock: Callable[[], float],
        keys: JwksManager | None = None,
        cache_entries: int = 10_000,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.verifier = verifier
        self.keys = keys
        self.telemetry = telemetry or Telemetry()
        self._clock = clock
        self._verified: ExpiringCache[Verified] = ExpiringCache(
            max_entries=cache_entries, clock=clock
        )

    async def authenticate(self, authorization: str | None) -> Principal:
        """The verified principal, or ``AuthenticationError`` with a precise ``reason``."""
        with self.telemetry.span("broker.authenticate") as span:
            try:
                principal = await self._authenticate(authorization)
            except AuthenticationError as exc:
                deny(span, "invalid_token", {"broker.auth.reason": exc.reason})
                raise
            if span is not None:
                enduser = self.telemetry.enduser(principal.subject)
                if enduser is not None:
                    span.set_attribute("enduser.id", enduser)
                span.set_attribute("broker.auth.issuer", principal.issuer)
            return principal

    async def _authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            if self.verifier.key_current(hit.issuer, hit.thumbprint):
                return hit.principal
            self._verified.discard(digest)
        try:
            verified = self.verifier.verify(token, now=self._clock(), token_digest=digest)
        except UnknownKeyError as exc:
            if self.keys is None or not await self.keys.refetch_unknown_kid(exc.issuer):
                raise
            verified = self.verifier.verify(token, now=self._clock(), token_digest=digest)
        self._verified.put(digest, verified, expires_at=verified.valid_until)
        return verified.principal

    @property
    def ready(self) -> bool:
        return self.verifier.ready
