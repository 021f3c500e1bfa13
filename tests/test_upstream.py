"""Upstream client: request shape and the translation of every Smithery answer (MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from broker.config import Secret, SmitherySettings
from broker.errors import (
    UpstreamProtocolError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from broker.upstream import SmitheryClient, parse_timestamp

API_KEY = "sk-test-SECRET-123"
POLICY = [{"namespaces": "my-app", "ttl": 900}]


def client(handler: Callable[[httpx.Request], httpx.Response]) -> SmitheryClient:
    settings = SmitherySettings(base_url="https://smithery.test/", api_key=Secret(API_KEY))
    return SmitheryClient(settings, transport=httpx.MockTransport(handler))


async def test_mint_sends_api_key_and_policy() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"token": "svc", "expiresAt": "2030-01-01T00:15:00.000Z"})

    minted = await client(handler).mint_token(POLICY)
    assert minted.token == "svc"
    assert minted.expires_at == parse_timestamp("2030-01-01T00:15:00Z")
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "https://smithery.test/tokens"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(request.content) == {"policy": POLICY}


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_smithery_refusal_is_upstream_rejected_without_body(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": "unauthorized", "message": f"Invalid API key {API_KEY}"}
    with pytest.raises(UpstreamRejectedError) as caught:
        await client(lambda _: httpx.Response(status, json=body)).mint_token(POLICY)
    assert caught.value.status == 502
    assert caught.value.code == "upstream_rejected"
    assert caught.value.upstream_code == "unauthorized"
    assert API_KEY not in str(caught.value)
    assert API_KEY not in caplog.text
    assert "error=unauthorized" in caplog.text


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(503, "7", 7), (500, None, 1), (429, "2", 2), (502, "soon", 1)],
)
async def test_overload_and_server_errors_are_unavailable_with_retry_after(
    status: int, retry_after: str | None, expected: int
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    with pytest.raises(UpstreamUnavailableError) as caught:
        await client(lambda _: httpx.Response(status, headers=headers)).mint_token(POLICY)
    assert caught.value.status == 503
    assert caught.value.retry_after_seconds == expected


async def test_timeout_is_504() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(UpstreamTimeoutError) as caught:
        await client(handler).mint_token(POLICY)
    assert caught.value.status == 504


async def test_connection_refused_is_503() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamUnavailableError):
        await client(handler).mint_token(POLICY)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"token": "x"}',
        b'{"token": "x", "expiresAt": "yesterday"}',
        b'{"token": "", "expiresAt": "2030-01-01T00:00:00Z"}',
        b'{"token": "x", "expiresAt": "2030-01-01T00:00:00"}',
    ],
)
async def test_malformed_success_body_is_502(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as caught:
        await client(lambda _: httpx.Response(200, content=body)).mint_token(POLICY)
    assert caught.value.status == 502


async def test_missing_api_key_never_calls_smithery() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200)

    upstream = SmitheryClient(
        SmitherySettings(base_url="https://smithery.test"), transport=httpx.MockTransport(handler)
    )
    assert not upstream.configured
    with pytest.raises(UpstreamUnavailableError):
        await upstream.mint_token(POLICY)
    assert calls == []
