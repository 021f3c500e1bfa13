"""``POST /v1/mcp/{namespace}/{connectionId}`` in-process: what is forwarded, what is refused.

Smithery's token and connection endpoints are the real emulator; its MCP endpoint is replaced
here by a recorder, so each test can see exactly which bytes and headers reached it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.policy import load_policy_dir
from broker.telemetry import capture_audit
from tests.emulator.emulator_harness import FakeClock
from tests.inprocess import API_KEY, ROOT, Harness, harness

SUPPORT = {"groups": ["support"]}


def streamed(status: int, body: bytes, content_type: str = "application/json") -> httpx.Response:
    """A response whose body is still to be read, as from a real network transport."""

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    return httpx.Response(status, headers={"content-type": content_type}, content=chunks())


@dataclass
class RecordingMcp(httpx.AsyncBaseTransport):
    """Routes ``.../mcp`` to a recorder and everything else to the emulator."""

    emulator: httpx.AsyncBaseTransport
    seen: list[httpx.Request] = field(default_factory=list)
    answer: Any = None
    other: list[str] = field(default_factory=list)
    """Method and path of every other call to Smithery (connection reads, mints)."""
    on_read: Callable[[], None] | None = None
    """Runs as a connection is read from Smithery (the proxy awaiting it)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/mcp"):
            self.other.append(f"{request.method} {request.url.path}")
            if self.on_read is not None and request.method == "GET":
                self.on_read()
            return await self.emulator.handle_async_request(request)
        await request.aread()
        self.seen.append(request)
        if self.answer is not None:
            result: httpx.Response = self.answer(request)
            return result
        return streamed(200, b'{"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}')


@dataclass
class Proxy:
    broker: Harness
    mcp: RecordingMcp

    async def post(
        self, connection: str, body: bytes, *, sub: str = "sam", claims: Any = None, **headers: str
    ) -> httpx.Response:
        return await self.broker.client.post(
            f"/v1/mcp/my-app/{connection}",
            content=body,
            headers={
                **self.broker.auth(sub, **(claims or SUPPORT)),
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                **headers,
            },
        )


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    recorder: list[RecordingMcp] = []

    def upstream(app: Any) -> httpx.AsyncBaseTransport:
        recorder.append(RecordingMcp(httpx.ASGITransport(app=app)))
        return recorder[0]

    async with harness(upstream=upstream) as h:
        await h.create_connection(
            "my-app", "support-github", metadata={"connectionId": "support-github"}
        )
        await h.create_connection("my-app", "alice-github", metadata={"userId": "alice"})
        yield Proxy(h, recorder[0])


CALL_GET_ISSUE = b'{"jsonrpc":"2.0",  "id":1,"method":"tools/call","params":{"name":"get_issue"}}'


async def test_allowed_call_forwards_exact_bytes_with_service_token(proxy: Proxy) -> None:
    response = await proxy.post(
        "support-github",
        CALL_GET_ISSUE,
        **{"MCP-Protocol-Version": "2025-06-18", "X-Internal": "secret", "Cookie": "session=abc"},
    )
    assert response.status_code == 200
    assert response.json()["result"] == {"tools": []}
    assert response.headers["cache-control"] == "no-store"  # Smithery's answer named none
    [forwarded] = proxy.mcp.seen
    assert forwarded.url.path == "/connect/my-app/support-github/mcp"
    assert forwarded.content == CALL_GET_ISSUE
    assert forwarded.headers["mcp-protocol-version"] == "2025-06-18"
    assert forwarded.headers["accept"] == "application/json, text/event-stream"
    assert "x-internal" not in forwarded.headers
    assert "cookie" not in forwarded.headers
    service_token = forwarded.headers["authorization"].removeprefix("Bearer ")
    seen = await proxy.broker.emulator.post("/_emulator/introspect", json={"token": service_token})
    assert [c.get("metadata") for c in seen.json()["policy"]] == [
        {"connectionId": "support-github"},
        {"connectionId": "support-github"},
    ]


