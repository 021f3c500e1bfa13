"""Helpers shared by the emulator's tests: a fake clock, bearer headers, mint and introspect,
and JSON-RPC messages for the MCP endpoint."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import TestClient

API_KEY = "test-api-key"
API_KEY_HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SIGNING_KEY = b"test-signing-key"
NAMESPACES = ("app", "other")
"""The namespaces the tests' API key owns (``create_emulator_app(owned_namespaces=...)``)."""
START_EPOCH_SECONDS = 1_704_067_200.0  # 2024-01-01T00:00:00.000Z


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now_seconds: float = START_EPOCH_SECONDS) -> None:
        self.now_seconds = now_seconds

    def __call__(self) -> float:
        return self.now_seconds

    def advance(self, seconds: float) -> None:
        self.now_seconds += seconds


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Minter:
    """Mints through the HTTP API and fails the test loudly if the mint is refused."""

    def __init__(self, client: TestClient[Any]) -> None:
        self._client = client

    def __call__(self, body: dict[str, Any] | None = None, *, parent: str | None = None) -> str:
        headers = API_KEY_HEADERS if parent is None else bearer(parent)
        response = self._client.post("/tokens", headers=headers, json=body or {})
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        assert isinstance(token, str)
        return token


def introspect(client: TestClient[Any], token: str) -> dict[str, Any]:
    response = client.post("/_emulator/introspect", json={"token": token})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


# --- the MCP endpoint ---------------------------------------------------------------------------

FORBIDDEN_MESSAGE = "Forbidden: request not permitted by token policy"
MCP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-06-18",
}


def rpc(method: str, params: dict[str, Any] | None = None, *, request_id: Any = 1) -> bytes:
    """A JSON-RPC request (a notification when ``request_id`` is None), as bytes."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


def call_tool(tool: str, /, **arguments: Any) -> bytes:
    return rpc("tools/call", {"name": tool, "arguments": arguments})


def post_mcp(
    client: TestClient[Any],
    credential: str | None,
    body: bytes,
    *,
    connection_id: str = "alice",
    namespace: str = "app",
    headers: dict[str, str] | None = None,
) -> Any:
    """POST one message to ``/connect/{namespace}/{connection_id}/mcp`` as ``credential``."""
    sent = {**MCP_HEADERS, **(headers or {})}
    if credential is not None:
        sent.update(bearer(credential))
    return client.post(f"/connect/{namespace}/{connection_id}/mcp", content=body, headers=sent)


def forbidden_body(request_id: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": -32003, "message": FORBIDDEN_MESSAGE},
    }


def put_connection(
    client: TestClient[Any], connection_id: str, body: dict[str, Any], *, namespace: str = "app"
) -> None:
    response = client.put(
        f"/connect/{namespace}/{connection_id}", headers=API_KEY_HEADERS, json=body
    )
    assert response.status_code == 201, response.text
