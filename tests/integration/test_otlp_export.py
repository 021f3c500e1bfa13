"""Traces exported over real OTLP/HTTP to a real receiver process, and secret hygiene: no API
key, JWT or service token (nor a base64 part of one) in any exported span, log line, audit line
or ``/metrics`` output."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.demo import MCP_PATH, create_demo_mcp_app, seed_dev_connections
from tests.emulator.loopback import LoopbackServer
from tests.integration.conftest import (
    API_KEY,
    Keys,
    Process,
)

pytestmark = pytest.mark.integration


def secret_fragments(secret: str) -> set[str]:
    """The secret and, for JWTs and dotted tokens, each of its long parts."""
    parts = {secret} | {part for part in secret.split(".") if len(part) >= 16}
    return parts


async def test_spans_exported_to_real_receiver_and_no_secret_anywhere(
    otlp_receiver: tuple[str, Path], keys: Keys, emulator: Process, start_broker: Any
) -> None:
    receiver_url, spans_file = otlp_receiver
    with LoopbackServer(create_demo_mcp_app()) as demo:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            await http.post(f"{emulator.url}/_emulator/reset")  # connections of other modules
        await seed_dev_connections(emulator.url, API_KEY, f"{demo.url}{MCP_PATH}")
        broker: Process = start_broker(
            emulator.url,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver_url,
            OTEL_SERVICE_NAME="broker-under-test",
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
            BROKER_TELEMETRY_SUBJECT="hash",
            BROKER_TELEMETRY_HASH_KEY="0123456789abcdef0123456789abcdef",
        )
        user = f"sam-{uuid.uuid4().hex[:6]}"
        jwt = keys.jwt(user, groups=["support"])
        auth = {"Authorization": f"Bearer {jwt}"}
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "delete_repository", "arguments": {"name": "x"}},
        }
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            token = (await http.post(f"{broker.url}/v1/tokens", headers=auth)).json()["token"]
            await http.post(f"{broker.url}/v1/tokens", headers={"Authorization": "Bearer x.y.z"})
            await http.post(
                f"{broker.url}/v1/precheck",
                headers=auth,
                json={"namespace": "my-app", "connectionId": "support-github", "request": call},
            )
            proxied = await http.post(
                f"{broker.url}/v1/mcp/my-app/support-github",
                headers={**auth, "Accept": "application/json, text/event-stream"},
                json={**call, "params": {"name": "get_issue", "arguments": {"number": 1}}},
            )
            assert proxied.status_code == 200
            metrics = (await http.get(f"{broker.url}/metrics")).text
        broker.stop()  # shutdown flushes the span exporter
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    names = {span["name"] for span in spans}
    assert {
        "POST /v1/tokens",
        "broker.authenticate",
        "broker.policy.evaluate",
        "broker.cache.lookup",
        "broker.token.mint",
        "broker.precheck",
        "POST /v1/mcp/{namespace}/{connectionId}",
        "broker.proxy.forward",
    } <= names
    assert {span["resource"]["service.name"] for span in spans} == {"broker-under-test"}
    assert {span["resource"]["deployment.environment"] for span in spans} == {"test"}
    precheck = [s for s in spans if s["name"] == "broker.precheck"]
    assert any(
        s["attributes"].get("broker.deny.reason") == "rpc_pattern_mismatch" for s in precheck
    )
    enduser = {s["attributes"]["enduser.id"] for s in spans if "enduser.id" in s["attributes"]}
    assert enduser
    assert all(value.startswith("h:") and user not in value for value in enduser)

    everything = "\n".join([spans_file.read_text(), broker.output(), metrics])
    for secret in (API_KEY, jwt, token, *keys.issued):
        for fragment in secret_fragments(secret):
            assert fragment not in everything, "a credential leaked into telemetry"
    assert user not in everything  # hashed subject only
