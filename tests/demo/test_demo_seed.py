"""``seed_dev_connections`` against a real emulator: what it creates, and how it fails."""

from __future__ import annotations

import httpx
import pytest

from broker.demo import DEV_CONNECTIONS, SeedError, seed_dev_connections
from tests.demo.demo_harness import EMULATOR_API_KEY
from tests.emulator.loopback import bind_loopback_socket

MCP_URL = "http://127.0.0.1:9/mcp"


async def _connections(emulator_url: str, namespace: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.get(
            f"{emulator_url}/connect/{namespace}",
            headers={"Authorization": f"Bearer {EMULATOR_API_KEY}"},
        )
    assert response.status_code == 200, response.text
    connections: list[dict[str, object]] = response.json()["connections"]
    return connections


async def test_seeds_the_three_dev_connections(emulator_url: str) -> None:
    await seed_dev_connections(emulator_url, EMULATOR_API_KEY, MCP_URL)
    seeded = {
        c["connectionId"]: (c["mcpUrl"], c["metadata"])
        for c in await _connections(emulator_url, "my-app")
    }
    assert seeded == {
        "alice-github": (MCP_URL, {"userId": "alice"}),
        "bob-github": (MCP_URL, {"userId": "bob"}),
        "support-github": (MCP_URL, {"connectionId": "support-github"}),
    }
    assert set(seeded) == set(DEV_CONNECTIONS)


async def test_seeding_twice_is_harmless_and_namespace_is_a_parameter(emulator_url: str) -> None:
    await seed_dev_connections(emulator_url + "/", EMULATOR_API_KEY, MCP_URL, namespace="other")
    await seed_dev_connections(emulator_url, EMULATOR_API_KEY, MCP_URL, namespace="other")
    assert len(await _connections(emulator_url, "other")) == 3
    assert await _connections(emulator_url, "my-app") == []


async def test_refused_seed_names_the_code_not_the_key(emulator_url: str) -> None:
    with pytest.raises(SeedError) as raised:
        await seed_dev_connections(emulator_url, "wrong-key-value", MCP_URL)
    assert str(raised.value) == (
        "the emulator refused connection 'alice-github': HTTP 401 unauthorized"
    )
    assert "wrong-key-value" not in str(raised.value)


async def test_other_mcp_url_conflicts(emulator_url: str) -> None:
    await seed_dev_connections(emulator_url, EMULATOR_API_KEY, MCP_URL)
    with pytest.raises(SeedError, match="HTTP 409 conflict"):
        await seed_dev_connections(emulator_url, EMULATOR_API_KEY, "http://127.0.0.1:10/mcp")


async def test_unreachable_emulator() -> None:
    sock = bind_loopback_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    with pytest.raises(SeedError, match="cannot reach the emulator"):
        await seed_dev_connections(url, EMULATOR_API_KEY, MCP_URL)
