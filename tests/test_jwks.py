"""Discovery, JWKS caching, rotation and refetch throttling (in-process IdP via MockTransport)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest

from broker.authentication import Authenticator
from broker.config import AuthSettings
from broker.errors import AuthenticationError
from broker.jwks import (
    LOGGED_KEY_PROBLEMS,
    JwksManager,
    cache_ttl_seconds,
    is_fetchable,
    setup_verifier,
)
from tests.idp_fake import AUDIENCE, ISSUER, Clock, FakeIdP

AUTH = AuthSettings(issuer=ISSUER, audience=(AUDIENCE,), algorithms=("RS256",))


def build(
    idp: FakeIdP, clock: Clock, auth: AuthSettings = AUTH
) -> tuple[JwksManager, Authenticator]:
    verifier, remote = setup_verifier(auth)
    manager = JwksManager(verifier, remote, auth, clock=clock, transport=idp.transport())
    return manager, Authenticator(verifier, clock=clock, keys=manager)


async def reason(authenticator: Authenticator, token: str) -> str:
    with pytest.raises(AuthenticationError) as caught:
        await authenticator.authenticate(f"Bearer {token}")
    return caught.value.reason


async def test_discovery_then_jwks_then_verify() -> None:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    manager, auth = build(idp, clock)
    assert not auth.ready
    assert await manager.refresh(ISSUER)
    assert auth.ready
    assert idp.requests == ["/.well-known/openid-configuration", "/jwks"]
    principal = await auth.authenticate(f"Bearer {idp.token('k1', clock.now)}")
    assert principal.subject == "alice"
    await manager.aclose()


async def test_discovery_naming_another_issuer_is_refused() -> None:
    idp, clock = FakeIdP(discovery_issuer="https://evil.test/"), Clock()
    idp.add_key("k1")
    manager, auth = build(idp, clock)
    assert not await manager.refresh(ISSUER)
    assert not auth.ready
    assert manager.status()[ISSUER]["lastError"] == "discovery document names a different issuer"
    await manager.aclose()


async def test_plain_http_jwks_uri_is_refused() -> None:
    idp, clock = FakeIdP(jwks_uri="http://idp.test/jwks"), Clock()
    idp.add_key("k1")
    manager, _ = build(idp, clock)
    assert not await manager.refresh(ISSUER)
    assert "/jwks" not in idp.requests
    await manager.aclose()


async def test_an_https_issuer_cannot_send_the_broker_to_http_on_loopback() -> None:
    """Plain http is allowed for loopback issuers (dev, tests); from an https issuer's document
    it would be a blind request to the broker's own loopback."""
    idp, clock = FakeIdP(jwks_uri="http://127.0.0.1:9901/admin"), Clock()
    idp.add_key("k1")
    manager, _ = build(idp, clock)
    assert not await manager.refresh(ISSUER)
    assert idp.requests == ["/.well-known/openid-configuration"]
    await manager.aclose()


async def test_a_key_set_that_trickles_in_times_out_as_a_whole() -> None:
    """The timeout bounds the whole fetch, not each read: one byte at a time held a refresh,
    and every request waiting on an unknown kid, for as long as the IdP liked."""
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    body = json.dumps(idp.jwks()).encode()

    async def trickle() -> Any:
        for byte in body:
            await asyncio.sleep(0.05)
            yield bytes([byte])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks":
            return httpx.Response(200, content=trickle())
        return idp.handler(request)

    auth = AuthSettings(
        issuer=ISSUER, audience=(AUDIENCE,), algorithms=("RS256",), http_timeout_seconds=0.3
    )
    verifier, remote = setup_verifier(auth)
    manager = JwksManager(
        verifier, remote, auth, clock=clock, transport=httpx.MockTransport(handler)
    )
    assert not await manager.refresh(ISSUER)
    assert manager.status()[ISSUER]["lastError"] == "GET https://idp.test/jwks timed out"
    await manager.aclose()


async def test_a_key_set_of_junk_logs_a_few_problems_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    good = idp.jwks()["keys"]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks":
            return httpx.Response(200, json={"keys": good + [0] * 50_000})
        return idp.handler(request)

    verifier, remote = setup_verifier(AUTH)
    manager = JwksManager(
        verifier, remote, AUTH, clock=clock, transport=httpx.MockTransport(handler)
    )
    with caplog.at_level(logging.WARNING, logger="broker.jwks"):
        assert await manager.refresh(ISSUER)  # the good key comes first, and is used
    skipped = [r for r in caplog.records if "skipped a key" in r.getMessage()]
    assert len(skipped) == LOGGED_KEY_PROBLEMS
    assert any("more key problem(s) not logged" in r.getMessage() for r in caplog.records)
    await manager.aclose()


