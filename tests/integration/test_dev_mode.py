"""``broker dev`` as a newcomer runs it: one process, login, token, introspection."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.integration.conftest import BROKER, ROOT

pytestmark = pytest.mark.integration
BANNER_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Dev:
    popen: subprocess.Popen[str]
    broker: str
    upstream: str
    banner: str


def pump(popen: subprocess.Popen[str]) -> tuple[threading.Thread, queue.Queue[str]]:
    """A thread that forwards the process's stdout lines to a queue ("" at end of output)."""
    assert popen.stdout is not None
    stdout = popen.stdout
    lines: queue.Queue[str] = queue.Queue()

    def forward() -> None:
        for line in stdout:
            lines.put(line)
        lines.put("")

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    return thread, lines


def read_until(lines: queue.Queue[str], marker: str) -> str:
    """Read lines until the banner containing ``marker`` is complete (bounded, no polling)."""
    seen: list[str] = []
    deadline = time.monotonic() + BANNER_TIMEOUT_SECONDS
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if not line:
            break
        seen.append(line)
        if "Press Ctrl+C" in line and any(marker in s for s in seen):
            return "".join(seen)
    raise AssertionError(f"no {marker!r} in output: {''.join(seen)}")


@pytest.fixture(scope="module")
def dev() -> Iterator[Dev]:
    port, upstream_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    popen = subprocess.Popen(
        [BROKER, "dev", "--port", str(port), "--upstream-port", str(upstream_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    reader, lines = pump(popen)
    try:
        banner = read_until(lines, "is running")
        yield Dev(popen, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{upstream_port}", banner)
    finally:
        popen.send_signal(signal.SIGINT)
        popen.wait(timeout=20)
        reader.join(timeout=20)
        assert popen.stdout is not None
        popen.stdout.close()


def test_banner_prints_urls_and_commands(dev: Dev) -> None:
    assert dev.broker in dev.banner
    assert dev.upstream in dev.banner
    assert "/dev/login" in dev.banner


def test_dev_login_then_scoped_token(dev: Dev) -> None:
    with httpx.Client(timeout=30, trust_env=False) as http:
        login = http.post(f"{dev.broker}/dev/login", json={"sub": "alice", "email_verified": True})
        assert login.status_code == 200
        body = login.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        issued = http.post(
            f"{dev.broker}/v1/tokens", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert issued.status_code == 200, issued.text
        seen = http.post(
            f"{dev.upstream}/_emulator/introspect", json={"token": issued.json()["token"]}
        )
        assert seen.json()["policy"][0]["metadata"] == {"userId": "alice"}
        assert http.get(f"{dev.broker}/readyz").status_code == 200


def test_dev_login_rejects_bad_claims(dev: Dev) -> None:
    with httpx.Client(timeout=30, trust_env=False) as http:
        assert http.post(f"{dev.broker}/dev/login", json={}).status_code == 400
        reserved = http.post(f"{dev.broker}/dev/login", json={"sub": "a", "exp": 1})
        assert reserved.status_code == 400
        assert "exp" in reserved.json()["detail"]
        garbled = http.post(
            f"{dev.broker}/dev/login", content=b"{", headers={"content-type": "application/json"}
        )
        assert garbled.json()["code"] == "invalid_json"


def test_dev_emulator_accepts_dev_api_key(dev: Dev) -> None:
    with httpx.Client(timeout=30, trust_env=False) as http:
        minted = http.post(
            f"{dev.upstream}/tokens",
            headers={"Authorization": "Bearer dev-api-key"},
            json={"policy": [{"namespaces": "my-app"}]},
        )
        assert minted.status_code == 200


def test_dev_servers_keep_the_header_limit_of_serve(dev: Dev) -> None:
    """All three dev servers refuse oversized headers as `broker serve` does (431, problem)."""
    with httpx.Client(timeout=30, trust_env=False) as http:
        for url in (f"{dev.broker}/livez", f"{dev.upstream}/health"):
            response = http.get(url, headers={"X-Big": "a" * 100_000})
            assert response.status_code == 431, url
            assert response.json()["code"] == "headers_too_large"


def test_dev_servers_name_no_server_software(dev: Dev) -> None:
    """Like `broker serve`: no `Server: uvicorn` header on any of the three dev servers."""
    found = re.search(r"demo MCP server\s+(http://\S+)", dev.banner)
    assert found is not None, dev.banner
    with httpx.Client(timeout=30, trust_env=False) as http:
        for url in (f"{dev.broker}/livez", f"{dev.upstream}/health", found.group(1)):
            # (a POST without MCP's Accept header: a GET on /mcp would open an event stream)
            response = http.get(url) if "/mcp" not in url else http.post(url, json={})
            assert "date" in response.headers, url  # an answer of the server itself
            assert "server" not in response.headers, url
