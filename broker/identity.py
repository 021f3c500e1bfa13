"""Verifying app users' JWTs. The only module that imports PyJWT.

A ``Verifier`` holds, per accepted issuer, its rules (audiences, algorithm allowlist, subject
claim, required claims, ``typ``, leeway, maximum age) and its current public keys. The allowlist
is configured next to the keys and never taken from the token (RFC 8725 §3.1); HMAC and ``none``
are not supported at all, so a public key can never be used as an HMAC secret. Keys come only
from the configured key sets: header ``jwk``, ``jku``, ``x5u`` and ``x5c`` are never read.

Every PyJWT exception is translated here, once, into ``AuthenticationError`` with a precise
``reason`` for logs; callers only ever see the generic 401. Time is passed in (``now``). This
module does no network I/O: fetching keys is ``jwks.py``'s job, caching results is
``authentication.py``'s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
import msgspec
from jwt.algorithms import get_default_algorithms

from broker.config import SUPPORTED_ALGORITHMS, IssuerConfig
from broker.errors import AuthenticationError, ConfigError, UnknownKeyError
from broker.files import FileRefused, read_limited

MAX_TOKEN_BYTES: Final = 16 * 1024
"""Bearer tokens larger than this are refused before any parsing."""
MAX_JWKS_BYTES: Final = 1024 * 1024
_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_JWKS_KEYS: Final = 100
"""Keys read from one key set (identity providers publish a handful); past that, ignored."""
_ENCODE: Final = msgspec.json.Encoder().encode

# Which JWK key types can verify which algorithm family (RFC 7518 §6).
_KTY_FOR_PREFIX: Final = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# RFC 7638 §3.2: the required public members of each key type, in the thumbprint.
_THUMBPRINT_MEMBERS: Final = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified app user. ``claims`` is the full verified payload."""

    issuer: str
    subject: str
    claims: Mapping[str, Any]
    expires_at: float
    token_digest: bytes = b""
    """SHA-256 of the JWT this principal came from (set by ``authentication``; never the JWT).
    Lets per-token work such as rendering the policy be reused for a repeated token."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str | None
    kty: str
    key: Any
    """A loaded public key object (never PEM text: loading per request costs 6-19 µs)."""
    algorithms: frozenset[str]
    """The allowlisted algorithms this key may verify."""
    thumbprint: str
    """RFC 7638 JWK thumbprint: identifies the key across JWKS refreshes."""


@dataclass(frozen=True, slots=True)
class IssuerRules:
    """What a token from one issuer must satisfy, besides a valid signature."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    subject_claim: str = "sub"
    required_claims: tuple[str, ...] = ()
    typ: str | None = None
    """Required header ``typ`` (compared case-insensitively, ``application/`` optional)."""
    leeway_seconds: int = 30
    max_token_age_seconds: int | None = None

    @classmethod
    def from_config(cls, config: IssuerConfig) -> IssuerRules:
        return cls(
            issuer=config.issuer,
            audiences=config.audiences,
            algorithms=config.algorithms,
            subject_claim=config.subject_claim,
            required_claims=config.required_claims,
            typ=config.typ,
            leeway_seconds=config.leeway_seconds,
            max_token_age_seconds=config.max_token_age_seconds,
        )


@dataclass(frozen=True, slots=True)
class Verified:
    principal: Principal
    issuer: str
    thumbprint: str
    """The key that verified the signature; the result is only reusable while it is current."""
    valid_until: float
    """``exp``, or earlier when a maximum token age ends first: the result's reuse limit."""


