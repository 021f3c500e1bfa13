"""Created connections carry a realistic OpenAPI ``ConnectionStatus``."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app

API_KEY = "sk-status-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def create(client: TestClient[Any], connection_id: str, url: str) -> dict[str, Any]:
    response = client.put(f"/connect/ns/{connection_id}", json={"mcpUrl": url}, headers=AUTH)
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize(
    ("url", "state"),
    [
        ("https://tools.example.com/mcp", "connected"),
        ("https://oauth.example.com/mcp", "auth_required"),
        ("https://api.oauth-provider.test/mcp", "auth_required"),
    ],
)
def test_default_status_follows_target(url: str, state: str) -> None:
    with TestClient(create_emulator_app(API_KEY)) as client:
        status = create(client, "c1", url)["status"]
        assert status["state"] == state
        if state == "auth_required":
            assert status == {
                "state": "auth_required",
                "setupUrl": "https://smithery.ai/connect/setup/ns/c1",
            }
        else:
            assert status == {"state": "connected"}
        # The same status is read back and listed.
        assert client.get("/connect/ns/c1", headers=AUTH).json()["status"] == status
        listed = client.get("/connect/ns", headers=AUTH).json()["connections"]
        assert listed[0]["status"] == status


def test_configured_oauth_hosts() -> None:
    app = create_emulator_app(API_KEY, oauth_hosts=("login.example",))
    with TestClient(app) as client:
        assert create(client, "a", "https://login.example/mcp")["status"]["state"] == (
            "auth_required"
        )
        assert create(client, "b", "https://oauth.example.com/mcp")["status"] == {
            "state": "connected"
        }


def test_a_connection_awaiting_oauth_answers_authorization_required() -> None:
    """SMITHERY-SEMANTICS.md, "The MCP endpoint": 401 ``-32001`` (``AuthRequiredError``, with
    ``data.authorizationUrl``) until the user completes the server's OAuth consent."""
    with TestClient(create_emulator_app(API_KEY)) as client:
        setup = create(client, "c1", "https://oauth.example.com/mcp")["status"]["setupUrl"]
        response = client.post(
            "/connect/ns/c1/mcp",
            content=b'{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}',
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert response.status_code == 401
        assert response.json() == {
            "jsonrpc": "2.0",
            "id": 7,
            "error": {
                "code": -32001,
                "message": "Authorization required",
                "data": {"authorizationUrl": setup},
            },
        }
