"""Fault injection against a real emulator served by uvicorn on a loopback port: ``latency``,
``reset`` and ``hang``, which only mean something on a real connection.

No test waits by sleeping. "Not answered yet" is shown by a client timeout that must expire;
"released" by an answer that arrives once the fault is cleared. A held request is registered
synchronously when it arrives, so a fault change sent after a client's timeout expired always
sees it (the server had the request for the whole timeout). ``RawClient`` keeps its connection
open across its own timeout, which httpx does not.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker.emulator import create_emulator_app
from broker.emulator.app import EmulatorApp
from tests.emulator.emulator_harness import (
    API_KEY,
    API_KEY_HEADERS,
    MCP_HEADERS,
    NAMESPACES,
    SIGNING_KEY,
    rpc,
)
from tests.emulator.loopback import LoopbackServer

pytestmark = pytest.mark.integration

SHORT_TIMEOUT_SECONDS = 0.3
"""How long a client waits to show that no answer came (the fault holds the request longer)."""
ANSWER_TIMEOUT_SECONDS = 10.0
"""How long a client waits for an answer that must come."""
CONNECTION_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
"""What an httpx client raises on a reset connection (ECONNRESET while reading or writing)."""


def emulator_app() -> EmulatorApp:
    return create_emulator_app(API_KEY, signing_key=SIGNING_KEY, owned_namespaces=NAMESPACES)


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Errors the servers log (uvicorn logs "Exception in ASGI application", unfinished
    responses and cancelled requests at ERROR); a test that ends with none shut down cleanly."""
    caplog.set_level(logging.WARNING)
    records: list[logging.LogRecord] = []
    yield records
    # ``caplog.records`` holds the current phase only: teardown, when the servers stop.
    for phase in (caplog.get_records("setup"), caplog.get_records("call"), caplog.records):
        records.extend(record for record in phase if record.levelno >= logging.ERROR)
    assert not records, [record.getMessage() for record in records]


@pytest.fixture
def server(server_errors: list[logging.LogRecord]) -> Iterator[LoopbackServer]:
    with LoopbackServer(emulator_app()) as running:
        yield running


@pytest.fixture
def http(server: LoopbackServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, timeout=ANSWER_TIMEOUT_SECONDS, trust_env=False
    ) as client:
        yield client


def set_fault(http: httpx.Client, **fault: Any) -> dict[str, Any]:
    response = http.post("/_emulator/faults", json=fault)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def stats(http: httpx.Client) -> dict[str, int]:
    body = http.get("/_emulator/stats").json()
    assert isinstance(body, dict)
    return body


def mint(url: str, *, timeout: float = ANSWER_TIMEOUT_SECONDS) -> httpx.Response:
    """One mint on a fresh connection (so a dropped one cannot affect the next request)."""
    with httpx.Client(base_url=url, timeout=timeout, trust_env=False) as client:
        return client.post("/tokens", headers=API_KEY_HEADERS, json={})


class RawClient:
    """One HTTP/1.1 request on a plain socket that stays open across read timeouts."""

    def __init__(self, port: int, method: str, path: str, body: bytes = b"") -> None:
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_SECONDS)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self._socket.sendall(head.encode() + body)

    def assert_no_answer_within(self, seconds: float) -> None:
        self._socket.settimeout(seconds)
        with pytest.raises(TimeoutError):
            self._socket.recv(1)

    def read_answer(self) -> tuple[int, bytes]:
        """Status and body of the answer (``Connection: close``: everything until EOF)."""
        self._socket.settimeout(ANSWER_TIMEOUT_SECONDS)
        received = b""
        while chunk := self._socket.recv(65536):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 "), received[:100]
        return int(head.split()[1]), body

    def assert_dropped(self) -> None:
        """The server closed the connection without a byte of answer (RST or EOF)."""
        self._socket.settimeout(ANSWER_TIMEOUT_SECONDS)
        try:
            data = self._socket.recv(1)
        except ConnectionResetError:
            return
        assert data == b""

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def raw_clients() -> Iterator[list[RawClient]]:
    clients: list[RawClient] = []
    yield clients
    for client in clients:
        client.close()


# --- latency --------------------------------------------------------------------------------------


def test_latency_delays_then_serves(server: LoopbackServer, http: httpx.Client) -> None:
    # 1 s against a 0.3 s client timeout: an answer before the delay would be a bug, not jitter.
    set_fault(http, route="tokens", mode="latency", seconds=1, count=2)
    with pytest.raises(httpx.ReadTimeout):
        mint(server.url, timeout=SHORT_TIMEOUT_SECONDS)
    response = mint(server.url)
    assert response.status_code == 200, response.text
    assert response.json()["token"]
    assert http.get("/_emulator/faults").json()["faults"] == []
    counted = stats(http)
    assert counted["received_tokens"] == 2
    assert counted["faults_applied"] == 2


def test_clearing_latency_releases_delayed_requests_early(
    server: LoopbackServer, http: httpx.Client, raw_clients: list[RawClient]
) -> None:
    # 600 s: only the release can answer within the client's 10 s.
    set_fault(http, route="tokens", mode="latency", seconds=600)
    raw = RawClient(server.port, "POST", "/tokens", b"{}")
    raw_clients.append(raw)
    raw.assert_no_answer_within(SHORT_TIMEOUT_SECONDS)
    assert set_fault(http, route="tokens", mode="none")["released"] == 1
    status, body = raw.read_answer()
    assert status == 200
    assert json.loads(body)["token"]


