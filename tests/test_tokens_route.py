"""``POST /v1/tokens`` answers through its own pre-encoded response: the same contract as
Litestar's (headers, body, errors), checked on the wire of the in-process app."""

from __future__ import annotations

import msgspec
import pytest

from broker.routes.responses import JsonBody, request_headers
from tests.inprocess import harness


def test_request_headers_reads_first_value_of_each_in_one_pass() -> None:
    scope = {
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer first"),
            (b"authorization", b"Bearer second"),
            (b"x-other", b"\xe9"),
        ]
    }
    assert request_headers(scope, b"authorization", b"content-length", b"x-other") == [  # type: ignore[arg-type]
        "Bearer first",  # like Litestar's Headers.get: the first of duplicated headers
        None,
        "\xe9",  # latin-1, as ASGI servers hand header bytes over
    ]


async def test_json_body_sends_status_headers_and_bytes() -> None:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        raise AssertionError("a response never reads the request")

    app = JsonBody(b'{"a":1}', ((b"cache-control", b"no-store"),), status=201)
    await app({"type": "http", "method": "POST"}, receive, send)  # type: ignore[arg-type]
    assert sent[0] == {
        "type": "http.response.start",
        "status": 201,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"7"),
            (b"cache-control", b"no-store"),
        ],
    }
    assert sent[1] == {"type": "http.response.body", "body": b'{"a":1}', "more_body": False}
    sent.clear()
    await app({"type": "http", "method": "HEAD"}, receive, send)  # type: ignore[arg-type]
    assert sent[1]["body"] == b""


async def test_token_response_headers_and_body() -> None:
    async with harness() as h:
        response = await h.client.post("/v1/tokens", headers=h.auth("alice", email_verified=True))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        assert int(response.headers["content-length"]) == len(response.content)
        body = msgspec.json.decode(response.content)
        assert set(body) == {"token", "expiresAt", "rules", "policyRevision"}
        assert body["rules"] == ["own-connections"]
        assert body["expiresAt"].endswith("Z")


@pytest.mark.parametrize(
    ("headers", "content", "status", "code"),
    [
        ({"Content-Type": "text/plain"}, b'{"rules":["own-connections"]}', 415, None),
        ({"Content-Type": "application/json"}, b"{", 400, "invalid_json"),
        ({"Content-Type": "application/json"}, b'{"rules":[]}', 400, "invalid_request"),
        ({"Content-Type": "application/json"}, b'{"rules":["nope"]}', 400, None),
    ],
)
async def test_token_request_body_errors_are_problems(
    headers: dict[str, str], content: bytes, status: int, code: str | None
) -> None:
    async with harness() as h:
        response = await h.client.post(
            "/v1/tokens",
            headers={**h.auth("alice", email_verified=True), **headers},
            content=content,
        )
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        if code is not None:
            assert response.json()["code"] == code


async def test_rules_narrow_the_token() -> None:
    async with harness() as h:
        response = await h.client.post(
            "/v1/tokens",
            headers={**h.auth("alice", email_verified=True, groups=["support"])},
            json={"rules": ["own-connections"]},
        )
        assert response.status_code == 200, response.text
        assert response.json()["rules"] == ["own-connections"]
