"""The benchmark's identity provider: an RSA key, its public JWKS file and RS256 JWTs."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER: Final = "https://idp.bench.invalid/"
AUDIENCE: Final = "token-broker-bench"
KEY_ID: Final = "bench-k1"
ALGORITHM: Final = "RS256"
DEFAULT_LIFETIME_SECONDS: Final = 3600
VERIFIED_EMAIL: Final[Mapping[str, Any]] = MappingProxyType({"email_verified": True})
"""The default extra claims: the ``own-connections`` rule of ``policies/`` applies."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Signs app-user JWTs the broker accepts (``BROKER_AUTH_*`` point at this issuer)."""

    private_key: rsa.RSAPrivateKey
    jwks_path: Path

    def jwt(
        self,
        subject: str,
        *,
        lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS,
        claims: Mapping[str, Any] = VERIFIED_EMAIL,
    ) -> str:
        """A JWT for ``subject`` with ``claims`` besides the registered ones.

        By default ``email_verified: true``, so ``own-connections`` applies; R3 and R4 give
        ``groups: ["support"]`` instead, so exactly the two ``support-github-*`` rules apply.
        """
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + lifetime_seconds,
            **claims,
        }
        return jwt.encode(payload, self.private_key, algorithm=ALGORITHM, headers={"kid": KEY_ID})


def create_identity(directory: Path) -> Identity:
    """A fresh 2048-bit RSA key; its public JWKS is written to ``directory/jwks.json``."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    jwk.update(kid=KEY_ID, use="sig", alg=ALGORITHM)
    jwks_path = directory / "jwks.json"
    jwks_path.write_text(json.dumps({"keys": [jwk]}))
    return Identity(private_key, jwks_path)
