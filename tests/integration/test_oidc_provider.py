"""The broker against a real identity provider: the npm package oidc-provider on loopback.

The IdP issues real RFC 9068 access tokens (client credentials, typ at+jwt) signed with RS256 and
ES256 keys; the broker discovers its JWKS through OIDC discovery. The broker runs in-process so
the test can move its clock and await its key refresh instead of sleeping; Smithery is the real
emulator behind an ASGI transport.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar.testing import AsyncTestClient

from broker.app import create_app
from broker.config import AuthSettings, PoliciesSettings, Secret, Settings, SmitherySettings
from broker.emulator import create_emulator_app
from tests.integration.conftest import ROOT, listening_socket, url_of

pytestmark = pytest.mark.integration
IDP_DIR = ROOT / "tests" / "idp"


def private_jwk(key: Any, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
        data.update(alg="RS256")
    else:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
        data.update(alg="ES256")
    data.update(kid=kid, use="sig")
    return data


@dataclass
class IdP:
    """The oidc-provider process; restartable with new keys on the same (held) socket."""

    sock: socket.socket
    tmp: Path
    issuer: str = ""
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.issuer = url_of(self.sock)

    def start(self, keys: list[dict[str, Any]]) -> None:
        self.generation += 1
        jwks_path = self.tmp / f"idp-jwks-{self.generation}.json"
        jwks_path.write_text(json.dumps({"keys": keys}))
        log = self.tmp / f"idp-{self.generation}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["node", str(IDP_DIR / "server.mjs")],
                env={
                    **os.environ,
                    "IDP_ISSUER": self.issuer,
                    "IDP_FD": str(self.sock.fileno()),
                    "IDP_JWKS": str(jwks_path),
                },
                pass_fds=(self.sock.fileno(),),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self.process = None

    def token(self, client: str, resource: str = "urn:token-broker") -> str:
        response = httpx.post(
            f"{self.issuer}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client,
                "client_secret": f"{client}-secret",
                "resource": resource,
                "scope": "broker",
            },
            timeout=30,
            trust_env=False,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[IdP]:
    provider = IdP(listening_socket(), tmp_path)
    provider.start(
        [
            private_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1"),
            private_jwk(ec.generate_private_key(ec.SECP256R1()), "ec-1"),
        ]
    )
    yield provider
    provider.stop()
    provider.sock.close()


@dataclass
class Clock:
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Broker:
    client: AsyncTestClient[Any]
    clock: Clock
    state: Any

    async def mint(self, token: str) -> httpx.Response:
        return await self.client.post("/v1/tokens", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
async def broker(idp: IdP) -> AsyncIterator[Broker]:
    clock = Clock()
    settings = Settings(
        policies=PoliciesSettings(dir=str(ROOT / "policies")),
        smithery=SmitherySettings(base_url="http://emulator", api_key=Secret("sk-oidc")),
        auth=AuthSettings(
            issuer=idp.issuer,
            audience=("token-broker",),
            algorithms=("RS256", "ES256"),
            typ="at+jwt",
            jwks_min_ttl_seconds=1,
            jwks_default_ttl_seconds=60,
        ),
    )
    app = create_app(
        settings,
        clock=clock,
        upstream_transport=httpx.ASGITransport(app=create_emulator_app(api_key="sk-oidc")),
    )
    async with AsyncTestClient(app) as client:
        yield Broker(client, clock, app.state.broker)


async def test_real_rs256_access_token_accepted(idp: IdP, broker: Broker) -> None:
    assert (await broker.client.get("/readyz")).status_code == 200
    response = await broker.mint(idp.token("alice"))
    assert response.status_code == 200, response.text
    assert response.json()["rules"] == ["own-connections"]


async def test_real_es256_access_token_accepted(idp: IdP, broker: Broker) -> None:
    token = idp.token("sam", "urn:token-broker:es")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    response = await broker.mint(token)
    assert response.status_code == 200, response.text
    assert response.json()["rules"] == [
        "own-connections",
        "support-github-session",
        "support-github-readonly",
    ]


async def test_real_token_for_another_audience_rejected(idp: IdP, broker: Broker) -> None:
    response = await broker.mint(idp.token("alice", "urn:other-api"))
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_user_without_matching_claims_is_403(idp: IdP, broker: Broker) -> None:
    response = await broker.mint(idp.token("mallory"))
    assert response.status_code == 403
    assert response.json()["code"] == "no_matching_rule"


async def test_key_rotation_new_kid_picked_up_removed_kid_rejected(
    idp: IdP, broker: Broker
) -> None:
    old_token = idp.token("alice")
    assert (await broker.mint(old_token)).status_code == 200
    idp.stop()
    idp.start(
        [private_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-2")]
    )
    new_token = idp.token("alice")
    assert jwt.get_unverified_header(new_token)["kid"] == "rsa-2"
    # Unknown kid → one refetch → the rotated-in key verifies.
    assert (await broker.mint(new_token)).status_code == 200
    # rsa-1 was removed at the IdP and the refetch already replaced the key set.
    assert (await broker.mint(old_token)).status_code == 401


async def test_removed_key_still_trusted_until_the_scheduled_refresh(
    idp: IdP, broker: Broker
) -> None:
    old_token = idp.token("alice")
    assert (await broker.mint(old_token)).status_code == 200
    idp.stop()
    idp.start(
        [private_jwk(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-3")]
    )
    assert (await broker.mint(old_token)).status_code == 200  # keys cached until refresh
    broker.clock.offset += 61  # past the key set's lifetime
    await broker.state.authenticator.keys.refresh_due()
    assert (await broker.mint(old_token)).status_code == 401


async def test_idp_stopped_cached_keys_still_verify(idp: IdP, broker: Broker) -> None:
    seen = idp.token("alice")
    unseen = idp.token("sam")  # never verified before the IdP goes away
    assert (await broker.mint(seen)).status_code == 200
    idp.stop()
    idp.sock.close()  # nothing listens any more: connection refused
    broker.clock.offset += 61
    await broker.state.authenticator.keys.refresh_due()
    status = broker.state.authenticator.keys.status()[idp.issuer]
    assert status["loaded"] is True
    assert status["lastError"] is not None
    assert (await broker.mint(seen)).status_code == 200
    assert (await broker.mint(unseen)).status_code == 200
    assert (await broker.client.get("/readyz")).status_code == 200
