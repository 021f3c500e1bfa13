"""Verifying app users' JWTs. The only module that imports PyJWT.

A ``Verifier`` holds, per accepted issuer, the audiences, the algorithm allowlist and the public
keys. The allowlist is configured next to the keys and never taken from the token (RFC 8725 §3.1);
HMAC and ``none`` are not supported at all, so a public key can never be used as an HMAC secret.
Every PyJWT exception is translated here, once, into ``AuthenticationError`` with a precise
``reason`` for logs; callers only ever see the generic 401.

Time is passed in (``now``) so expiry logic is testable without sleeping. This module does no
network I/O: keys come from a static JWKS file or from dev mode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from jwt.algorithms import get_default_algorithms

from broker.config import SUPPORTED_ALGORITHMS, AuthSettings
from broker.errors import AuthenticationError, ConfigError

MAX_TOKEN_BYTES: Final = 16 * 1024
"""Bearer tokens larger than this are refused before any parsing."""
MAX_JWKS_FILE_BYTES: Final = 1024 * 1024

# Which JWK key types can verify which algorithm family (RFC 7518 §6).
_KTY_FOR_PREFIX: Final = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified app user. ``claims`` is the full verified payload."""

    issuer: str
    subject: str
    claims: Mapping[str, Any]
    expires_at: float


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    kty: str
    key: Any
    """A loaded public key object (never PEM text: loading per request costs 6-19 µs)."""
    algorithms: frozenset[str]
    """The allowlisted algorithms this key may verify."""


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    keys: tuple[VerificationKey, ...]
    leeway_seconds: int = 30


@dataclass(slots=True)
class Verifier:
    """Verifies bearer JWTs against the configured issuers. Thread-safe (no mutation after init)."""

    issuers: dict[str, IssuerKeys] = field(default_factory=dict)

    def add_issuer(self, issuer: IssuerKeys) -> None:
        self.issuers[issuer.issuer] = issuer

    @property
    def ready(self) -> bool:
        return bool(self.issuers) and all(i.keys for i in self.issuers.values())

    def verify(self, token: str, *, now: float) -> Principal:
        """Verify ``token`` completely or raise ``AuthenticationError``.

        Checks, in order: size, structure, header ``alg`` in the issuer's allowlist, key by
        ``kid`` (header ``jwk``/``jku``/``x5u``/``x5c`` are never used as key sources), signature,
        ``iss`` exact, ``aud`` intersecting, ``exp`` required and in the future, ``nbf``/``iat``
        when present, ``sub`` a non-empty string.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("oversized")
        if token.count(".") != 2:
            raise AuthenticationError("malformed")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("malformed") from None
        issuer_name = unverified.get("iss")
        if not isinstance(issuer_name, str) or issuer_name not in self.issuers:
            raise AuthenticationError("unknown_issuer")
        issuer = self.issuers[issuer_name]
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in issuer.algorithms:
            raise AuthenticationError("algorithm_not_allowed")
        if "crit" in header:
            # RFC 7515 §4.1.11: we understand no extensions, so any critical one is unsupported.
            raise AuthenticationError("unsupported_crit")
        key = _select_key(issuer, header.get("kid"), algorithm)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=list(issuer.audiences),
                issuer=issuer.issuer,
                options={
                    "require": ["exp", "iss", "sub", "aud"],
                    # Times are checked below against the injected clock.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthenticationError("bad_signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"missing_{exc.claim}") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("wrong_issuer") from None
        except jwt.PyJWTError:
            raise AuthenticationError("invalid") from None
        return _check_times_and_subject(claims, issuer, now)


def _select_key(issuer: IssuerKeys, kid: Any, algorithm: str) -> VerificationKey:
    if kid is not None and not isinstance(kid, str):
        raise AuthenticationError("unknown_kid")
    candidates = [k for k in issuer.keys if algorithm in k.algorithms]
    if kid is not None:
        candidates = [k for k in candidates if k.kid == kid]
    elif len(candidates) > 1:
        # Without a kid we would have to try keys one by one; refuse rather than guess.
        raise AuthenticationError("missing_kid")
    if not candidates:
        raise AuthenticationError("unknown_kid")
    return candidates[0]


def _check_times_and_subject(claims: dict[str, Any], issuer: IssuerKeys, now: float) -> Principal:
    leeway = issuer.leeway_seconds
    exp = _number(claims.get("exp"))
    if exp is None:
        raise AuthenticationError("invalid_exp")
    if now >= exp + leeway:
        raise AuthenticationError("expired")
    for name, reason in (("nbf", "not_yet_valid"), ("iat", "issued_in_future")):
        if name not in claims:
            continue
        moment = _number(claims[name])
        if moment is None:
            raise AuthenticationError(f"invalid_{name}")
        if now + leeway < moment:
            raise AuthenticationError(reason)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError("missing_sub")
    return Principal(issuer=issuer.issuer, subject=subject, claims=claims, expires_at=exp)


def _number(value: Any) -> float | None:
    """A finite JSON number as float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def load_jwks(data: Mapping[str, Any], algorithms: Iterable[str]) -> tuple[VerificationKey, ...]:
    """Public keys from a JWKS document, each bound to the allowlisted algorithms it can verify.

    Private-key members, symmetric (``oct``) keys and keys whose ``use`` is not ``sig`` are
    rejected or skipped: a JWKS here is for verification only.
    """
    keys_data = data.get("keys")
    if not isinstance(keys_data, list):
        raise ConfigError(["JWKS: expected an object with a 'keys' array"])
    allowed = [a for a in algorithms if a in SUPPORTED_ALGORITHMS]
    problems: list[str] = []
    keys: list[VerificationKey] = []
    implementations = get_default_algorithms()
    for index, jwk in enumerate(keys_data):
        where = f"JWKS keys[{index}]"
        if not isinstance(jwk, dict):
            problems.append(f"{where}: must be an object")
            continue
        kty = jwk.get("kty")
        if kty == "oct":
            problems.append(f"{where}: symmetric (oct) keys are not accepted")
            continue
        if any(member in jwk for member in ("d", "p", "q", "dp", "dq", "qi")):
            problems.append(f"{where}: contains private key material; publish only public keys")
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        usable = frozenset(a for a in allowed if _KTY_FOR_PREFIX.get(a[:2]) == kty)
        key_alg = jwk.get("alg")
        if isinstance(key_alg, str):
            usable = usable & {key_alg}
        if not usable:
            continue
        try:
            implementation = implementations[sorted(usable)[0]]
            key = implementation.from_jwk(json.dumps(jwk))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"{where}: not a valid {kty} public key ({type(exc).__name__})")
            continue
        kid = jwk.get("kid")
        keys.append(
            VerificationKey(
                kid=kid if isinstance(kid, str) else None, kty=str(kty), key=key, algorithms=usable
            )
        )
    if problems:
        raise ConfigError(problems)
    return tuple(keys)


