"""An in-process stand-in for an identity provider's discovery and JWKS endpoints, served through
``httpx.MockTransport`` (unit tests only; the integration tests run the real oidc-provider)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.test/"
AUDIENCE = "token-broker"


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeIdP:
    keys: dict[str, Any] = field(default_factory=dict)
    """kid → private key."""
    requests: list[str] = field(default_factory=list)
    cache_control: str | None = None
    down: bool = False
    discovery_issuer: str = ISSUER
    jwks_uri: str = "https://idp.test/jwks"

    def add_key(self, kid: str) -> Any:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid, key in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg="RS256")
            out.append(jwk)
        return {"keys": out}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("down", request=request)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(
                200, json={"issuer": self.discovery_issuer, "jwks_uri": self.jwks_uri}
            )
        if request.url.path == "/jwks":
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            return httpx.Response(200, json=self.jwks(), headers=headers)
        return httpx.Response(404)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def token(self, kid: str, now: float, **claims: Any) -> str:
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": int(now),
            "exp": int(now) + 600,
            **claims,
        }
        return jwt.encode(payload, self.keys[kid], algorithm="RS256", headers={"kid": kid})

    @property
    def jwks_fetches(self) -> int:
        return self.requests.count("/jwks")


def unix_now() -> float:
    return time.time()
