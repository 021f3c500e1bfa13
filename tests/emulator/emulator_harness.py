"""Helpers shared by the emulator's tests: a fake clock, bearer headers, mint and introspect."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

API_KEY = "test-api-key"
API_KEY_HEADERS = {"Authorization": f"Bearer {API_KEY}"}
SIGNING_KEY = b"test-signing-key"
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
