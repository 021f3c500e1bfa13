"""Health, and the test controls: introspection, stats and reset."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from tests.emulator.emulator_harness import API_KEY_HEADERS, FakeClock, Minter, bearer, introspect


def test_health_ok(client: TestClient[Any]) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "timestamp": "2024-01-01T00:00:00.000Z"}


def test_root_token_without_policy_introspects_empty(client: TestClient[Any], mint: Minter) -> None:
    assert introspect(client, mint()) == {
        "policy": [],
        "expiresAt": "2024-01-01T01:00:00.000Z",
        "parents": [],
        "expired": False,
    }


def test_policy_introspects_exactly_as_minted(client: TestClient[Any], mint: Minter) -> None:
    policy = [
        {
            "namespaces": ["app"],
            "resources": "connections",
            "operations": ["read", "execute"],
            "metadata": [{"userId": "alice"}, {"team": "eng", "region": "eu"}],
            "ttl": 90,
            "rpcReqMatch": {"method": "^tools/call$", "params.name": "^search$"},
        },
        {"namespaces": "other", "ttl": "15m"},
    ]
    view = introspect(client, mint({"policy": policy}))
    assert view["policy"] == policy
    assert isinstance(view["policy"][0]["ttl"], int)
    assert view["expiresAt"] == "2024-01-01T00:01:30.000Z"


def test_expired_token_introspects_as_expired(
    client: TestClient[Any], clock: FakeClock, mint: Minter
) -> None:
    token = mint({"policy": [{"ttl": 60}]})
    clock.advance(60)
    view = introspect(client, token)
    assert view["expired"] is True
    assert view["expiresAt"] == "2024-01-01T00:01:00.000Z"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("not-a-token", id="garbage"),
        pytest.param("emu1.e30", id="two_parts"),
        pytest.param("emu1.e30.c2ln", id="wrong_signature"),
        pytest.param("emu1.é.x", id="non_ascii"),
    ],
)
def test_invalid_token_introspection_rejected(client: TestClient[Any], token: str) -> None:
    response = client.post("/_emulator/introspect", json={"token": token})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_token"


def test_tampered_token_introspection_rejected(client: TestClient[Any], mint: Minter) -> None:
    token = mint({"policy": [{"namespaces": "app"}]})
    prefix, payload, signature = token.split(".")
    tampered = f"{prefix}.{payload[:-1]}{'A' if payload[-1] != 'A' else 'B'}.{signature}"
    response = client.post("/_emulator/introspect", json={"token": tampered})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_token"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{}", id="missing_token"),
        pytest.param(b'{"token": 1}', id="token_not_string"),
        pytest.param(b'{"token": "x", "extra": 1}', id="unknown_field"),
    ],
)
def test_malformed_introspection_request_rejected(client: TestClient[Any], body: bytes) -> None:
    response = client.post("/_emulator/introspect", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_stats_count_since_start(client: TestClient[Any], mint: Minter) -> None:
    assert client.get("/_emulator/stats").json() == {
        "tokens_minted": 0,
        "tokens_rejected": 0,
        "connections": 0,
        "requests_unauthorized": 0,
        "requests_forbidden": 0,
        "mcp_allowed": 0,
        "mcp_denied": 0,
        "mcp_forwarded": 0,
        "received_tokens": 0,
        "received_mcp": 0,
        "received_connections": 0,
        "faults_applied": 0,
    }
    token = mint({"policy": [{"namespaces": "app", "operations": "read"}]})
    client.post("/tokens", json={})
    client.put("/connect/app/one", headers=API_KEY_HEADERS, json={"mcpUrl": "https://a.test/"})
    client.get("/connect/app/one", headers=bearer("wrong"))
    client.get("/connect/other", headers=bearer(token))
    assert client.get("/_emulator/stats").json() == {
        "tokens_minted": 1,
        "tokens_rejected": 1,
        "connections": 1,
        "requests_unauthorized": 1,
        "requests_forbidden": 1,
        "mcp_allowed": 0,
        "mcp_denied": 0,
        "mcp_forwarded": 0,
        "received_tokens": 2,
        "received_mcp": 0,
        "received_connections": 3,
        "faults_applied": 0,
    }


def test_reset_clears_stats_and_connections_but_not_tokens(
    client: TestClient[Any], mint: Minter
) -> None:
    token = mint()
    client.put("/connect/app/one", headers=API_KEY_HEADERS, json={"mcpUrl": "https://a.test/"})
    response = client.post("/_emulator/reset")
    assert response.status_code == 200
    stats = client.get("/_emulator/stats").json()
    assert stats["tokens_minted"] == 0
    assert stats["connections"] == 0
    assert client.get("/connect/app/one", headers=API_KEY_HEADERS).status_code == 404
    assert client.post("/tokens", headers=bearer(token), json={}).status_code == 200


def test_unknown_route_answers_smithery_error_shape(client: TestClient[Any]) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_wrong_method_answers_smithery_error_shape(client: TestClient[Any]) -> None:
    response = client.delete("/tokens")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