class Verifier:
    """Verifies bearer JWTs against the configured issuers and their current keys.

    Key sets are replaced whole (``set_keys``) by the JWKS refresher; a verification always sees
    one complete set. Verification itself is synchronous and pure.
    """

    def __init__(self) -> None:
        self._rules: dict[str, IssuerRules] = {}
        self._keys: dict[str, tuple[VerificationKey, ...]] = {}
        self._thumbprints: dict[str, frozenset[str]] = {}

    def add_issuer(self, rules: IssuerRules, keys: Iterable[VerificationKey] = ()) -> None:
        self._rules[rules.issuer] = rules
        self.set_keys(rules.issuer, keys)

    def set_keys(self, issuer: str, keys: Iterable[VerificationKey]) -> None:
        key_tuple = tuple(keys)
        self._keys[issuer] = key_tuple
        self._thumbprints[issuer] = frozenset(k.thumbprint for k in key_tuple)

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._rules)

    def rules(self, issuer: str) -> IssuerRules:
        return self._rules[issuer]

    def has_keys(self, issuer: str) -> bool:
        return bool(self._keys.get(issuer))

    @property
    def ready(self) -> bool:
        """Every issuer has had keys loaded (readiness)."""
        return bool(self._rules) and all(self._keys.get(i) for i in self._rules)

    def key_current(self, issuer: str, thumbprint: str) -> bool:
        """Whether the key that verified an earlier result is still in the issuer's key set."""
        return thumbprint in self._thumbprints.get(issuer, frozenset())

    def verify(self, token: str, *, now: float, token_digest: bytes = b"") -> Verified:
        """Verify ``token`` completely or raise ``AuthenticationError``. ``token_digest`` is
        passed through to the principal (``Principal.token_digest``).

        Checks, in order: size, structure, issuer known, header ``alg`` in the issuer's
        allowlist, no ``crit``, ``typ`` when required, key by ``kid``, signature, ``iss`` exact,
        ``aud`` intersecting, every claim valid Unicode (no unpaired surrogate), ``exp``
        required and in the future, ``nbf``/``iat`` when present, maximum age, required claims,
        subject a non-empty string.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationError("oversized")
        if _COMPACT_JWS.fullmatch(token) is None:
            # base64url without padding (RFC 7515 §2): "=" or other characters would give one
            # token several accepted spellings, each its own cache entry and audit identity.
            raise AuthenticationError("malformed")
        segments = token.split(".")
        header = _decode_segment(segments[0])
        rules = self._issuer_for(segments[1])
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in rules.algorithms:
            raise AuthenticationError("algorithm_not_allowed")
        if "crit" in header:
            # RFC 7515 §4.1.11: we understand no extensions, so any critical one is unsupported.
            raise AuthenticationError("unsupported_crit")
        if rules.typ is not None and not _typ_matches(header.get("typ"), rules.typ):
            raise AuthenticationError("wrong_typ")
        key = self._select_key(rules.issuer, header.get("kid"), algorithm)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=list(rules.audiences),
                issuer=rules.issuer,
                options={
                    "require": ["exp", "iss", "aud"],
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
        except (jwt.PyJWTError, RecursionError):  # a signed payload nested past the interpreter
            raise AuthenticationError("invalid") from None
        try:
            # PyJWT's parser keeps unpaired UTF-16 surrogates (escaped, or even UTF-8-encoded):
            # a claim holding one could not go into a log, a trace or a token's constraints.
            _ENCODE(claims)
        except UnicodeEncodeError:
            raise AuthenticationError("malformed_claims") from None
        principal = _check_claims(claims, rules, now, token_digest)
        valid_until = principal.expires_at
        if rules.max_token_age_seconds is not None:
            issued_at = float(claims["iat"])
            valid_until = min(
                valid_until, issued_at + rules.max_token_age_seconds + rules.leeway_seconds
            )
        return Verified(
            principal=principal,
            issuer=rules.issuer,
            thumbprint=key.thumbprint,
            valid_until=valid_until,
        )

    def _issuer_for(self, payload_segment: str) -> IssuerRules:
        if len(self._rules) == 1:
            # PyJWT checks ``iss`` exactly; no need to parse the payload twice.
            return next(iter(self._rules.values()))
        issuer = _decode_segment(payload_segment).get("iss")
        if not isinstance(issuer, str) or issuer not in self._rules:
            raise AuthenticationError("unknown_issuer")
        return self._rules[issuer]

    def _select_key(self, issuer: str, kid: Any, algorithm: str) -> VerificationKey:
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("malformed_kid")
        candidates = [k for k in self._keys.get(issuer, ()) if algorithm in k.algorithms]
        if kid is not None:
            candidates = [k for k in candidates if k.kid == kid]
        elif len(candidates) > 1:
            # Without a kid we would have to try keys one by one; refuse rather than guess.
            raise AuthenticationError("missing_kid")
        if not candidates:
            raise UnknownKeyError(issuer)
        return candidates[0]


def _decode_segment(segment: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):  # deep nesting: before any signature
        raise AuthenticationError("malformed") from None
    if not isinstance(value, dict):
        raise AuthenticationError("malformed")
    return value


def _typ_matches(actual: Any, required: str) -> bool:
    if not isinstance(actual, str):
        return False

    # RFC 7515 §4.1.9: "application/" may be omitted from typ; compare case-insensitively.
    def normal(value: str) -> str:
        return value.lower().removeprefix("application/")

    return normal(actual) == normal(required)


def _check_claims(
    claims: dict[str, Any], rules: IssuerRules, now: float, token_digest: bytes
) -> Principal:
    leeway = rules.leeway_seconds
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
    if rules.max_token_age_seconds is not None:
        issued_at = _number(claims.get("iat"))
        if issued_at is None:
            raise AuthenticationError("missing_iat")
        if now - issued_at > rules.max_token_age_seconds + leeway:
            raise AuthenticationError("too_old")
    for name in rules.required_claims:
        if claims.get(name) is None:
            raise AuthenticationError(f"missing_{name}")
    subject = claims.get(rules.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise AuthenticationError(f"missing_{rules.subject_claim}")
    return Principal(
        issuer=rules.issuer,
        subject=subject,
        claims=claims,
        expires_at=exp,
        token_digest=token_digest,
    )


def _number(value: Any) -> float | None:
    """A finite JSON number as float; None for anything else (booleans included, and integers
    beyond the float range, which ``float()`` refuses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


# --- key sets -----------------------------------------------------------------------------------


def parse_jwks(
    data: Any, algorithms: Iterable[str]
) -> tuple[tuple[VerificationKey, ...], list[str]]:
    """Public signing keys from a JWKS document, each bound to the allowlisted algorithms it can
    verify, and a list of problems with the keys that were refused.

    Private-key members and symmetric (``oct``) keys are refused: a JWKS here is for verification
    only. Keys for other uses (``use`` other than ``sig``) or for algorithms outside the
    allowlist are skipped silently.
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        return (), ["JWKS: expected an object with a 'keys' array"]
    allowed = [a for a in algorithms if a in SUPPORTED_ALGORITHMS]
    problems: list[str] = []
    keys: list[VerificationKey] = []
    implementations = get_default_algorithms()
    listed = data["keys"]
    if len(listed) > MAX_JWKS_KEYS:
        problems.append(f"JWKS: {len(listed)} keys; only the first {MAX_JWKS_KEYS} are read")
    for index, jwk in enumerate(listed[:MAX_JWKS_KEYS]):
        where = f"JWKS keys[{index}]"
        if not isinstance(jwk, dict):
            problems.append(f"{where}: must be an object")
            continue
        kty = jwk.get("kty")
        if kty == "oct":
            problems.append(f"{where}: symmetric (oct) keys are not accepted")
            continue
        if any(member in jwk for member in _PRIVATE_MEMBERS):
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
            key = implementations[sorted(usable)[0]].from_jwk(json.dumps(jwk))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"{where}: not a valid {kty} public key ({type(exc).__name__})")
            continue
        kid = jwk.get("kid")
        keys.append(
            VerificationKey(
                kid=kid if isinstance(kid, str) else None,
                kty=str(kty),
                key=key,
                algorithms=usable,
                thumbprint=_thumbprint(jwk),
            )
        )
    return tuple(keys), problems


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")), ("kty",))
    canonical = json.dumps({m: jwk.get(m) for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def load_jwks(data: Any, algorithms: Iterable[str]) -> tuple[VerificationKey, ...]:
    """Strict form of ``parse_jwks`` for operator-supplied files: any refused key is an error."""
    keys, problems = parse_jwks(data, algorithms)
    if problems:
        raise ConfigError(problems)
    return keys


def load_jwks_file(path: str, algorithms: Iterable[str]) -> tuple[VerificationKey, ...]:
    try:
        data = msgspec.json.decode(read_limited(path, MAX_JWKS_BYTES))
    except FileRefused as exc:
        raise ConfigError([f"JWKS file {path} {exc}"]) from None
    except OSError as exc:
        raise ConfigError([f"JWKS file {path}: cannot read: {exc.strerror}"]) from None
    except (msgspec.DecodeError, RecursionError):
        raise ConfigError([f"JWKS file {path} is not valid JSON"]) from None
    keys = load_jwks(data, algorithms)
    if not keys:
        raise ConfigError(
            [f"JWKS file {path} has no signing key usable with the allowed algorithms"]
        )
    return keys


def bearer_token(authorization: str | None) -> str:
    """The credential of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1)."""
    if not authorization:
        raise AuthenticationError("missing")
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise AuthenticationError("malformed_header")
    return credential


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
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
        kid = "dev-" + _thumbprint(public_jwk)[:12]
        public_jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
        return cls(issuer, audience, kid, private_key, public_jwk)

    def rules(self, leeway_seconds: int = 30) -> IssuerRules:
        return IssuerRules(
            issuer=self.issuer,
            audiences=(self.audience,),
            algorithms=("RS256",),
            leeway_seconds=leeway_seconds,
        )

    def keys(self) -> tuple[VerificationKey, ...]:
        return load_jwks({"keys": [self.public_jwk]}, ["RS256"])

    def sign(self, claims: Mapping[str, Any], *, now: float, lifetime_seconds: int) -> str:
        payload = dict(claims)
        payload.update(
            iss=self.issuer,
            aud=self.audience,
            iat=int(now),
            exp=int(now) + lifetime_seconds,
        )
        return jwt.encode(payload, self.private_key, algorithm="RS256", headers={"kid": self.kid})
