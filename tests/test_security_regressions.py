"""One test per attack on the token endpoint's front door, each named after the attack it stops.

The broker runs in-process with its real verifier, a remote identity provider stand-in (discovery +
JWKS over ``httpx.MockTransport``) and the real Smithery emulator behind an ASGI transport. Every
attack must end in a 401 with the same generic body and challenge, never a 500, never echoing the
token; the precise reason is logged for operators.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.testing import AsyncTestClient

from broker.app import create_app
from broker.config import AuthSettings, PoliciesSettings, Secret, Settings, SmitherySettings
from broker.emulator import create_emulator_app
from broker.identity import MAX_TOKEN_BYTES
from tests.idp_fake import AUDIENCE, ISSUER, Clock, FakeIdP

ROOT = Path(__file__).resolve().parent.parent
GENERIC = "The bearer token is missing or invalid."


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


class Front:
    def __init__(self, client: AsyncTestClient[Any], idp: FakeIdP, clock: Clock) -> None:
        self.client, self.idp, self.clock = client, idp, clock

    def claims(self, **overrides: Any) -> dict[str, Any]:
        base = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "email_verified": True,
            "iat": int(self.clock.now),
            "exp": int(self.clock.now) + 600,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def sign(
        self, payload: dict[str, Any] | None = None, *, kid: str = "k1", **headers: Any
    ) -> str:
        return jwt.encode(
            payload or self.claims(),
            self.idp.keys["k1"],
            algorithm="RS256",
            headers={"kid": kid, **headers},
        )

    def sign_raw(self, header: dict[str, Any], payload: bytes) -> str:
        """Sign arbitrary header JSON and payload bytes with the real key (no library checks)."""
        signing_input = b64json(header) + "." + b64(payload)
        algorithm = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)
        return f"{signing_input}.{b64(algorithm.sign(signing_input.encode(), self.idp.keys['k1']))}"

    async def post(self, token: str) -> httpx.Response:
        return await self.client.post("/v1/tokens", headers={"Authorization": f"Bearer {token}"})

    async def assert_refused(
        self, token: str, reason: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.clear()
        response = await self.post(token)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        body = response.json()
        assert body["code"] == "invalid_token"
        assert body["detail"] == GENERIC
        if len(token) > 8:
            assert token not in response.text
            assert token not in caplog.text
        assert f"reason={reason} " in caplog.text, caplog.text


@pytest.fixture
async def front(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Front]:
    caplog.set_level(logging.INFO, logger="broker")
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    emulator = create_emulator_app(api_key="sk-sec")
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator", api_key=Secret("sk-sec")),
        auth=AuthSettings(issuer=ISSUER, audience=(AUDIENCE,), algorithms=("RS256", "ES256")),
    )
    app = create_app(
        settings,
        clock=clock,
        upstream_transport=httpx.ASGITransport(app=emulator),
        idp_transport=idp.transport(),
    )
    async with AsyncTestClient(app) as client:
        yield Front(client, idp, clock)


async def test_valid_token_accepted(front: Front) -> None:
    response = await front.post(front.sign())
    assert response.status_code == 200, response.text
    assert response.json()["rules"] == ["own-connections"]


async def test_alg_none_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    token = (
        b64json({"alg": "none", "typ": "JWT", "kid": "k1"}) + "." + b64json(front.claims()) + "."
    )
    await front.assert_refused(token, "algorithm_not_allowed", caplog)


async def test_alg_none_case_variant_rejected(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    token = b64json({"alg": "nOnE", "kid": "k1"}) + "." + b64json(front.claims()) + "."
    await front.assert_refused(token, "algorithm_not_allowed", caplog)


async def test_rs_to_hs_confusion_with_public_key_as_secret_rejected(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    public_pem = (
        front.idp.keys["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing_input = b64json({"alg": "HS256", "kid": "k1"}) + "." + b64json(front.claims())
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    await front.assert_refused(f"{signing_input}.{b64(signature)}", "algorithm_not_allowed", caplog)


async def test_modified_signature_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    header, payload, signature = front.sign().split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    await front.assert_refused(f"{header}.{payload}.{flipped}", "bad_signature", caplog)


@pytest.mark.parametrize("padding", ["=", "==", "%3D"])
async def test_padded_base64_rejected(
    front: Front, caplog: pytest.LogCaptureFixture, padding: str
) -> None:
    """RFC 7515 base64url has no padding: "==" after the signature was accepted, one token
    with several spellings (each its own cache entry)."""
    await front.assert_refused(front.sign() + padding, "malformed", caplog)


async def test_two_authorization_headers_rejected(front: Front) -> None:
    """Which one counts would differ between the broker and a proxy in front of it."""
    for first, second in ((front.sign(), "x"), ("x", front.sign())):
        response = await front.client.post(
            "/v1/tokens",
            headers=[("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")],
        )
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "invalid_token"


async def test_modified_payload_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    header, _, signature = front.sign().split(".")
    forged = b64json(front.claims(sub="admin"))
    await front.assert_refused(f"{header}.{forged}.{signature}", "bad_signature", caplog)


async def test_modified_header_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    _, payload, signature = front.sign().split(".")
    header = b64json({"alg": "RS256", "kid": "k1", "typ": "JWT", "x": 1})
    await front.assert_refused(f"{header}.{payload}.{signature}", "bad_signature", caplog)


async def test_missing_segment_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    header, payload, _ = front.sign().split(".")
    await front.assert_refused(f"{header}.{payload}", "malformed", caplog)


async def test_extra_segment_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    await front.assert_refused(front.sign() + ".AAAA", "malformed", caplog)


async def test_embedded_jwk_not_used_as_key(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    token = jwt.encode(
        front.claims(sub="admin"), attacker, algorithm="RS256", headers={"kid": "k1", "jwk": jwk}
    )
    await front.assert_refused(token, "bad_signature", caplog)


async def test_jku_to_another_host_never_fetched(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        front.claims(),
        attacker,
        algorithm="RS256",
        headers={"kid": "evil", "jku": "https://attacker.test/jwks.json"},
    )
    await front.assert_refused(token, "unknown_kid", caplog)
    assert all(not path.startswith("/jwks.json") for path in front.idp.requests)


async def test_x5u_and_x5c_not_used_as_keys(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        front.claims(),
        attacker,
        algorithm="RS256",
        headers={
            "kid": "k1",
            "x5u": "https://attacker.test/cert.pem",
            "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
        },
    )
    await front.assert_refused(token, "bad_signature", caplog)


@pytest.mark.parametrize(
    "kid", ["../../../../dev/null", "/etc/passwd", "' OR '1'='1", "k1' --", "k1\u0000", "%2e%2e%2f"]
)
async def test_kid_injection_rejected(
    front: Front, kid: str, caplog: pytest.LogCaptureFixture
) -> None:
    await front.assert_refused(front.sign(kid=kid), "unknown_kid", caplog)


async def test_non_string_kid_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    token = front.sign_raw({"alg": "RS256", "kid": 7}, json.dumps(front.claims()).encode())
    await front.assert_refused(token, "malformed_kid", caplog)


async def test_unknown_crit_header_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    await front.assert_refused(front.sign(crit=["urn:x"]), "unsupported_crit", caplog)


async def test_expired_token_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    token = front.sign(front.claims(exp=int(front.clock.now) - 31))
    await front.assert_refused(token, "expired", caplog)


async def test_nbf_in_future_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    token = front.sign(front.claims(nbf=int(front.clock.now) + 300))
    await front.assert_refused(token, "not_yet_valid", caplog)


async def test_wrong_issuer_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    await front.assert_refused(
        front.sign(front.claims(iss="https://evil.test/")), "wrong_issuer", caplog
    )


async def test_wrong_audience_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    await front.assert_refused(
        front.sign(front.claims(aud="someone-else")), "wrong_audience", caplog
    )


async def test_missing_sub_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    await front.assert_refused(front.sign(front.claims(sub=None)), "missing_sub", caplog)


async def test_empty_sub_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    await front.assert_refused(front.sign(front.claims(sub="")), "missing_sub", caplog)


async def test_missing_exp_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    await front.assert_refused(front.sign(front.claims(exp=None)), "missing_exp", caplog)


async def test_non_json_payload_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    token = front.sign_raw({"alg": "RS256", "kid": "k1"}, b"not json at all")
    await front.assert_refused(token, "invalid", caplog)


@pytest.mark.parametrize(
    "claim",
    [
        b'"name": "\\ud800"',  # an unpaired surrogate escape
        b'"groups": ["support\\udfff"]',  # in an array
        b'"name": "\xed\xa0\x80"',  # a surrogate encoded as UTF-8 (PyJWT's parser keeps it)
    ],
)
async def test_claims_with_unpaired_surrogates_rejected(
    front: Front, caplog: pytest.LogCaptureFixture, claim: bytes
) -> None:
    """Validly signed, but no log, trace or constraint could hold the claim (it was a 500)."""
    payload = json.dumps(front.claims()).encode()[:-1] + b", " + claim + b"}"
    token = front.sign_raw({"alg": "RS256", "kid": "k1", "typ": "JWT"}, payload)
    await front.assert_refused(token, "malformed_claims", caplog)


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        (b'"exp": 1' + b"0" * 400, "invalid_exp"),  # an integer beyond the float range
        (b'"exp": 1e999', "invalid_exp"),  # a float that overflows to infinity
        (b'"nbf": -1' + b"0" * 400, "invalid_nbf"),
        (b'"iat": 1' + b"0" * 400, "invalid_iat"),
    ],
)
async def test_times_beyond_the_float_range_rejected(
    front: Front, caplog: pytest.LogCaptureFixture, claim: bytes, reason: str
) -> None:
    """Validly signed times that no clock can compare (``float()`` overflowed: it was a 500)."""
    claims = front.claims()
    name = claim.split(b'"')[1].decode()
    claims.pop(name, None)
    payload = json.dumps(claims).encode()[:-1] + b", " + claim + b"}"
    token = front.sign_raw({"alg": "RS256", "kid": "k1", "typ": "JWT"}, payload)
    await front.assert_refused(token, reason, caplog)


async def test_non_json_header_rejected(front: Front, caplog: pytest.LogCaptureFixture) -> None:
    _, payload, signature = front.sign().split(".")
    await front.assert_refused(f"{b64(b'{{{')}.{payload}.{signature}", "malformed", caplog)


async def test_deeply_nested_header_rejected(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    """Nesting past the interpreter's recursion limit, read before any signature (a 500 was)."""
    _, payload, signature = front.sign().split(".")
    header = b64(b"[" * 5000 + b"]" * 5000)
    await front.assert_refused(f"{header}.{payload}.{signature}", "malformed", caplog)


async def test_oversized_token_rejected_before_parsing(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    token = front.sign(front.claims(padding="x" * MAX_TOKEN_BYTES))
    await front.assert_refused(token, "oversized", caplog)


async def test_flood_of_random_kids_fetches_jwks_at_most_once_per_interval(
    front: Front, caplog: pytest.LogCaptureFixture
) -> None:
    fetches_before = front.idp.jwks_fetches
    for index in range(50):
        await front.assert_refused(front.sign(kid=f"random-{index}"), "unknown_kid", caplog)
    assert front.idp.jwks_fetches == fetches_before + 1


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer a b", "bearer  "]
)
async def test_malformed_authorization_header_rejected(front: Front, header: str) -> None:
    response = await front.client.post("/v1/tokens", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["detail"] == GENERIC
