"""JWT verification: each rule of the verifier is a named test (PyJWT is used only to forge)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from broker.config import AuthSettings
from broker.errors import AuthenticationError, ConfigError, UnknownKeyError
from broker.identity import (
    MAX_TOKEN_BYTES,
    DevSigner,
    IssuerRules,
    Verifier,
    bearer_token,
    load_jwks,
    load_jwks_file,
    parse_jwks,
)
from broker.jwks import setup_verifier

ISSUER = "https://idp.example/"
AUDIENCE = "token-broker"
NOW = 1_700_000_000.0

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
    else:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    data["kid"] = kid
    return data


JWKS = {"keys": [public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")]}


def verifier(algorithms: tuple[str, ...] = ("RS256", "ES256"), **rules: Any) -> Verifier:
    v = Verifier()
    v.add_issuer(
        IssuerRules(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=algorithms, **rules),
        load_jwks(JWKS, algorithms),
    )
    return v


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": int(NOW),
        "exp": int(NOW) + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    payload: dict[str, Any],
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str = "rsa-1",
    **headers: Any,
) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, **headers})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def reason_of(call: Callable[[], object]) -> str:
    with pytest.raises(AuthenticationError) as caught:
        call()
    return caught.value.reason


def test_valid_rs256_token_allowed() -> None:
    principal = verifier().verify(sign(claims(email_verified=True)), now=NOW).principal
    assert principal.subject == "alice"
    assert principal.issuer == ISSUER
    assert principal.claims["email_verified"] is True


def test_valid_es256_token_allowed() -> None:
    token = sign(claims(), key=EC_KEY, alg="ES256", kid="ec-1")
    assert verifier().verify(token, now=NOW).principal.subject == "alice"


def test_alg_none_rejected() -> None:
    token = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(claims()).encode()) + "."
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "algorithm_not_allowed"


def test_rs_to_hs_key_confusion_rejected() -> None:
    public_pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    import hashlib
    import hmac

    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{b64(signature)}"
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "algorithm_not_allowed"


def test_algorithm_outside_allowlist_rejected_even_with_valid_signature() -> None:
    token = sign(claims(), key=EC_KEY, alg="ES256", kid="ec-1")
    assert reason_of(lambda: verifier(("RS256",)).verify(token, now=NOW)) == "algorithm_not_allowed"


def test_modified_payload_rejected() -> None:
    header, _, signature = sign(claims()).split(".")
    forged = b64(json.dumps(claims(sub="admin")).encode())
    token = f"{header}.{forged}.{signature}"
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "bad_signature"


def test_expired_rejected() -> None:
    token = sign(claims(exp=int(NOW) - 31))
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "expired"


def test_expiry_within_leeway_allowed() -> None:
    token = sign(claims(exp=int(NOW) - 29))
    assert verifier().verify(token, now=NOW).principal.subject == "alice"


def test_nbf_in_future_rejected() -> None:
    token = sign(claims(nbf=int(NOW) + 120))
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "not_yet_valid"


def test_wrong_issuer_rejected() -> None:
    token = sign(claims(iss="https://evil.example/"))
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "wrong_issuer"


def test_wrong_audience_rejected() -> None:
    token = sign(claims(aud="another-app"))
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "wrong_audience"


def test_missing_sub_rejected() -> None:
    token = sign(claims(sub=None))
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "missing_sub"


def test_missing_exp_rejected() -> None:
    token = sign(claims(exp=None))
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "missing_exp"


def test_unknown_kid_rejected() -> None:
    token = sign(claims(), kid="../../etc/passwd")
    with pytest.raises(UnknownKeyError) as caught:
        verifier().verify(token, now=NOW)
    assert caught.value.issuer == ISSUER


def test_embedded_jwk_is_not_a_key_source() -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = sign(claims(), key=attacker, kid="rsa-1", jwk=public_jwk(attacker, "rsa-1"))
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "bad_signature"


def test_unknown_crit_rejected() -> None:
    token = sign(claims(), crit=["exp-ext"], **{"exp-ext": 1})
    assert reason_of(lambda: verifier().verify(token, now=NOW)) in {"unsupported_crit", "malformed"}


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "...", "e30.e30.", "x" * 50])
def test_garbled_tokens_rejected(token: str) -> None:
    assert reason_of(lambda: verifier().verify(token, now=NOW)) in {
        "malformed",
        "invalid",
        "algorithm_not_allowed",
    }


def test_oversized_token_rejected_before_parsing() -> None:
    token = "a." + "b" * MAX_TOKEN_BYTES + ".c"
    assert reason_of(lambda: verifier().verify(token, now=NOW)) == "oversized"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic abc", "malformed_header"),
        ("Bearer", "malformed_header"),
        ("Bearer a b", "malformed_header"),
    ],
)
def test_bearer_header_parsing_rejects(header: str | None, reason: str) -> None:
    assert reason_of(lambda: bearer_token(header)) == reason


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"


def test_jwks_rejects_private_and_symmetric_keys() -> None:
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY))
    with pytest.raises(ConfigError) as caught:
        load_jwks({"keys": [private, {"kty": "oct", "k": "c2VjcmV0"}]}, ["RS256"])
    assert caught.value.problems == (
        "JWKS keys[0]: contains private key material; publish only public keys",
        "JWKS keys[1]: symmetric (oct) keys are not accepted",
    )


def test_jwks_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "jwks.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_jwks_file(str(bad), ["RS256"])
    only_ec = tmp_path / "ec.json"
    only_ec.write_text(json.dumps({"keys": [public_jwk(EC_KEY, "ec-1")]}))
    with pytest.raises(ConfigError, match="no signing key usable"):
        load_jwks_file(str(only_ec), ["RS256"])


def test_setup_verifier_from_settings(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(JWKS))
    v, remote = setup_verifier(
        AuthSettings(issuer=ISSUER, audience=(AUDIENCE,), jwks_file=str(jwks))
    )
    assert remote == ()
    assert v.ready
    assert v.verify(sign(claims()), now=NOW).principal.subject == "alice"


def test_dev_signer_tokens_verify_and_carry_extra_claims() -> None:
    signer = DevSigner.generate("http://127.0.0.1:8080/dev", "dev-aud")
    v = Verifier()
    v.add_issuer(signer.rules(), signer.keys())
    token = signer.sign({"sub": "bob", "groups": ["support"]}, now=NOW, lifetime_seconds=60)
    principal = v.verify(token, now=NOW).principal
    assert principal.subject == "bob"
    assert principal.claims["groups"] == ["support"]
    assert reason_of(lambda: v.verify(token, now=NOW + 100)) == "expired"


def test_typ_required_when_configured() -> None:
    v = verifier(typ="at+jwt")
    assert v.verify(sign(claims(), typ="at+JWT"), now=NOW).principal.subject == "alice"
    assert v.verify(sign(claims(), typ="application/at+jwt"), now=NOW).principal.subject == "alice"
    assert reason_of(lambda: v.verify(sign(claims(), typ="JWT"), now=NOW)) == "wrong_typ"


def test_required_claims_and_subject_claim() -> None:
    v = verifier(required_claims=("email",), subject_claim="oid")
    token = sign(claims(email="a@example.com", oid="object-1"))
    assert v.verify(token, now=NOW).principal.subject == "object-1"
    assert reason_of(lambda: v.verify(sign(claims(oid="o")), now=NOW)) == "missing_email"
    assert reason_of(lambda: v.verify(sign(claims(email="e")), now=NOW)) == "missing_oid"


def test_max_token_age() -> None:
    v = verifier(max_token_age_seconds=300)
    fresh = v.verify(sign(claims(iat=int(NOW) - 100)), now=NOW)
    assert fresh.valid_until == NOW - 100 + 300 + 30  # earlier than exp
    assert reason_of(lambda: v.verify(sign(claims(iat=int(NOW) - 400)), now=NOW)) == "too_old"
    assert reason_of(lambda: v.verify(sign(claims(iat=None)), now=NOW)) == "missing_iat"


def test_multiple_issuers_select_rules_by_iss() -> None:
    v = verifier()
    other = ec.generate_private_key(ec.SECP256R1())
    v.add_issuer(
        IssuerRules(issuer="https://other.example/", audiences=("x",), algorithms=("ES256",)),
        load_jwks({"keys": [public_jwk(other, "o1")]}, ["ES256"]),
    )
    token = sign(claims(iss="https://other.example/", aud="x"), key=other, alg="ES256", kid="o1")
    assert v.verify(token, now=NOW).principal.issuer == "https://other.example/"
    assert reason_of(lambda: v.verify(sign(claims(iss="https://nope/")), now=NOW)) == (
        "unknown_issuer"
    )
    # A key of one issuer never verifies a token claiming the other issuer.
    forged = sign(claims(iss="https://other.example/", aud="x"), kid="rsa-1")
    assert reason_of(lambda: v.verify(forged, now=NOW)) == "algorithm_not_allowed"


DEEP = b"[" * 5000 + b"]" * 5000
"""Nested past the interpreter's recursion limit, and still under the token size cap."""


