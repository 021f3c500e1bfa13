"""The verified-token cache: a repeated JWT skips verification, never past exp or key removal."""

from __future__ import annotations

import hashlib

import pytest

from broker.authentication import Authenticator
from broker.errors import AuthenticationError
from broker.identity import IssuerRules, Verified, Verifier, parse_jwks
from tests.idp_fake import AUDIENCE, ISSUER, Clock, FakeIdP


class CountingVerifier(Verifier):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def verify(self, token: str, *, now: float, token_digest: bytes = b"") -> Verified:
        self.calls += 1
        return super().verify(token, now=now, token_digest=token_digest)


def setup(entries: int = 100) -> tuple[FakeIdP, Clock, CountingVerifier, Authenticator]:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    verifier = CountingVerifier()
    keys, _ = parse_jwks(idp.jwks(), ["RS256"])
    verifier.add_issuer(IssuerRules(ISSUER, (AUDIENCE,), ("RS256",), leeway_seconds=0), keys)
    return idp, clock, verifier, Authenticator(verifier, clock=clock, cache_entries=entries)


async def test_repeated_token_is_verified_once() -> None:
    idp, clock, verifier, auth = setup()
    token = idp.token("k1", clock.now)
    for _ in range(5):
        principal = await auth.authenticate(f"Bearer {token}")
        assert principal.subject == "alice"
        # Per-token work is keyed by this digest, never by the JWT itself.
        assert principal.token_digest == hashlib.sha256(token.encode()).digest()
    assert verifier.calls == 1


async def test_cached_result_never_outlives_exp() -> None:
    idp, clock, verifier, auth = setup()
    header = f"Bearer {idp.token('k1', clock.now, exp=int(clock.now) + 10)}"
    await auth.authenticate(header)
    clock.now += 9.999
    await auth.authenticate(header)
    assert verifier.calls == 1
    clock.now += 0.001
    with pytest.raises(AuthenticationError) as caught:
        await auth.authenticate(header)
    assert caught.value.reason == "expired"
    assert verifier.calls == 2


async def test_cached_result_dropped_when_key_removed() -> None:
    idp, clock, verifier, auth = setup()
    header = f"Bearer {idp.token('k1', clock.now)}"
    await auth.authenticate(header)
    verifier.set_keys(ISSUER, ())
    with pytest.raises(AuthenticationError):
        await auth.authenticate(header)
    assert verifier.calls == 2


async def test_failures_are_not_cached() -> None:
    idp, clock, verifier, auth = setup()
    bad = f"Bearer {idp.token('k1', clock.now, aud='other')}"
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(bad)
    assert verifier.calls == 2


async def test_cache_can_be_disabled() -> None:
    idp, clock, verifier, auth = setup(entries=0)
    header = f"Bearer {idp.token('k1', clock.now)}"
    await auth.authenticate(header)
    await auth.authenticate(header)
    assert verifier.calls == 2
