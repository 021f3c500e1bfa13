"""``/connect/{ns}/{id}/mcp`` as an HTTP endpoint: errors, forwarding, streaming, counters.

The MCP server behind the connections is the recording stand-in (``mcp_target.py``), a real
server on loopback; the emulator runs in-process, except for the streaming test, where it runs
under uvicorn too so that nothing between the two can buffer.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app
from broker.emulator.state import EmulatorState
from tests.emulator.emulator_harness import (
    API_KEY,
    MCP_HEADERS,
    NAMESPACES,
    FakeClock,
    Minter,
    bearer,
    call_tool,
    forbidden_body,
    post_mcp,
    put_connection,
    rpc,
)
from tests.emulator.loopback import LoopbackServer, bind_loopback_socket
from tests.emulator.mcp_target import (
    JSON_ANSWER,
    SSE_FIRST,
    SSE_GATED,
    SSE_LAST,
    UNAUTHORIZED_ANSWER,
    McpTarget,
)

ALICE = {"userId": "alice"}
EXECUTE = {"namespaces": "app", "resources": "connections", "operations": "execute"}
LIST = rpc("tools/list")
READ_TIMEOUT_SECONDS = 10.0


@pytest.fixture
def alice(client: TestClient[Any], target_url: str) -> None:
    put_connection(client, "alice", {"mcpUrl": f"{target_url}/json", "metadata": ALICE})


def _stats(client: TestClient[Any]) -> dict[str, int]:
    body: dict[str, int] = client.get("/_emulator/stats").json()
    return body


def _rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


# --- 401 ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", "Basic dGVzdC1hcGkta2V5", "Bearer emu1.forged.token", "Bearer"],
    ids=["missing", "wrong-key", "other-scheme", "forged-token", "empty"],
)
def test_mcp_without_valid_bearer_unauthorized(
    client: TestClient[Any], target: McpTarget, authorization: str | None
) -> None:
    headers = dict(MCP_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    response = client.post("/connect/app/alice/mcp", content=LIST, headers=headers)
    assert response.status_code == 401
    # A JSON-RPC error object like the endpoint's others; -32000, never the OAuth -32001 (OPEN).
    assert response.json() == _rpc_error(None, -32000, "Invalid API key")
    assert target.received == []
    assert _stats(client)["requests_unauthorized"] == 1


@pytest.mark.usefixtures("alice")
def test_mcp_with_expired_token_unauthorized(
    client: TestClient[Any], mint: Minter, clock: FakeClock, target: McpTarget
) -> None:
    token = mint({"policy": [{**EXECUTE, "ttl": 60}]})
    clock.advance(60)
    assert post_mcp(client, token, LIST).status_code == 401
    assert target.received == []


def test_unauthenticated_before_body_checked(client: TestClient[Any]) -> None:
    assert post_mcp(client, None, b"{not json").status_code == 401


# --- 400 ----------------------------------------------------------------------------------------

PARSE_ERRORS = [
    pytest.param(b"{", id="truncated"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(b'{"jsonrpc":"2.0","method":"ping","id":1,"x":NaN}', id="nan"),
    pytest.param(b'{"jsonrpc":"2.0","method":"ping"} {}', id="trailing-data"),
]

INVALID_REQUESTS = [
    pytest.param(b"[]", id="empty-batch"),
    pytest.param(b'[{"jsonrpc":"2.0","method":"ping","id":1}]', id="batch"),
    pytest.param(b'"ping"', id="string"),
    pytest.param(b"null", id="null"),
    pytest.param(b'{"jsonrpc":"2.0","id":1}', id="no-method"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"result":{}}', id="response"),
    pytest.param(b'{"method":"ping","id":1}', id="no-version"),
    pytest.param(b'{"jsonrpc":"1.0","method":"ping","id":1}', id="wrong-version"),
    pytest.param(b'{"jsonrpc":2.0,"method":"ping","id":1}', id="version-number"),
    pytest.param(b'{"jsonrpc":"2.0","method":7,"id":1}', id="method-number"),
    pytest.param(b'{"jsonrpc":"2.0","method":"ping","id":null}', id="null-id"),
    pytest.param(b'{"jsonrpc":"2.0","method":"ping","id":true}', id="boolean-id"),
    pytest.param(b'{"jsonrpc":"2.0","method":"ping","id":{}}', id="object-id"),
    # OpenAPI JsonRpcRequest: additionalProperties false.
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}', id="request-and-result"),
    pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"ping","foo":1}', id="extra-member"),
    pytest.param(b'{"jsonrpc":"2.0","method":"notifications/x","error":{}}', id="notify-error"),
]


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("body", PARSE_ERRORS)
def test_mcp_body_not_json_rejected(
    client: TestClient[Any], target: McpTarget, body: bytes
) -> None:
    response = post_mcp(client, API_KEY, body)
    assert response.status_code == 400
    assert response.json() == _rpc_error(None, -32700, "Parse error")
    assert target.received == []


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("body", INVALID_REQUESTS)
def test_mcp_body_not_one_message_rejected(
    client: TestClient[Any], target: McpTarget, body: bytes
) -> None:
    response = post_mcp(client, API_KEY, body)
    assert response.status_code == 400
    assert response.json() == _rpc_error(None, -32600, "Invalid Request")
    assert target.received == []


# --- 403 and 404 --------------------------------------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize(
    ("body", "request_id"),
    [
        (rpc("tools/list", request_id="req-7"), "req-7"),
        (rpc("tools/list", request_id=7), 7),
        (rpc("tools/list", request_id=1.5), 1.5),
        (rpc("notifications/initialized", request_id=None), None),
    ],
    ids=["string-id", "number-id", "float-id", "notification"],
)
def test_forbidden_body_echoes_id(
    client: TestClient[Any], mint: Minter, body: bytes, request_id: Any
) -> None:
    token = mint({"policy": [{**EXECUTE, "rpcReqMatch": {"method": "^tools/call$"}}]})
    response = post_mcp(client, token, body)
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.json() == forbidden_body(request_id)


def test_unknown_connection_not_found(client: TestClient[Any], mint: Minter) -> None:
    for credential in (API_KEY, mint({"policy": [EXECUTE]})):
        response = post_mcp(client, credential, rpc("tools/list", request_id="a"))
        assert response.status_code == 404
        assert response.json() == _rpc_error("a", -32000, "Connection not found")


def test_unknown_connection_in_other_namespace_forbidden_not_probed(
    client: TestClient[Any], mint: Minter
) -> None:
    # A token that may not execute in the namespace at all learns nothing about its connections.
    token = mint({"policy": [{**EXECUTE, "namespaces": "other"}]})
    response = post_mcp(client, token, LIST, connection_id="no-such-connection")
    assert response.status_code == 403
    assert response.json() == forbidden_body(1)


@pytest.mark.usefixtures("alice")
def test_connection_in_other_namespace_not_found(client: TestClient[Any]) -> None:
    assert post_mcp(client, API_KEY, LIST, namespace="elsewhere").status_code == 404


# --- 405 ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("alice")
@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH"])
def test_session_methods_not_allowed(
    client: TestClient[Any], target: McpTarget, method: str
) -> None:
    headers = {**bearer(API_KEY), "Accept": "text/event-stream", "Mcp-Session-Id": "s-1"}
    response = client.request(method, "/connect/app/alice/mcp", headers=headers)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == _rpc_error(
        None, -32000, "Method not allowed: this endpoint is stateless"
    )
    assert target.received == []


# --- forwarding ---------------------------------------------------------------------------------


def test_forwards_exact_bytes_and_protocol_headers_only(
    client: TestClient[Any], mint: Minter, target: McpTarget, target_url: str
) -> None:
    put_connection(
        client,
        "alice",
        {
            "mcpUrl": f"{target_url}/json?tenant=a",
            "metadata": ALICE,
            "headers": {"X-Api-Key": "upstream-secret", "Mcp-Session-Id": "stored-session"},
        },
    )
    token = mint({"policy": [{**EXECUTE, "rpcReqMatch": {"params.name": "^search_issues$"}}]})
    # Odd spacing, escapes and key order: only byte equality proves nothing was re-encoded.
    body = (
        b'{ "params" : {"name":"search_issues","arguments":{"query":"caf\\u00e9 \xc3\xa9"}},'
        b'\n "method":"tools/call", "id":"x-1", "jsonrpc":"2.0" }'
    )
    headers = {
        "Mcp-Session-Id": "client-session",
        "MCP-Protocol-Version": "2025-03-26",
        "X-Custom": "client-only",
        "Cookie": "a=b",
    }
    response = post_mcp(client, token, body, headers=headers)

    assert response.status_code == 200, response.text
    assert response.content == JSON_ANSWER
    assert response.headers["content-type"] == "application/json"
    assert "mcp-session-id" not in response.headers
    assert "x-upstream" not in response.headers

    [received] = target.received
    assert received.method == "POST"
    assert received.path == "/json"
    assert received.body == body
    assert received.header("content-type") == "application/json"
    assert received.header("accept") == "application/json, text/event-stream"
    assert received.header("mcp-protocol-version") == "2025-03-26"
    assert received.header("x-api-key") == "upstream-secret"
    assert received.header("content-length") == str(len(body))
    for never in ("authorization", "mcp-session-id", "x-custom", "cookie"):
        assert never not in received.header_names
    assert token not in repr(received.headers)


@pytest.mark.usefixtures("alice")
def test_header_bytes_outside_ascii_are_relayed_not_a_500(
    client: TestClient[Any], target: McpTarget
) -> None:
    headers = {**bearer(API_KEY), "MCP-Protocol-Version": b"2025-06-18\xff"}
    response = client.post("/connect/app/alice/mcp", content=LIST, headers=headers)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    [received] = target.received
    # Litestar's test client sends the value UTF-8 encoded; those bytes are relayed as they came.
    sent = "2025-06-18\xff".encode()
    assert received.header("mcp-protocol-version") == sent.decode("latin-1")


@pytest.mark.usefixtures("alice")
def test_forwarding_omits_protocol_headers_the_client_omitted(
    client: TestClient[Any], target: McpTarget
) -> None:
    response = client.post("/connect/app/alice/mcp", content=LIST, headers=bearer(API_KEY))
    assert response.status_code == 200
    [received] = target.received
    assert received.header("mcp-protocol-version") is None
    assert received.header("content-type") is None
    assert received.header("accept") == "*/*"  # the test client's own default, relayed


def test_notification_accepted_passes_through(
    client: TestClient[Any], target: McpTarget, target_url: str
) -> None:
    put_connection(client, "alice", {"mcpUrl": f"{target_url}/accepted", "metadata": ALICE})
    body = rpc("notifications/initialized", request_id=None)
    response = post_mcp(client, API_KEY, body)
    assert response.status_code == 202
    assert response.content == b""
    assert [r.body for r in target.received] == [body]


def test_upstream_error_status_passes_through(
    client: TestClient[Any], target: McpTarget, target_url: str
) -> None:
    put_connection(client, "alice", {"mcpUrl": f"{target_url}/unauthorized", "metadata": ALICE})
    response = post_mcp(client, API_KEY, LIST)
    assert response.status_code == 401
    assert response.content == UNAUTHORIZED_ANSWER
    assert len(target.received) == 1


def test_unreachable_server_bad_gateway(client: TestClient[Any]) -> None:
    sock = bind_loopback_socket()
    closed_url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    sock.close()
    put_connection(client, "alice", {"mcpUrl": closed_url, "metadata": ALICE})
    response = post_mcp(client, API_KEY, rpc("tools/list", request_id="r"))
    assert response.status_code == 502
    body = response.json()
    assert body["id"] == "r"
    assert body["error"]["code"] == -32000
    assert body["error"]["message"].startswith("Bad gateway: the MCP server could not be reached")
    stats = _stats(client)
    assert (stats["mcp_allowed"], stats["mcp_forwarded"]) == (1, 0)


def test_connection_without_mcp_url_bad_gateway(client: TestClient[Any]) -> None:
    put_connection(client, "uplinked", {"transport": "uplink", "metadata": ALICE})
    response = post_mcp(client, API_KEY, LIST, connection_id="uplinked")
    assert response.status_code == 502
    assert response.json() == _rpc_error(1, -32000, "Bad gateway: the connection has no mcpUrl")


def test_event_stream_relayed_as_it_arrives(target: McpTarget, target_url: str) -> None:
    app = create_emulator_app(API_KEY, owned_namespaces=NAMESPACES)
    with (
        LoopbackServer(app) as emulator,
        httpx.Client(base_url=emulator.url, timeout=READ_TIMEOUT_SECONDS, trust_env=False) as http,
    ):
        response = http.put(
            "/connect/app/alice",
            headers=bearer(API_KEY),
            json={"mcpUrl": f"{target_url}/sse", "metadata": ALICE},
        )
        assert response.status_code == 201
        headers = {**MCP_HEADERS, **bearer(API_KEY)}
        with http.stream("POST", "/connect/app/alice/mcp", content=LIST, headers=headers) as sse:
            assert sse.status_code == 200
            assert sse.headers["content-type"] == "text/event-stream"
            chunks = sse.iter_raw()
            received = b""
            while SSE_FIRST not in received:
                received += next(chunks)
            # The stand-in sends the rest only once the first event got here: no buffering.
            target.gate.set()
            received += b"".join(chunks)
    assert received == SSE_FIRST + SSE_GATED + SSE_LAST


# --- counters and lifecycle ---------------------------------------------------------------------


@pytest.mark.usefixtures("alice")
def test_stats_count_mcp_decisions(client: TestClient[Any], mint: Minter) -> None:
    token = mint({"policy": [{**EXECUTE, "rpcReqMatch": {"method": "^tools/list$"}}]})
    assert post_mcp(client, token, LIST).status_code == 200
    assert post_mcp(client, token, call_tool("delete_repository")).status_code == 403
    assert post_mcp(client, API_KEY, LIST).status_code == 200
    assert post_mcp(client, None, LIST).status_code == 401
    stats = _stats(client)
    assert {k: v for k, v in stats.items() if k.startswith(("mcp_", "requests_"))} == {
        "mcp_allowed": 2,
        "mcp_denied": 1,
        "mcp_forwarded": 2,
        "requests_unauthorized": 1,
        "requests_forbidden": 1,
    }


def _state(app: Any) -> EmulatorState:
    state = app.dependencies["emulator"].dependency()
    assert isinstance(state, EmulatorState)
    return state


def _oracle_pid(state: EmulatorState) -> int | None:
    # A call, not an attribute: the pid changes behind the test's back (mypy would narrow it).
    return state.oracle.pid


def test_node_oracle_started_lazily_and_stopped_on_shutdown(target_url: str) -> None:
    app = create_emulator_app(API_KEY, owned_namespaces=NAMESPACES)
    state = _state(app)
    with TestClient(app) as client:
        put_connection(client, "alice", {"mcpUrl": f"{target_url}/json", "metadata": ALICE})
        token = Minter(client)({"policy": [{**EXECUTE, "rpcReqMatch": {"method": "^tools/"}}]})
        assert post_mcp(client, API_KEY, LIST).status_code == 200
        assert _oracle_pid(state) is None  # the API key needs no regex
        assert post_mcp(client, token, LIST).status_code == 200
        pid = _oracle_pid(state)
        assert pid is not None
        os.kill(pid, 0)  # running
    assert _oracle_pid(state) is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


def test_node_oracle_restarted_after_crash(client: TestClient[Any], target_url: str) -> None:
    put_connection(client, "alice", {"mcpUrl": f"{target_url}/json", "metadata": ALICE})
    token = Minter(client)({"policy": [{**EXECUTE, "rpcReqMatch": {"method": "^tools/"}}]})
    state = _state(client.app)
    assert post_mcp(client, token, LIST).status_code == 200
    first = _oracle_pid(state)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert post_mcp(client, token, LIST).status_code == 200
    assert _oracle_pid(state) not in (None, first)