def test_deeply_nested_segments_are_malformed_not_a_crash() -> None:
    """``json.loads`` raises RecursionError here, which is no ValueError (it was a 500)."""
    v = verifier()
    v.add_issuer(
        IssuerRules(issuer="https://other.example/", audiences=("x",), algorithms=("ES256",)),
        load_jwks({"keys": [public_jwk(EC_KEY, "o1")]}, ["ES256"]),
    )
    header, payload, signature = sign(claims()).split(".")
    assert len(b64(DEEP)) < MAX_TOKEN_BYTES
    # The header is read before any signature; with two issuers, the payload's iss too.
    assert reason_of(lambda: v.verify(f"{b64(DEEP)}.{payload}.{signature}", now=NOW)) == (
        "malformed"
    )
    assert reason_of(lambda: v.verify(f"{header}.{b64(DEEP)}.{signature}", now=NOW)) == (
        "malformed"
    )
    # A validly signed one reaches PyJWT's parser, which raises it too.
    signing_input = f"{b64(json.dumps({'alg': 'RS256', 'kid': 'rsa-1'}).encode())}.{b64(DEEP)}"
    signed = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(
        signing_input.encode(), RSA_KEY
    )
    one_issuer = verifier()
    token = f"{signing_input}.{b64(signed)}"
    assert reason_of(lambda: one_issuer.verify(token, now=NOW)) == "invalid"


def test_remote_jwks_parsing_skips_unusable_keys_with_reasons() -> None:
    keys, problems = parse_jwks(
        {
            "keys": [
                public_jwk(RSA_KEY, "a"),
                {"kty": "oct", "k": "eA"},
                {"kty": "RSA", "n": "!"},
                {**public_jwk(EC_KEY, "enc"), "use": "enc"},
            ]
        },
        ["RS256", "ES256"],
    )
    assert [k.kid for k in keys] == ["a"]
    assert problems == [
        "JWKS keys[1]: symmetric (oct) keys are not accepted",
        "JWKS keys[2]: not a valid RSA public key (InvalidKeyError)",
    ]


def test_thumbprint_is_stable_across_kid_changes() -> None:
    first, _ = parse_jwks({"keys": [public_jwk(RSA_KEY, "a")]}, ["RS256"])
    second, _ = parse_jwks({"keys": [public_jwk(RSA_KEY, "b")]}, ["RS256"])
    assert first[0].thumbprint == second[0].thumbprint