async def test_smithery_is_told_the_body_is_json_whatever_json_type_came_in(proxy: Proxy) -> None:
    response = await proxy.post(
        "support-github", CALL_GET_ISSUE, **{"Content-Type": "application/foo+json; charset=utf-8"}
    )
    assert response.status_code == 200
    [forwarded] = proxy.mcp.seen
    assert forwarded.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "headers",
    [
        {"MCP-Protocol-Version": "2025-06-18; drop"},
        {"MCP-Protocol-Version": "latest"},
        {"Accept": "application/json\x7f"},
    ],
)
async def test_odd_mcp_headers_are_400_and_not_forwarded(
    proxy: Proxy, headers: dict[str, str]
) -> None:
    response = await proxy.post("support-github", CALL_GET_ISSUE, **headers)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert proxy.mcp.seen == []


async def test_denied_request_is_jsonrpc_error_and_never_forwarded(proxy: Proxy) -> None:
    body = (
        b'{"jsonrpc":"2.0","id":"x-9","method":"tools/call","params":{"name":"delete_repository"}}'
    )
    response = await proxy.post("support-github", body)
    assert response.status_code == 200
    payload = response.json()
    assert payload["jsonrpc"] == "2.0"
    assert payload["id"] == "x-9"
    assert payload["error"]["code"] == -32003
    assert [r["reason"] for r in payload["error"]["data"]["reasons"]] == [
        "rpc_pattern_mismatch",
        "rpc_pattern_mismatch",
    ]
    assert proxy.mcp.seen == []
    assert response.headers["cache-control"] == "no-store"


async def test_denied_notification_is_403_problem(proxy: Proxy) -> None:
    response = await proxy.post("alice-github", b'{"jsonrpc":"2.0","method":"notifications/x"}')
    assert response.status_code == 403
    assert response.json()["code"] == "request_denied"
    assert response.json()["reasons"][0]["reason"] == "metadata"
    assert proxy.mcp.seen == []


async def test_event_stream_is_relayed(proxy: Proxy) -> None:
    events = [b'event: message\ndata: {"n": %d}\n\n' % n for n in range(3)]

    async def chunks() -> AsyncIterator[bytes]:
        for event in events:
            yield event

    proxy.mcp.answer = lambda _: httpx.Response(
        200,
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
        content=chunks(),
    )
    response = await proxy.post("support-github", CALL_GET_ISSUE)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers.get_list("cache-control") == ["no-cache"]  # Smithery's, as it is
    assert response.content == b"".join(events)


async def test_upstream_jsonrpc_errors_pass_through(proxy: Proxy) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32001, "message": "Authorization required"},
    }
    proxy.mcp.answer = lambda _: streamed(401, json.dumps(body).encode())
    response = await proxy.post("support-github", CALL_GET_ISSUE)
    assert response.status_code == 401
    assert response.json() == body


async def test_an_unknown_connection_is_denied_exactly_like_someone_elses(proxy: Proxy) -> None:
    """Which connection ids exist is not the caller's to learn: Smithery answers 404 for both
    to the caller's token. A different answer let any user probe others' ids (and the
    connections a user has are in them: alice-github)."""
    for _ in range(2):  # and the same again once both are cached
        theirs = await proxy.post("alice-github", CALL_GET_ISSUE)
        unknown = await proxy.post("nope", CALL_GET_ISSUE)
        assert theirs.status_code == unknown.status_code == 200
        assert theirs.json() == unknown.json()
        assert theirs.json()["error"]["code"] == -32003
        assert {r["reason"] for r in theirs.json()["error"]["data"]["reasons"]} == {"metadata"}
    assert proxy.mcp.seen == []
    reads = [call for call in proxy.mcp.other if call.startswith("GET /connect/")]
    assert reads == ["GET /connect/my-app/alice-github", "GET /connect/my-app/nope"]


async def test_what_one_caller_read_is_not_what_another_is_answered_from(proxy: Proxy) -> None:
    """Connection metadata is cached per caller. Shared, an id another user had just used
    answered from memory and an unused one waited for Smithery: the time told sam which of
    alice's connection ids were in use."""
    alice = {"email_verified": True}
    used = await proxy.post("alice-github", CALL_GET_ISSUE, sub="alice", claims=alice)
    assert used.status_code == 200
    assert "error" not in used.json()
    probe = await proxy.post("alice-github", CALL_GET_ISSUE)  # sam, of support
    assert probe.json()["error"]["code"] == -32003
    again = await proxy.post("alice-github", CALL_GET_ISSUE)  # sam's own read is cached
    assert again.json() == probe.json()
    reads = [call for call in proxy.mcp.other if call.startswith("GET /connect/")]
    assert reads == ["GET /connect/my-app/alice-github"] * 2  # alice's read, then sam's own


