"""Fault injection in process: the control endpoint, ``status`` faults, self-clearing, reset and
the counters. What needs a real connection (``latency``, ``reset``, ``hang``) is in
``test_emulator_faults_server.py``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from tests.emulator.emulator_harness import API_KEY_HEADERS, MCP_HEADERS, rpc

NO_HELD = {"tokens": 0, "mcp": 0, "connections": 0}


def set_fault(client: TestClient[Any], **fault: Any) -> dict[str, Any]:
    response = client.post("/_emulator/faults", json=fault)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def active_faults(client: TestClient[Any]) -> list[dict[str, Any]]:
    response = client.get("/_emulator/faults")
    assert response.status_code == 200, response.text
    faults = response.json()["faults"]
    assert isinstance(faults, list)
    return faults


def mint(client: TestClient[Any]) -> Any:
    return client.post("/tokens", headers=API_KEY_HEADERS, json={})


def list_connections(client: TestClient[Any]) -> Any:
    return client.get("/connect/app", headers=API_KEY_HEADERS)


def post_mcp(client: TestClient[Any]) -> Any:
    headers = {**MCP_HEADERS, **API_KEY_HEADERS}
    return client.post(
        "/connect/app/none/mcp", content=rpc("tools/list", request_id=7), headers=headers
    )


# --- the control endpoint -------------------------------------------------------------------------


def test_no_faults_at_start(client: TestClient[Any]) -> None:
    response = client.get("/_emulator/faults")
    assert response.status_code == 200
    assert response.json() == {"faults": [], "held": NO_HELD}


def test_set_fault_answers_active_faults(client: TestClient[Any]) -> None:
    body = set_fault(client, route="tokens", mode="status", retryAfter=1, count=2)
    assert body == {
        "faults": [
            {"route": "tokens", "mode": "status", "status": 503, "retryAfter": 1, "count": 2}
        ],
        "held": NO_HELD,
        "released": 0,
    }
    set_fault(client, route="mcp", mode="latency", seconds=2)
    set_fault(client, route="connections", mode="hang")
    assert active_faults(client) == [
        {"route": "tokens", "mode": "status", "status": 503, "retryAfter": 1, "count": 2},
        {"route": "mcp", "mode": "latency", "seconds": 2.0},
        {"route": "connections", "mode": "hang"},
    ]


def test_new_fault_replaces_the_routes_previous_one(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status", status=500)
    set_fault(client, route="tokens", mode="reset", count=3)
    assert active_faults(client) == [{"route": "tokens", "mode": "reset", "count": 3}]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="not_json"),
        pytest.param(b"[]", id="not_an_object"),
        pytest.param(b'{"mode": "none"}', id="no_route"),
        pytest.param(b'{"route": "tokens"}', id="no_mode"),
        pytest.param(b'{"route": "servers", "mode": "none"}', id="unknown_route"),
        pytest.param(b'{"route": "tokens", "mode": "slow"}', id="unknown_mode"),
        pytest.param(b'{"route": "tokens", "mode": "none", "extra": 1}', id="unknown_field"),
        pytest.param(b'{"route": "tokens", "mode": "status", "status": 200}', id="status_2xx"),
        pytest.param(b'{"route": "tokens", "mode": "status", "status": 600}', id="status_600"),
        pytest.param(b'{"route": "tokens", "mode": "status", "status": "503"}', id="status_text"),
        pytest.param(b'{"route": "tokens", "mode": "status", "status": null}', id="status_null"),
        pytest.param(b'{"route": "tokens", "mode": "status", "retryAfter": -1}', id="retry_neg"),
        pytest.param(b'{"route": "tokens", "mode": "status", "retryAfter": 1.5}', id="retry_frac"),
        pytest.param(b'{"route": "tokens", "mode": "latency"}', id="latency_no_seconds"),
        pytest.param(b'{"route": "tokens", "mode": "latency", "seconds": 0}', id="seconds_zero"),
        pytest.param(b'{"route": "tokens", "mode": "latency", "seconds": -1}', id="seconds_neg"),
        pytest.param(b'{"route": "tokens", "mode": "latency", "seconds": 3601}', id="seconds_big"),
        pytest.param(b'{"route": "tokens", "mode": "latency", "seconds": true}', id="seconds_bool"),
        pytest.param(b'{"route": "tokens", "mode": "hang", "count": 0}', id="count_zero"),
        pytest.param(b'{"route": "tokens", "mode": "hang", "count": 1.5}', id="count_frac"),
        pytest.param(b'{"route": "tokens", "mode": "hang", "count": true}', id="count_bool"),
        pytest.param(b'{"route": "tokens", "mode": "none", "count": 1}', id="none_with_count"),
        pytest.param(b'{"route": "tokens", "mode": "hang", "seconds": 1}', id="hang_seconds"),
        pytest.param(b'{"route": "tokens", "mode": "reset", "status": 503}', id="reset_status"),
        pytest.param(
            b'{"route": "tokens", "mode": "latency", "seconds": 1, "retryAfter": 1}',
            id="latency_retry_after",
        ),
    ],
)
def test_invalid_fault_rejected(client: TestClient[Any], body: bytes) -> None:
    response = client.post("/_emulator/faults", content=body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "invalid_request"
    assert isinstance(answer["message"], str)
    assert answer["message"]
    assert active_faults(client) == []


def test_wrong_field_names_the_field(client: TestClient[Any]) -> None:
    response = client.post("/_emulator/faults", json={"route": "mcp", "mode": "hang", "seconds": 1})
    assert response.status_code == 400
    assert "`seconds`" in response.json()["message"]


# --- status faults --------------------------------------------------------------------------------


def test_status_fault_on_tokens_answers_error_shape(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status")
    response = mint(client)
    assert response.status_code == 503
    assert response.json() == {
        "error": "service_unavailable",
        "message": "Service Unavailable (injected fault)",
    }
    assert "retry-after" not in response.headers


def test_status_fault_with_retry_after(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status", status=429, retryAfter=7)
    response = mint(client)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["error"] == "too_many_requests"


def test_status_fault_on_connections_answers_error_shape(client: TestClient[Any]) -> None:
    set_fault(client, route="connections", mode="status", status=502, retryAfter=0)
    for response in (
        list_connections(client),
        client.get("/connect/app/one", headers=API_KEY_HEADERS),
        client.put("/connect/app/one", headers=API_KEY_HEADERS, json={"mcpUrl": "https://a/"}),
        client.delete("/connect/app/one", headers=API_KEY_HEADERS),
    ):
        assert response.status_code == 502
        assert response.headers["retry-after"] == "0"
        assert response.json() == {
            "error": "bad_gateway",
            "message": "Bad Gateway (injected fault)",
        }


def test_status_fault_on_mcp_answers_json_rpc_error(client: TestClient[Any]) -> None:
    set_fault(client, route="mcp", mode="status", retryAfter=3)
    response = post_mcp(client)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    # Answered before the message is read: no id to echo.
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32000, "message": "Service Unavailable (injected fault)"},
    }


def test_status_fault_without_a_standard_phrase(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status", status=520)
    response = mint(client)
    assert response.status_code == 520
    assert response.json() == {"error": "http_error", "message": "HTTP 520 (injected fault)"}


def test_fault_applies_to_its_route_only(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status")
    assert list_connections(client).status_code == 200
    assert post_mcp(client).status_code == 404  # reached the endpoint: no such connection
    set_fault(client, route="mcp", mode="status")
    set_fault(client, route="connections", mode="status")
    assert client.get("/health").status_code == 200
    assert client.get("/_emulator/stats").status_code == 200
    token_path_other_method = client.get("/tokens")
    assert token_path_other_method.status_code == 405


def test_status_fault_leaves_mint_counters_alone(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status", count=1)
    assert mint(client).status_code == 503
    stats = client.get("/_emulator/stats").json()
    assert stats["tokens_minted"] == 0
    assert stats["tokens_rejected"] == 0


# --- clearing -------------------------------------------------------------------------------------


def test_count_clears_the_fault_itself(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status", count=2)
    assert mint(client).status_code == 503
    assert active_faults(client) == [
        {"route": "tokens", "mode": "status", "status": 503, "count": 1}
    ]
    assert mint(client).status_code == 503
    assert active_faults(client) == []
    assert mint(client).status_code == 200


def test_count_counts_only_its_route(client: TestClient[Any]) -> None:
    set_fault(client, route="mcp", mode="status", count=1)
    assert mint(client).status_code == 200
    assert list_connections(client).status_code == 200
    assert post_mcp(client).status_code == 503
    assert post_mcp(client).status_code == 404


def test_mode_none_clears_the_fault(client: TestClient[Any]) -> None:
    set_fault(client, route="tokens", mode="status")
    set_fault(client, route="connections", mode="status")
    assert mint(client).status_code == 503
    body = set_fault(client, route="tokens", mode="none")
    assert body["faults"] == [{"route": "connections", "mode": "status", "status": 503}]
    assert mint(client).status_code == 200
    assert list_connections(client).status_code == 503


def test_clearing_a_route_without_fault_is_harmless(client: TestClient[Any]) -> None:
    assert set_fault(client, route="mcp", mode="none") == {
        "faults": [],
        "held": NO_HELD,
        "released": 0,
    }


def test_reset_clears_every_fault(client: TestClient[Any]) -> None:
    for route in ("tokens", "mcp", "connections"):
        set_fault(client, route=route, mode="status")
    assert client.post("/_emulator/reset").status_code == 200
    assert active_faults(client) == []
    assert mint(client).status_code == 200
    assert list_connections(client).status_code == 200
    assert post_mcp(client).status_code == 404


# --- counters -------------------------------------------------------------------------------------


def counters(client: TestClient[Any]) -> dict[str, int]:
    stats = client.get("/_emulator/stats").json()
    return {
        key: stats[key]
        for key in ("received_tokens", "received_mcp", "received_connections", "faults_applied")
    }


def test_stats_count_requests_per_route_and_faults_applied(client: TestClient[Any]) -> None:
    assert counters(client) == {
        "received_tokens": 0,
        "received_mcp": 0,
        "received_connections": 0,
        "faults_applied": 0,
    }
    set_fault(client, route="tokens", mode="status", count=1)
    mint(client)  # faulted
    mint(client)
    client.post("/tokens", json={})  # unauthorized still reached the route
    list_connections(client)
    client.put("/connect/app/one", headers=API_KEY_HEADERS, json={"mcpUrl": "https://a.test/"})
    set_fault(client, route="mcp", mode="status")
    post_mcp(client)
    post_mcp(client)
    client.get("/health")
    client.get("/_emulator/faults")
    client.get("/tokens")  # 405: never reached the route
    assert counters(client) == {
        "received_tokens": 3,
        "received_mcp": 2,
        "received_connections": 2,
        "faults_applied": 3,
    }
    client.post("/_emulator/reset")
    assert counters(client) == {
        "received_tokens": 0,
        "received_mcp": 0,
        "received_connections": 0,
        "faults_applied": 0,
    }


# --- reset without a connection -------------------------------------------------------------------


def test_reset_fault_in_process_raises_connection_error(client: TestClient[Any]) -> None:
    """No socket to drop in process: the client sees the error a reset connection raises."""
    set_fault(client, route="tokens", mode="reset", count=1)
    with pytest.raises(httpx.ReadError):
        mint(client)
    assert mint(client).status_code == 200
    assert counters(client)["faults_applied"] == 1