def load_jwks_file(path: str, algorithms: Iterable[str]) -> tuple[VerificationKey, ...]:
    file = Path(path)
    try:
        if file.stat().st_size > MAX_JWKS_FILE_BYTES:
            raise ConfigError([f"BROKER_AUTH_JWKS_FILE: {path} is larger than 1 MiB"])
        data = json.loads(file.read_bytes())
    except OSError as exc:
        raise ConfigError([f"BROKER_AUTH_JWKS_FILE: cannot read {path}: {exc.strerror}"]) from None
    except ValueError:
        raise ConfigError([f"BROKER_AUTH_JWKS_FILE: {path} is not valid JSON"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"BROKER_AUTH_JWKS_FILE: {path} must hold a JWKS object"])
    keys = load_jwks(data, algorithms)
    if not keys:
        raise ConfigError(
            [f"BROKER_AUTH_JWKS_FILE: {path} has no signing key usable with BROKER_AUTH_ALGORITHMS"]
        )
    return keys


def setup_verifier(auth: AuthSettings) -> Verifier:
    """The verifier for the configured issuer (empty when no issuer is configured)."""
    verifier = Verifier()
    if auth.issuer and auth.jwks_file:
        verifier.add_issuer(
            IssuerKeys(
                issuer=auth.issuer,
                audiences=auth.audience,
                algorithms=auth.algorithms,
                keys=load_jwks_file(auth.jwks_file, auth.algorithms),
                leeway_seconds=auth.leeway_seconds,
            )
        )
    return verifier


@dataclass(frozen=True, slots=True)
class DevSigner:
    """Dev mode only: an ephemeral RS256 key pair that signs app-user JWTs for ``/dev/login``."""

    issuer: str
    audience: str
    kid: str
    private_key: Any
    public_jwk: dict[str, Any]

    @classmethod
    def generate(cls, issuer: str, audience: str) -> DevSigner:
        from cryptography.hazmat.primitives.asymmetric import rsa

        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = "dev-" + format(abs(hash(private_key.public_key().public_numbers().n)), "x")[:12]
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
        public_jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
        return cls(issuer, audience, kid, private_key, public_jwk)

    def issuer_keys(self, leeway_seconds: int = 30) -> IssuerKeys:
        return IssuerKeys(
            issuer=self.issuer,
            audiences=(self.audience,),
            algorithms=("RS256",),
            keys=load_jwks({"keys": [self.public_jwk]}, ["RS256"]),
            leeway_seconds=leeway_seconds,
        )

    def sign(self, claims: Mapping[str, Any], *, now: float, lifetime_seconds: int) -> str:
        payload = dict(claims)
        payload.update(
            iss=self.issuer,
            aud=self.audience,
            iat=int(now),
            exp=int(now) + lifetime_seconds,
        )
        return jwt.encode(payload, self.private_key, algorithm="RS256", headers={"kid": self.kid})


def bearer_token(authorization: str | None) -> str:
    """The credential of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1)."""
    if not authorization:
        raise AuthenticationError("missing")
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise AuthenticationError("malformed_header")
    return credential
