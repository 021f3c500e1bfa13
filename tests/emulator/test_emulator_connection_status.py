"""Created connections carry a realistic OpenAPI ``ConnectionStatus``."""

from __future__ import annotations

from typing import Any

import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app

API_KEY = "sk-status-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
NAMESPACES = ("ns",)


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
    with TestClient(create_emulator_app(API_KEY, owned_namespaces=NAMESPACES)) as client:
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
    app = create_emulator_app(API_KEY, owned_namespaces=NAMESPACES, oauth_hosts=("login.example",))
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
    with TestClient(create_emulator_app(API_KEY, owned_namespaces=NAMESPACES)) as client:
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


# --- input_required -----------------------------------------------------------------------------

INPUT_URL = "https://input.example.com/mcp"
INPUT_PROFILE = {
    "headers": {"X-API-Key": {"label": "API key", "required": True}},
    "query": {"workspace": {"label": "Workspace", "required": True}},
}


def put(client: TestClient[Any], connection_id: str, body: dict[str, Any]) -> Any:
    return client.put(f"/connect/ns/{connection_id}", json=body, headers=AUTH)


def test_input_required_until_the_inputs_are_given() -> None:
    """OpenAPI ``ConnectionStatusInputRequired``; the PUT 409 rule's exception: while
    ``input_required``, a new URL with the same host and path is taken (the status is
    recomputed), and headers may be added; once connected, the URL is fixed again."""
    with TestClient(create_emulator_app(API_KEY, owned_namespaces=NAMESPACES)) as client:
        assert create(client, "c1", INPUT_URL)["status"] == {
            "state": "input_required",
            "setupUrl": "https://smithery.ai/connect/setup/ns/c1",
            "http": INPUT_PROFILE,
            "missing": {"headers": ["X-API-Key"], "query": ["workspace"]},
        }
        with_query = put(client, "c1", {"mcpUrl": f"{INPUT_URL}?workspace=w1"})
        assert with_query.status_code == 200, with_query.text
        assert with_query.json()["mcpUrl"] == f"{INPUT_URL}?workspace=w1"
        assert with_query.json()["status"]["missing"] == {"headers": ["X-API-Key"], "query": []}
        with_header = put(client, "c1", {"headers": {"x-api-key": "k"}})
        assert with_header.json()["status"] == {"state": "connected"}
        assert client.get("/connect/ns/c1", headers=AUTH).json()["status"] == {"state": "connected"}
        assert put(client, "c1", {"mcpUrl": f"{INPUT_URL}?workspace=w2"}).status_code == 409


@pytest.mark.parametrize(
    "url",
    [
        "https://input.example.com/other?workspace=w",
        "https://elsewhere.example/mcp?workspace=w",
        "http://input.example.com/mcp?workspace=w",
        "https://input.example.com:8443/mcp?workspace=w",
        "https://user@input.example.com/mcp?workspace=w",
    ],
)
def test_input_required_url_change_must_keep_host_and_path(url: str) -> None:
    with TestClient(create_emulator_app(API_KEY, owned_namespaces=NAMESPACES)) as client:
        create(client, "c1", INPUT_URL)
        response = put(client, "c1", {"mcpUrl": url})
        assert response.status_code == 409
        assert client.get("/connect/ns/c1", headers=AUTH).json()["mcpUrl"] == INPUT_URL


def test_configured_input_hosts() -> None:
    app = create_emulator_app(API_KEY, owned_namespaces=NAMESPACES, input_hosts=("setup.example",))
    with TestClient(app) as client:
        assert create(client, "a", "https://setup.example/mcp")["status"]["state"] == (
            "input_required"
        )
        assert create(client, "b", INPUT_URL)["status"] == {"state": "connected"}
        given = client.put(
            "/connect/ns/c",
            json={"mcpUrl": "https://setup.example/mcp?workspace=w", "headers": {"X-API-Key": "k"}},
            headers=AUTH,
        )
        assert given.json()["status"] == {"state": "connected"}


def test_a_connection_awaiting_input_answers_input_required() -> None:
    """SMITHERY-SEMANTICS.md, "The MCP endpoint": 409 ``-32002 Input required``, with
    ``data: {http, missing}`` (OpenAPI ``InputRequiredError``)."""
    with TestClient(create_emulator_app(API_KEY, owned_namespaces=NAMESPACES)) as client:
        create(client, "c1", INPUT_URL)
        response = client.post(
            "/connect/ns/c1/mcp",
            content=b'{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}',
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert response.status_code == 409
        assert response.json() == {
            "jsonrpc": "2.0",
            "id": 7,
            "error": {
                "code": -32002,
                "message": "Input required",
                "data": {
                    "http": INPUT_PROFILE,
                    "missing": {"headers": ["X-API-Key"], "query": ["workspace"]},
                },
            },
        }