async def test_a_reload_during_a_call_neither_decides_nor_mints_it_twice(
    proxy: Proxy, tmp_path: Path
) -> None:
    """The set a call started with decides it and mints its token: a reload while the
    connection is read from Smithery (no rule for support in the new set) changes neither."""
    (tmp_path / "own.yaml").write_bytes((ROOT / "policies/per-user-connections.yaml").read_bytes())
    state = proxy.broker.state
    started = state.policy_set
    proxy.mcp.on_read = lambda: setattr(state, "policy_set", load_policy_dir(tmp_path))
    with capture_audit() as lines:
        response = await proxy.post("support-github", CALL_GET_ISSUE)
        await proxy.broker.settle()
    assert state.policy_set.revision != started.revision  # the reload happened mid-call
    assert response.status_code == 200
    assert response.json()["result"] == {"tools": []}
    records = [json.loads(line) for line in b"".join(lines).splitlines()]
    assert [(r["event"], r.get("revision")) for r in records] == [
        ("proxy.decision", None),
        ("token.minted", started.revision),
    ]
    assert records[0]["rule"].startswith("support-github")


async def test_no_connection_is_read_where_no_rule_of_the_caller_reaches(proxy: Proxy) -> None:
    response = await proxy.broker.client.post(
        "/v1/mcp/finance/payroll",
        content=CALL_GET_ISSUE,
        headers={**proxy.broker.auth("sam", **SUPPORT), "Content-Type": "application/json"},
    )
    assert response.json()["error"]["code"] == -32003
    assert {r["reason"] for r in response.json()["error"]["data"]["reasons"]} == {"namespace"}
    assert not [call for call in proxy.mcp.other if call.startswith("GET /connect/")]


async def test_a_connection_created_through_the_broker_is_read_afresh(proxy: Proxy) -> None:
    """A connection read as missing is cached like any other; creating it here forgets that."""
    alice = {"email_verified": True}
    before = await proxy.post("alice-new", CALL_GET_ISSUE, sub="alice", claims=alice)
    assert before.json()["error"]["code"] == -32003
    created = await proxy.broker.client.put(
        "/v1/connections/my-app/alice-new",
        json={"mcpUrl": "https://server.smithery.ai/github/mcp"},
        headers=proxy.broker.auth("alice", **alice),
    )
    assert created.status_code == 201, created.text
    after = await proxy.post("alice-new", CALL_GET_ISSUE, sub="alice", claims=alice)
    assert after.status_code == 200
    assert "error" not in after.json()


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
async def test_other_methods_are_405(proxy: Proxy, method: str) -> None:
    response = await proxy.broker.client.request(method, "/v1/mcp/my-app/support-github")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


@pytest.mark.parametrize("connection", ["..", "a..b", "-x", "a%2F..%2Ftokens", "x" * 129])
async def test_path_injection_refused(proxy: Proxy, connection: str) -> None:
    response = await proxy.post(connection, CALL_GET_ISSUE)
    assert response.status_code in (400, 404)
    assert proxy.mcp.seen == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', "batch_not_supported"),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue",'
            b'"name":"delete_repository"}}',
            "duplicate_key",
        ),
        (b'{"jsonrpc":"2.0","id":1}', "invalid_jsonrpc"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","foo":1}', "invalid_jsonrpc"),
        (b"not json", "invalid_json"),
        # A denial echoes the id: an unpaired surrogate there could not be encoded (it was a 500).
        (
            b'{"jsonrpc":"2.0","id":"\\ud800","method":"tools/call",'
            b'"params":{"name":"delete_repository"}}',
            "invalid_json",
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_issue",'
            b'"arguments":{"n":' + b"9" * 5000 + b"}}}",
            "invalid_json",
        ),
    ],
)
async def test_hostile_messages_are_400(proxy: Proxy, body: bytes, code: str) -> None:
    response = await proxy.post("support-github", body)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert proxy.mcp.seen == []


