"""The token endpoint end to end: real broker process → real emulator process."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.conftest import API_KEY, Keys, Process, listening_socket, url_of

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def mint(
    http: httpx.AsyncClient, broker: Process, jwt: str, body: Any = None
) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {jwt}"}}
    if body is not None:
        kwargs["json"] = body
    return await http.post(f"{broker.url}/v1/tokens", **kwargs)


async def introspect(http: httpx.AsyncClient, emulator: Process, token: str) -> dict[str, Any]:
    response = await http.post(f"{emulator.url}/_emulator/introspect", json={"token": token})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def stats(http: httpx.AsyncClient, emulator: Process) -> dict[str, Any]:
    result: dict[str, Any] = (await http.get(f"{emulator.url}/_emulator/stats")).json()
    return result


async def test_full_path_introspection_shows_exact_constraints(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    user = unique("alice")
    response = await mint(http, broker, keys.jwt(user, email_verified=True))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"token", "expiresAt", "rules", "policyRevision"}
    assert body["rules"] == ["own-connections"]
    assert body["expiresAt"].endswith("Z")
    seen = await introspect(http, fresh_emulator, body["token"])
    assert seen["policy"] == [
        {
            "namespaces": "my-app",
            "resources": "connections",
            "operations": ["read", "execute"],
            "metadata": {"userId": user},
            "ttl": 900,
        }
    ]
    assert seen["parents"] == []
    assert seen["expiresAt"] == body["expiresAt"]


async def test_cached_token_is_reused_without_a_second_mint(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    jwt = keys.jwt(unique("carol"), email_verified=True)
    first = (await mint(http, broker, jwt)).json()
    second = (await mint(http, broker, jwt)).json()
    assert first["token"] == second["token"]
    assert (await stats(http, fresh_emulator))["tokens_minted"] == 1


async def test_rules_narrow_never_widen(
    http: httpx.AsyncClient, broker: Process, emulator: Process, keys: Keys
) -> None:
    jwt = keys.jwt(unique("sam"), email_verified=True, groups=["support"])
    full = (await mint(http, broker, jwt)).json()
    assert full["rules"] == ["own-connections", "support-github-session", "support-github-readonly"]
    narrowed = await mint(http, broker, jwt, {"rules": ["support-github-readonly"]})
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["rules"] == ["support-github-readonly"]
    seen = await introspect(http, emulator, narrowed.json()["token"])
    assert len(seen["policy"]) == 1
    assert seen["policy"][0]["rpcReqMatch"]["params.name"] == "^(search_issues|get_issue)$"

    unknown = await mint(http, broker, jwt, {"rules": ["root-access"]})
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "unknown_rule"
    not_mine = await mint(http, broker, jwt, {"rules": ["workspace-connections"]})
    assert not_mine.status_code == 403
    assert not_mine.json()["code"] == "rule_not_applicable"


async def test_single_flight_200_concurrent_cold_requests_one_mint(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    jwt = keys.jwt(unique("burst"), email_verified=True)
    responses = await asyncio.gather(*(mint(http, broker, jwt) for _ in range(200)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["token"] for r in responses}) == 1
    assert (await stats(http, fresh_emulator))["tokens_minted"] == 1


async def test_fifty_users_get_fifty_tokens_each_naming_only_themselves(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    users = [unique(f"user{i}") for i in range(50)]
    jwts = {user: keys.jwt(user, email_verified=True) for user in users}
    requests = [(user, mint(http, broker, jwts[user])) for user in users for _ in range(4)]
    responses = await asyncio.gather(*(request for _, request in requests))
    assert (await stats(http, fresh_emulator))["tokens_minted"] == 50
    for (user, _), response in zip(requests, responses, strict=True):
        assert response.status_code == 200
        seen = await introspect(http, fresh_emulator, response.json()["token"])
        assert [c["metadata"] for c in seen["policy"]] == [{"userId": user}]


# --- bad input: a clear problem+json, never a 500 ----------------------------------------------


async def test_missing_bearer_is_401_with_challenge(
    http: httpx.AsyncClient, broker: Process
) -> None:
    response = await http.post(f"{broker.url}/v1/tokens")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_token"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
async def test_garbled_bearer_is_401(http: httpx.AsyncClient, broker: Process, token: str) -> None:
    response = await mint(http, broker, token)
    assert response.status_code == 401
    assert response.json()["detail"] == "The bearer token is missing or invalid."


async def test_expired_bearer_is_401_with_same_generic_body(
    http: httpx.AsyncClient, broker: Process, keys: Keys
) -> None:
    expired = keys.jwt("alice", lifetime=-120, email_verified=True)
    response = await mint(http, broker, expired)
    assert response.status_code == 401
    assert response.json()["detail"] == "The bearer token is missing or invalid."
    assert "expired" not in response.text


async def test_malformed_json_is_400(http: httpx.AsyncClient, broker: Process, keys: Keys) -> None:
    response = await http.post(
        f"{broker.url}/v1/tokens",
        content=b'{"rules": [',
        headers={
            "Authorization": f"Bearer {keys.jwt('alice', email_verified=True)}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"rules": "own-connections"}, "invalid_request"),
        ({"rules": []}, "invalid_request"),
        ({"scope": "all"}, "invalid_request"),
        ([1, 2], "invalid_request"),
    ],
)
async def test_schema_violations_are_400(
    http: httpx.AsyncClient, broker: Process, keys: Keys, body: Any, code: str
) -> None:
    response = await mint(http, broker, keys.jwt("alice", email_verified=True), body)
    assert response.status_code == 400
    assert response.json()["code"] == code


async def test_non_json_body_is_415(http: httpx.AsyncClient, broker: Process, keys: Keys) -> None:
    response = await http.post(
        f"{broker.url}/v1/tokens",
        content=b"rules=x",
        headers={
            "Authorization": f"Bearer {keys.jwt('alice', email_verified=True)}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


async def test_no_applicable_rule_is_403(
    http: httpx.AsyncClient, broker: Process, keys: Keys
) -> None:
    response = await mint(http, broker, keys.jwt(unique("mallory")))
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "no_matching_rule"
    assert "own-connections" not in response.text  # the token endpoint does not explain


async def test_unknown_route_and_method_are_problem_json(
    http: httpx.AsyncClient, broker: Process
) -> None:
    missing = await http.get(f"{broker.url}/v1/nothing")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    wrong = await http.get(f"{broker.url}/v1/tokens")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"


async def test_health_and_openapi(http: httpx.AsyncClient, broker: Process) -> None:
    assert (await http.get(f"{broker.url}/livez")).json() == {"status": "ok"}
    ready = await http.get(f"{broker.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    schema = await http.get(f"{broker.url}/schema/openapi.json")
    assert schema.status_code == 200
    assert "/v1/tokens" in schema.json()["paths"]
    assert "/dev/login" not in schema.json()["paths"]  # /dev/* exists only in dev mode
    assert (await http.post(f"{broker.url}/dev/login", json={"sub": "x"})).status_code == 404


# --- upstream failures ---------------------------------------------------------------------------


async def test_emulator_stopped_is_503_with_retry_after(
    http: httpx.AsyncClient, start_broker: Any, keys: Keys
) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = url_of(dead)
    dead.close()  # nothing listens there any more: connection refused
    broker = start_broker(dead_url)
    response = await mint(http, broker, keys.jwt("alice", email_verified=True))
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1


async def test_emulator_hanging_is_504(
    http: httpx.AsyncClient, start_broker: Any, keys: Keys
) -> None:
    hanging = listening_socket()  # accepts connections (kernel backlog) but never answers
    try:
        broker = start_broker(url_of(hanging), BROKER_SMITHERY_TIMEOUT_SECONDS="0.5")
        response = await mint(http, broker, keys.jwt("alice", email_verified=True))
        assert response.status_code == 504
        assert response.json()["code"] == "upstream_timeout"
    finally:
        hanging.close()


async def test_wrong_api_key_is_502_without_leaking_either_key(
    http: httpx.AsyncClient, start_broker: Any, emulator: Process, keys: Keys
) -> None:
    broker = start_broker(emulator.url, BROKER_SMITHERY_API_KEY="sk-wrong-KEY-0000")
    response = await mint(http, broker, keys.jwt("alice", email_verified=True))
    assert response.status_code == 502
    assert response.json()["code"] == "upstream_rejected"
    assert "sk-wrong-KEY-0000" not in response.text
    assert "Invalid API key" not in response.text  # Smithery's body is never relayed
    broker.stop()
    assert "error=unauthorized" in broker.output()
    assert "sk-wrong-KEY-0000" not in broker.output()


async def test_no_secret_in_broker_output(
    http: httpx.AsyncClient, broker: Process, keys: Keys
) -> None:
    jwt = keys.jwt(unique("audit"), email_verified=True)
    token = (await mint(http, broker, jwt)).json()["token"]
    await mint(http, broker, "garbage")
    output = broker.output()
    for secret in (API_KEY, jwt, token, *keys.issued):
        assert secret not in output
    assert '"event":"token.issued"' in output


async def test_broker_serve_closes_a_connection_whose_head_never_comes(
    start_broker: Any, emulator: Process
) -> None:
    """``broker serve`` (real process): a client that connects and sends nothing, or only part
    of a head, gets 408 and a closed connection (``BROKER_SERVER_HEAD_TIMEOUT_SECONDS``)."""
    broker = start_broker(emulator.url, BROKER_SERVER_HEAD_TIMEOUT_SECONDS="0.3")
    host, port = broker.url.removeprefix("http://").split(":")
    async with asyncio.timeout(20):
        for opening in (b"", b"POST /v1/tokens HTTP/1.1\r\nHost: broker\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(opening)
            answer = await reader.read()  # everything until the broker closes the connection
            writer.close()
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
            assert b'"code":"request_timeout"' in answer


async def test_oversized_headers_refused_with_431(http: httpx.AsyncClient, broker: Process) -> None:
    response = await http.post(
        f"{broker.url}/v1/tokens", headers={"Authorization": "Bearer x", "X-Padding": "p" * 40_000}
    )
    assert response.status_code == 431
    assert response.json()["code"] == "headers_too_large"
