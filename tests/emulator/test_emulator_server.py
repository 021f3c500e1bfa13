"""The real emulator: ``run_emulator`` under uvicorn in a subprocess, spoken to over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.emulator.emulator_harness import NAMESPACES, call_tool, rpc
from tests.emulator.mcp_target import McpTarget

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "integration-api-key"
STARTUP_TIMEOUT_SECONDS = 20.0
POLL_INTERVAL_SECONDS = 0.05
SHUTDOWN_TIMEOUT_SECONDS = 10.0


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert isinstance(port, int)
        return port


def _wait_until_healthy(process: subprocess.Popen[bytes], base_url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"emulator exited early with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(POLL_INTERVAL_SECONDS)
    pytest.fail(f"emulator not healthy within {STARTUP_TIMEOUT_SECONDS} s")


def _serve_emulator(arguments: str) -> Iterator[str]:
    """``run_emulator`` in a subprocess; yields its URL, then checks it stopped cleanly."""
    port = _free_loopback_port()
    code = (
        f"from broker.emulator import run_emulator; run_emulator('127.0.0.1', {port}, {arguments})"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_until_healthy(process, base_url)
        yield base_url
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=SHUTDOWN_TIMEOUT_SECONDS)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal (exit -SIGTERM);
    # older releases exit 0. Either way nothing may have crashed.
    errors = stderr.decode(errors="replace")
    assert process.returncode in (0, -signal.SIGTERM), errors
    assert "Traceback" not in errors


@pytest.fixture
def emulator_url() -> Iterator[str]:
    yield from _serve_emulator(f"{API_KEY!r}, owned_namespaces={NAMESPACES!r}")


@pytest.fixture
def exempting_emulator_url() -> Iterator[str]:
    yield from _serve_emulator(
        f"{API_KEY!r}, exempt_lifecycle=True, owned_namespaces={NAMESPACES!r}"
    )


@pytest.mark.integration
def test_real_server_mints_and_attenuates(emulator_url: str) -> None:
    with httpx.Client(base_url=emulator_url, timeout=5.0) as client:
        policy = [{"namespaces": "app", "resources": "connections", "operations": "read"}]
        response = client.post(
            "/tokens",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"policy": policy},
        )
        assert response.status_code == 200, response.text
        parent = response.json()["token"]
        assert response.json()["expiresAt"].endswith("Z")

        response = client.post(
            "/tokens",
            headers={"Authorization": f"Bearer {parent}"},
            json={"policy": [{"ttl": "5m"}]},
        )
        assert response.status_code == 200, response.text
        child = response.json()["token"]

        view = client.post("/_emulator/introspect", json={"token": child}).json()
        assert view["policy"] == [{"ttl": "5m"}]
        assert [p["policy"] for p in view["parents"]] == [policy]

        denied = client.post("/tokens", headers={"Authorization": "Bearer wrong"}, json={})
        assert denied.status_code == 401
        assert denied.json() == {"error": "unauthorized", "message": "Invalid API key"}

        stats = client.get("/_emulator/stats").json()
        assert stats["tokens_minted"] == 2
        assert stats["tokens_rejected"] == 1


@pytest.mark.integration
def test_real_server_checks_mcp_messages_with_node(
    exempting_emulator_url: str, target: McpTarget, target_url: str
) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=exempting_emulator_url, timeout=10.0, trust_env=False) as client:
        created = client.put("/connect/app/gh", headers=key, json={"mcpUrl": f"{target_url}/json"})
        assert created.status_code == 201, created.text
        policy = [{"operations": "execute", "rpcReqMatch": {"params.name": "^search_issues$"}}]
        minted = client.post("/tokens", headers=key, json={"policy": policy})
        token = {"Authorization": f"Bearer {minted.json()['token']}"}

        def send(body: bytes) -> int:
            response = client.post("/connect/app/gh/mcp", content=body, headers=token)
            return response.status_code

        # exempt_lifecycle reached the app: initialize passes without matching params.name.
        assert send(rpc("initialize", {"capabilities": {}})) == 200
        assert send(call_tool("search_issues", query="x")) == 200
        assert send(call_tool("delete_repository")) == 403
        assert send(rpc("tools/list")) == 403
    assert len(target.received) == 2
