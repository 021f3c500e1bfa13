"""``POST /v1/precheck`` in-process: decisions with reasons, metadata from Smithery, hostile
input refused with 400s, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.inprocess import Harness, harness


@pytest.fixture
async def broker() -> AsyncIterator[Harness]:
    async with harness() as h:
        await h.create_connection("my-app", "alice-github", metadata={"userId": "alice"})
        await h.create_connection(
            "my-app", "support-github", metadata={"connectionId": "support-github"}
        )
        yield h


def call(tool: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {}},
    }


async def precheck(broker: Harness, body: Any, sub: str = "sam", **claims: Any) -> Any:
    claims.setdefault("groups", ["support"])
    return await broker.client.post("/v1/precheck", json=body, headers=broker.auth(sub, **claims))


async def test_support_read_tool_allowed(broker: Harness) -> None:
    response = await precheck(
        broker,
        {"namespace": "my-app", "connectionId": "support-github", "request": call("get_issue")},
    )
    assert response.status_code == 200
    assert response.json() == {"allowed": True, "rule": "support-github-readonly", "reasons": []}
    assert response.headers["cache-control"] == "no-store"


async def test_support_destructive_tool_denied_with_reasons(broker: Harness) -> None:
    response = await precheck(
        broker,
        {
            "namespace": "my-app",
            "connectionId": "support-github",
            "request": call("delete_repository"),
        },
    )
    body = response.json()
    assert response.status_code == 200
    assert body["allowed"] is False
    assert response.headers["cache-control"] == "no-store"
    assert body["rule"] is None
    assert body["reasons"] == [
        {
            "rule": "support-github-session",
            "reason": "rpc_pattern_mismatch",
            "detail": "method does not match "
            "^(initialize|notifications/initialized|ping|tools/list)$",
            "field": "method",
            "pattern": "^(initialize|notifications/initialized|ping|tools/list)$",
        },
        {
            "rule": "support-github-readonly",
            "reason": "rpc_pattern_mismatch",
            "detail": "params.name does not match ^(search_issues|get_issue)$",
            "field": "params.name",
            "pattern": "^(search_issues|get_issue)$",
        },
    ]


async def test_own_connection_allowed_other_users_denied(broker: Harness) -> None:
    body = {"namespace": "my-app", "connectionId": "alice-github", "request": call("anything")}
    alice = await broker.client.post(
        "/v1/precheck", json=body, headers=broker.auth("alice", email_verified=True)
    )
    assert alice.json()["allowed"] is True
    bob = await broker.client.post(
        "/v1/precheck", json=body, headers=broker.auth("bob", email_verified=True)
    )
    assert bob.json()["allowed"] is False
    assert [r["reason"] for r in bob.json()["reasons"]] == ["metadata"]


async def test_metadata_given_directly(broker: Harness) -> None:
    response = await precheck(
        broker,
        {"namespace": "my-app", "metadata": {"userId": "sam"}, "request": call("x")},
        email_verified=True,
    )
    assert response.json()["rule"] == "own-connections"


async def test_user_without_rules_gets_no_matching_rule_reason(broker: Harness) -> None:
    response = await precheck(broker, {"namespace": "my-app", "request": call("x")}, groups=[])
    assert response.json()["reasons"] == [
        {
            "rule": None,
            "reason": "no_matching_rule",
            "detail": "no policy rule applies to this user",
        }
    ]


async def test_an_unknown_connection_is_denied_exactly_like_someone_elses(
    broker: Harness,
) -> None:
    """As in the proxy: which connection ids exist is not the caller's to learn."""
    answers = []
    for connection in ("alice-github", "nope"):
        response = await precheck(
            broker, {"namespace": "my-app", "connectionId": connection, "request": call("x")}
        )
        assert response.status_code == 200
        answers.append(response.json())
    assert answers[0] == answers[1]
    assert answers[0]["allowed"] is False
    assert {r["reason"] for r in answers[0]["reasons"]} == {"metadata"}


async def test_unauthenticated_is_401(broker: Harness) -> None:
    response = await broker.client.post("/v1/precheck", json={"namespace": "a", "request": {}})
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (
            b'{"namespace": "my-app", "request": {"jsonrpc": "2.0", "id": 1, '
            b'"method": "tools/call", '
            b'"params": {"name": "get_issue", "name": "delete_repository"}}}',
            "duplicate_key",
        ),
        (
            b'{"namespace": "my-app", "request": [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]}',
            "batch_not_supported",
        ),
        (
            b'{"namespace": "my-app", "request": {"jsonrpc": "1.0", "id": 1, "method": "ping"}}',
            "invalid_jsonrpc",
        ),
        (
            b'{"namespace": "my-app", "request": {"jsonrpc": "2.0", "id": 1, "method": null}}',
            "invalid_jsonrpc",
        ),
        # Smithery refuses members outside JsonRpcRequest: never "allowed" here.
        (
            b'{"namespace": "my-app", "request": {"jsonrpc": "2.0", "id": 1, "method": "ping", '
            b'"result": {}}}',
            "invalid_jsonrpc",
        ),
        (
            b'{"namespace": "my-app", "request": ' + b'{"a":' * 80 + b"1" + b"}" * 80 + b"}",
            "too_deep",
        ),
        (
            b'{"namespace": "my-app", "request": {"jsonrpc": "2.0", "id": NaN, "method": "x"}}',
            "invalid_json",
        ),
        (b'{"namespace": "my-app"', "invalid_json"),
        (
            b'{"namespace": "my-app", "metadata": {"userId": "\\udbff"}, '
            b'"request": {"jsonrpc": "2.0", "id": 1, "method": "ping"}}',
            "invalid_json",
        ),
        (b'{"namespace": "../tokens", "request": {}}', "invalid_request"),
        # Python's ``$`` matches before a final newline: the name pattern must not.
        (b'{"namespace": "my-app\\n", "request": {}}', "invalid_request"),
        (
            b'{"namespace": "my-app", "connectionId": "support-github\\n", "request": {}}',
            "invalid_request",
        ),
        (b'{"namespace": "my-app", "request": {}, "extra": 1}', "invalid_request"),
        (
            b'{"namespace": "my-app", "connectionId": "a", "metadata": {}, "request": {}}',
            "invalid_request",
        ),
        (b'{"namespace": 5, "request": {}}', "invalid_request"),
    ],
)
async def test_hostile_bodies_are_400(broker: Harness, raw: bytes, code: str) -> None:
    response = await broker.client.post(
        "/v1/precheck",
        content=raw,
        headers={**broker.auth("sam", groups=["support"]), "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == code


async def test_oversized_body_is_413(broker: Harness) -> None:
    big = json.dumps(
        {
            "namespace": "my-app",
            "request": {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "x",
                "params": {"pad": "x" * (1024 * 1024)},
            },
        }
    ).encode()
    response = await broker.client.post(
        "/v1/precheck",
        content=big,
        headers={**broker.auth("sam"), "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_lifecycle_exemption_switch() -> None:
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
    body = {"namespace": "my-app", "metadata": {"connectionId": "support-github"}, "request": init}
    async with harness(exempt_lifecycle=True) as h:
        response = await h.client.post(
            "/v1/precheck", json=body, headers=h.auth("s", groups=["support"])
        )
        assert response.json()["allowed"] is True
        assert response.json()["rule"] == "support-github-session"