async def test_a_body_declared_in_another_charset_is_415_and_not_forwarded(proxy: Proxy) -> None:
    """The broker reads JSON as UTF-8; a parser upstream honouring ``charset=utf-16`` might not."""
    response = await proxy.post(
        "support-github", CALL_GET_ISSUE, **{"Content-Type": "application/json; charset=utf-16"}
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert proxy.mcp.seen == []


async def test_unauthenticated_is_401(proxy: Proxy) -> None:
    response = await proxy.broker.client.post(
        "/v1/mcp/my-app/support-github", content=CALL_GET_ISSUE
    )
    assert response.status_code == 401


async def test_upstream_down_is_503(proxy: Proxy) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    proxy.mcp.answer = refuse
    response = await proxy.post("support-github", CALL_GET_ISSUE)
    assert response.status_code == 503
    assert response.json()["code"] == "upstream_unavailable"


# The route is a plain ASGI handler under a mount (see broker/routes/proxy.py): what Litestar's
# route machinery gave for free must still hold.


async def test_options_names_the_allowed_methods(proxy: Proxy) -> None:
    response = await proxy.broker.client.options("/v1/mcp/my-app/support-github")
    assert response.status_code == 204
    assert response.headers["allow"] == "OPTIONS, POST"
    assert "content-length" not in response.headers
    assert response.content == b""


@pytest.mark.parametrize(
    "path", ["/v1/mcp", "/v1/mcp/", "/v1/mcp/my-app", "/v1/mcp/my-app/support-github/extra"]
)
async def test_other_path_shapes_are_404(proxy: Proxy, path: str) -> None:
    response = await proxy.broker.client.post(
        path, content=CALL_GET_ISSUE, headers=proxy.broker.auth("sam", **SUPPORT)
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert proxy.mcp.seen == []


async def test_trailing_slash_is_the_same_route(proxy: Proxy) -> None:
    response = await proxy.broker.client.post(
        "/v1/mcp/my-app/support-github/",
        content=CALL_GET_ISSUE,
        headers={**proxy.broker.auth("sam", **SUPPORT), "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert len(proxy.mcp.seen) == 1


async def test_problem_names_the_whole_path_and_metrics_the_template(proxy: Proxy) -> None:
    response = await proxy.broker.client.post(
        "/v1/mcp/my-app/support-github", content=CALL_GET_ISSUE
    )
    assert response.status_code == 401
    assert response.json()["instance"] == "/v1/mcp/my-app/support-github"
    metrics = (await proxy.broker.client.get("/metrics")).text
    assert (
        'broker_http_requests_total{route="/v1/mcp/{namespace}/{connectionId}",method="POST",'
        'status="401"} 1' in metrics
    )
    assert "support-github" not in metrics


async def test_openapi_documents_the_proxy(proxy: Proxy) -> None:
    document = (await proxy.broker.client.get("/schema/openapi.json")).json()
    operation = document["paths"]["/v1/mcp/{namespace}/{connection_id}"]["post"]
    assert operation["summary"].startswith("Guarded MCP endpoint")
    assert {p["name"] for p in operation["parameters"]} == {"namespace", "connection_id"}


@pytest.fixture
async def small_proxy() -> AsyncIterator[Proxy]:
    recorder: list[RecordingMcp] = []

    def upstream(app: Any) -> httpx.AsyncBaseTransport:
        recorder.append(RecordingMcp(httpx.ASGITransport(app=app)))
        return recorder[0]

    async with harness(
        upstream=upstream, max_body_bytes=len(CALL_GET_ISSUE), cors_origins=(APP_ORIGIN,)
    ) as h:
        await h.create_connection(
            "my-app", "support-github", metadata={"connectionId": "support-github"}
        )
        yield Proxy(h, recorder[0])


APP_ORIGIN = "https://app.example"


async def test_body_at_the_limit_is_forwarded(small_proxy: Proxy) -> None:
    response = await small_proxy.post("support-github", CALL_GET_ISSUE)
    assert response.status_code == 200
    assert small_proxy.mcp.seen[0].content == CALL_GET_ISSUE


async def test_declared_oversized_body_is_413(small_proxy: Proxy) -> None:
    response = await small_proxy.post("support-github", CALL_GET_ISSUE + b" ")
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert small_proxy.mcp.seen == []


async def test_cross_origin_calls_get_cors_headers(small_proxy: Proxy) -> None:
    preflight = await small_proxy.broker.client.options(
        "/v1/mcp/my-app/support-github",
        headers={
            "Origin": APP_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    response = await small_proxy.post("support-github", CALL_GET_ISSUE, Origin=APP_ORIGIN)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    foreign = await small_proxy.post(
        "support-github", CALL_GET_ISSUE, Origin="https://evil.example"
    )
    assert "access-control-allow-origin" not in foreign.headers


async def test_audit_records_each_call_and_only_the_mint_of_its_token(proxy: Proxy) -> None:
    with capture_audit() as lines:
        for _ in range(3):
            assert (await proxy.post("support-github", CALL_GET_ISSUE)).status_code == 200
        await proxy.broker.settle()
    records = [json.loads(line) for line in b"".join(lines).splitlines()]
    assert [r["event"] for r in records] == [
        "proxy.decision",
        "token.minted",
        "proxy.decision",
        "proxy.decision",
    ]
    assert {r["result"] for r in records if r["event"] == "proxy.decision"} == {"allow"}


async def support_call_to(connection_id: str, mcp_url: str) -> Any:
    """The support user's ``get_issue`` call through the proxy to a new connection to
    ``mcp_url`` whose metadata their rules allow."""
    async with harness() as h:
        await h.create_connection(
            "my-app", connection_id, mcpUrl=mcp_url, metadata={"connectionId": "support-github"}
        )
        return await h.client.post(
            f"/v1/mcp/my-app/{connection_id}",
            content=CALL_GET_ISSUE,
            headers={
                **h.auth("sam", **SUPPORT),
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
        )


async def test_smithery_authorization_required_reaches_the_mcp_client_as_is() -> None:
    """A connection waiting for the user's OAuth consent: the emulator's documented 401
    ``-32001`` with the setup page comes back through the proxy unchanged."""
    response = await support_call_to("support-oauth", "https://oauth.example.com/mcp")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == -32001
    assert error["data"] == {
        "authorizationUrl": "https://smithery.ai/connect/setup/my-app/support-oauth"
    }


async def test_smithery_input_required_reaches_the_mcp_client_as_is() -> None:
    """A connection waiting for the user's inputs: the emulator's documented 409 ``-32002``
    with ``data: {http, missing}`` comes back through the proxy unchanged."""
    response = await support_call_to("support-input", "https://input.example.com/mcp")
    assert response.status_code == 409
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {
            "code": -32002,
            "message": "Input required",
            "data": {
                "http": {
                    "headers": {"X-API-Key": {"label": "API key", "required": True}},
                    "query": {"workspace": {"label": "Workspace", "required": True}},
                },
                "missing": {"headers": ["X-API-Key"], "query": ["workspace"]},
            },
        },
    }


async def test_smithery_unauthorized_reaches_the_mcp_client_as_a_json_rpc_error() -> None:
    """Smithery refuses the service token (here: its clock is a day ahead, so the cached token
    has expired there): its 401 JSON-RPC error object comes back through the proxy unchanged."""
    smithery_clock = FakeClock(time.time())
    async with harness(emulator_options={"clock": smithery_clock}) as h:
        created = await h.emulator.put(
            "/connect/my-app/support-github",
            json={"transport": "uplink", "metadata": {"connectionId": "support-github"}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert created.status_code == 201
        headers = {
            **h.auth("sam", **SUPPORT),
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        # The first call mints and caches the token (no uplink client: Smithery answers 502).
        path = "/v1/mcp/my-app/support-github"
        assert (await h.client.post(path, content=CALL_GET_ISSUE, headers=headers)).status_code == (
            502
        )
        smithery_clock.advance(86_400)
        response = await h.client.post(path, content=CALL_GET_ISSUE, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32000, "message": "Invalid API key"},
    }


async def test_smithery_retry_after_is_passed_back() -> None:
    """A 429 or 503 from Smithery says when to come back; the browser client waits for it (it
    retried three times within 1.5 s of a 120 s Retry-After)."""
    async with harness() as h:
        await h.create_connection(
            "my-app", "support-busy", metadata={"connectionId": "support-github"}
        )
        fault = {"route": "mcp", "mode": "status", "status": 503, "retryAfter": 120}
        assert (await h.emulator.post("/_emulator/faults", json=fault)).status_code == 200
        response = await h.client.post(
            "/v1/mcp/my-app/support-busy",
            content=CALL_GET_ISSUE,
            headers={**h.auth("sam", **SUPPORT), "Content-Type": "application/json"},
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "120"