# --- reset ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"http": "httptools", "loop": "uvloop"}, id="httptools-uvloop"),
        pytest.param({"http": "httptools", "loop": "asyncio"}, id="httptools-asyncio"),
        pytest.param({"http": "h11", "loop": "asyncio"}, id="h11-asyncio"),
    ],
)
def test_reset_drops_the_connection_without_answer(
    server_errors: list[logging.LogRecord], config: dict[str, str]
) -> None:
    with (
        LoopbackServer(emulator_app(), **config) as running,
        httpx.Client(base_url=running.url, trust_env=False) as http,
    ):
        set_fault(http, route="tokens", mode="reset", count=1)
        with pytest.raises(CONNECTION_ERRORS):
            mint(running.url)
        # The fault cleared itself: the next request (a new connection) is served.
        assert mint(running.url).status_code == 200
        counted = stats(http)
        assert counted["received_tokens"] == 2
        assert counted["faults_applied"] == 1
        assert counted["tokens_minted"] == 1


def test_reset_until_cleared_on_every_route(server: LoopbackServer, http: httpx.Client) -> None:
    requests = {
        "tokens": ("POST", "/tokens", {"json": {}}),
        "connections": ("GET", "/connect/app", {}),
        "mcp": ("POST", "/connect/app/x/mcp", {"content": rpc("ping")}),
    }
    headers = {**MCP_HEADERS, **API_KEY_HEADERS}
    for route, (method, path, options) in requests.items():
        set_fault(http, route=route, mode="reset")
        for _ in range(2):
            with (
                httpx.Client(base_url=server.url, timeout=ANSWER_TIMEOUT_SECONDS) as client,
                pytest.raises(CONNECTION_ERRORS),
            ):
                client.request(method, path, headers=headers, **options)
        set_fault(http, route=route, mode="none")
        with httpx.Client(base_url=server.url, timeout=ANSWER_TIMEOUT_SECONDS) as client:
            answered = client.request(method, path, headers=headers, **options)
        assert answered.status_code in (200, 404), (route, answered.text)
    assert stats(http)["faults_applied"] == 6


# --- hang -----------------------------------------------------------------------------------------


def test_hang_holds_until_cleared_then_serves(
    server: LoopbackServer, http: httpx.Client, raw_clients: list[RawClient]
) -> None:
    set_fault(http, route="tokens", mode="hang")
    # A client with a short read timeout gives up; its connection closes, which ends its hold.
    with pytest.raises(httpx.ReadTimeout):
        mint(server.url, timeout=SHORT_TIMEOUT_SECONDS)
    # A client that stays connected stays held.
    raw = RawClient(server.port, "POST", "/tokens", b"{}")
    raw_clients.append(raw)
    raw.assert_no_answer_within(SHORT_TIMEOUT_SECONDS)
    assert http.get("/_emulator/faults").json()["held"] == {"tokens": 1, "mcp": 0, "connections": 0}

    cleared = set_fault(http, route="tokens", mode="none")
    assert cleared["released"] == 1
    assert cleared["faults"] == []
    status, body = raw.read_answer()
    assert status == 200
    assert json.loads(body)["token"]
    counted = stats(http)
    assert counted["received_tokens"] == 2
    assert counted["faults_applied"] == 2
    # Only the released request was served; the one whose client gave up never was.
    assert counted["tokens_minted"] == 1
    assert mint(server.url).status_code == 200
    # Leaving the fixture stops the server: nothing is left to wait for, nothing is logged.


def test_released_hung_request_keeps_its_body(
    server: LoopbackServer, http: httpx.Client, raw_clients: list[RawClient]
) -> None:
    """The hold reads the body to notice a disconnect; the handler still gets all of it."""
    set_fault(http, route="connections", mode="hang", count=1)
    body = json.dumps({"mcpUrl": "https://held.test/mcp", "metadata": {"userId": "alice"}})
    raw = RawClient(server.port, "PUT", "/connect/app/held", body.encode())
    raw_clients.append(raw)
    raw.assert_no_answer_within(SHORT_TIMEOUT_SECONDS)
    # The count is spent, but the request it hangs stays held until the reset releases it.
    assert http.get("/_emulator/faults").json() == {
        "faults": [],
        "held": {"tokens": 0, "mcp": 0, "connections": 1},
    }
    assert http.post("/_emulator/reset").status_code == 200
    status, answer = raw.read_answer()
    assert status == 201, answer
    assert json.loads(answer)["metadata"] == {"userId": "alice"}


def test_hang_whose_client_gave_up_does_not_block_shutdown(server_errors: Any) -> None:
    with LoopbackServer(emulator_app()) as running:
        with httpx.Client(base_url=running.url, trust_env=False) as http:
            set_fault(http, route="mcp", mode="hang")
        with (
            httpx.Client(base_url=running.url, timeout=SHORT_TIMEOUT_SECONDS) as client,
            pytest.raises(httpx.ReadTimeout),
        ):
            client.post("/connect/app/x/mcp", content=rpc("ping"), headers=API_KEY_HEADERS)
        # The fault is never cleared. Leaving stops the server: no request may still be running
        # (uvicorn would cancel it after 5 s and log an error, which ``server_errors`` reports).


def test_shutdown_drops_a_held_request_whose_client_waits(
    server_errors: Any, raw_clients: list[RawClient]
) -> None:
    """Servers that announce their shutdown to the faults (``run_emulator`` does) drop held
    requests at once instead of waiting for their clients."""
    app = emulator_app()
    with LoopbackServer(app, on_shutdown=app.faults.close) as running:
        with httpx.Client(base_url=running.url, trust_env=False) as http:
            set_fault(http, route="tokens", mode="hang")
        raw = RawClient(running.port, "POST", "/tokens", b"{}")
        raw_clients.append(raw)
        raw.assert_no_answer_within(SHORT_TIMEOUT_SECONDS)
    raw.assert_dropped()