def test_fetchable_urls() -> None:
    assert is_fetchable("https://idp.example/jwks")
    assert is_fetchable("http://127.0.0.1:9/jwks")
    assert is_fetchable("http://localhost/jwks")
    assert is_fetchable("http://[::1]:8/jwks")
    assert not is_fetchable("http://idp.example/jwks")
    assert not is_fetchable("file:///etc/passwd")
    assert not is_fetchable("https:///nohost")


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 300),
        ("max-age=600", 600),
        ("public, max-age=10", 60),
        ("max-age=999999", 86400),
        ("no-store", 60),
        ("no-cache, max-age=900", 60),
        ("max-age=abc", 300),
    ],
)
def test_cache_control_within_bounds(header: str | None, ttl: float) -> None:
    assert cache_ttl_seconds(header, AUTH) == ttl


async def test_unknown_kid_refetches_once_then_accepts_new_key() -> None:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    manager, auth = build(idp, clock)
    await manager.refresh(ISSUER)
    idp.add_key("k2")  # rotated in at the IdP
    principal = await auth.authenticate(f"Bearer {idp.token('k2', clock.now)}")
    assert principal.subject == "alice"
    assert idp.jwks_fetches == 2
    await manager.aclose()


async def test_flood_of_random_kids_causes_at_most_one_fetch_per_interval() -> None:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    manager, auth = build(idp, clock)
    await manager.refresh(ISSUER)
    attacker = FakeIdP()
    attacker_key = attacker.add_key("a")
    forged = []
    for index in range(200):
        attacker.keys[f"forged-{index}"] = attacker_key
        forged.append(attacker.token(f"forged-{index}", clock.now))
    reasons = await asyncio.gather(*(reason(auth, token) for token in forged))
    assert set(reasons) == {"unknown_kid"}
    assert idp.jwks_fetches == 2  # the initial load and one refetch
    clock.now += 29
    assert await reason(auth, forged[-1]) == "unknown_kid"
    assert idp.jwks_fetches == 2
    clock.now += 2  # the interval (30 s) has passed
    assert await reason(auth, forged[-1]) == "unknown_kid"
    assert idp.jwks_fetches == 3
    await manager.aclose()


async def test_a_key_set_nested_too_deeply_is_a_failed_refresh_and_the_loop_goes_on() -> None:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    deep = False

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/jwks" and deep:
            return httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000)
        return idp.handler(request)

    verifier, remote = setup_verifier(AUTH)
    manager = JwksManager(
        verifier, remote, AUTH, clock=clock, transport=httpx.MockTransport(handler)
    )
    assert await manager.refresh(ISSUER)
    deep = True
    clock.now += 3600
    await manager.refresh_due()  # raised RecursionError, which ended the refresh loop
    assert manager.status()[ISSUER]["lastError"] == (
        "GET https://idp.test/jwks: JSON nested too deeply"
    )
    await manager.aclose()


async def test_idp_down_keeps_verifying_with_cached_keys() -> None:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    manager, auth = build(idp, clock)
    await manager.refresh(ISSUER)
    idp.down = True
    clock.now += 3600
    await manager.refresh_due()
    assert manager.status()[ISSUER]["lastError"] is not None
    token = idp.token("k1", clock.now)
    assert (await auth.authenticate(f"Bearer {token}")).subject == "alice"
    assert auth.ready
    await manager.aclose()


async def test_removed_key_stops_verifying_after_next_refresh_even_if_cached() -> None:
    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    idp.add_key("k2")
    manager, auth = build(idp, clock)
    await manager.refresh(ISSUER)
    old = idp.token("k1", clock.now)
    assert (await auth.authenticate(f"Bearer {old}")).subject == "alice"  # now cached
    del idp.keys["k1"]
    clock.now += 299
    await manager.refresh_due()  # not due yet: the key is still trusted
    assert (await auth.authenticate(f"Bearer {old}")).subject == "alice"
    clock.now += 2
    await manager.refresh_due()
    assert await reason(auth, old) == "unknown_kid"
    await manager.aclose()


async def test_static_jwks_file_never_fetches(tmp_path: object) -> None:
    import json
    from pathlib import Path

    idp, clock = FakeIdP(), Clock()
    idp.add_key("k1")
    path = Path(str(tmp_path)) / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    auth_settings = AuthSettings(
        issuer=ISSUER, audience=(AUDIENCE,), algorithms=("RS256",), jwks_file=str(path)
    )
    verifier, remote = setup_verifier(auth_settings)
    assert remote == ()
    auth = Authenticator(verifier, clock=clock)
    assert (await auth.authenticate(f"Bearer {idp.token('k1', clock.now)}")).subject == "alice"
    idp.add_key("k2")
    assert await reason(auth, idp.token("k2", clock.now)) == "unknown_kid"
    assert idp.requests == []
