"""Connection provisioning end to end: real broker process → real emulator process.

The broker writes the policy's metadata on every connection it creates (``own-connections`` in
``policies/per-user-connections.yaml``: ``userId: <sub>``, ids ``<sub>-...``, at most 5), so the
token a user gets from ``/v1/tokens`` reaches exactly the connections they created.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import API_KEY, Keys, Process, listening_socket, spawn

pytestmark = pytest.mark.integration

NS = "my-app"
GITHUB = "https://server.smithery.ai/github/mcp"
CUSTOM = "https://tools.example.com/mcp"
SECRET_HEADER = "ghp-integration-SECRET-3b7d1e"
ADMIN = {"Authorization": f"Bearer {API_KEY}"}


def unique(name: str) -> str:
    # No '-' in a subject: it is the id separator of the example policy's idPrefix.
    return f"{name}{uuid.uuid4().hex[:8]}"


class Client:
    def __init__(self, http: httpx.AsyncClient, broker: Process, keys: Keys, sub: str) -> None:
        self.http, self.broker, self.sub = http, broker, sub
        self.auth = {"Authorization": f"Bearer {keys.jwt(sub, email_verified=True)}"}

    async def put(self, connection_id: str, body: Any) -> httpx.Response:
        return await self.http.put(
            f"{self.broker.url}/v1/connections/{NS}/{connection_id}", json=body, headers=self.auth
        )

    async def call(self, method: str, connection_id: str) -> httpx.Response:
        return await self.http.request(
            method, f"{self.broker.url}/v1/connections/{NS}/{connection_id}", headers=self.auth
        )

    async def list(self) -> list[str]:
        response = await self.http.get(f"{self.broker.url}/v1/connections/{NS}", headers=self.auth)
        assert response.status_code == 200, response.text
        return [c["connectionId"] for c in response.json()["connections"]]

    async def token(self) -> str:
        response = await self.http.post(f"{self.broker.url}/v1/tokens", headers=self.auth)
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


async def at_smithery(http: httpx.AsyncClient, emulator: Process, connection_id: str) -> Any:
    response = await http.get(f"{emulator.url}/connect/{NS}/{connection_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


async def test_owner_metadata_enforced_and_other_users_shut_out(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    alice = Client(http, broker, keys, unique("alice"))
    bob = Client(http, broker, keys, unique("bob"))
    mine = f"{alice.sub}-github"
    created = await alice.put(mine, {"mcpUrl": GITHUB, "metadata": {"team": "core"}})
    assert created.status_code == 201, created.text
    assert created.json()["status"] == {"state": "connected"}
    stored = await at_smithery(http, fresh_emulator, mine)
    assert stored["metadata"] == {"team": "core", "userId": alice.sub}

    # bob can neither read, update nor delete it, and does not see it.
    assert (await bob.call("GET", mine)).status_code == 404
    assert (await bob.call("DELETE", mine)).status_code == 404
    assert (await bob.put(mine, {"name": "mine now"})).status_code == 403
    assert await bob.list() == []
    assert await alice.list() == [mine]
    assert (await at_smithery(http, fresh_emulator, mine))["metadata"]["userId"] == alice.sub

    # The token alice gets reaches her connection at Smithery; bob's does not.
    for client, status in ((alice, 200), (bob, 404)):
        token = await client.token()
        seen = await http.get(
            f"{fresh_emulator.url}/connect/{NS}/{mine}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert seen.status_code == status
    decision = await http.post(
        f"{broker.url}/v1/precheck",
        headers=alice.auth,
        json={
            "namespace": NS,
            "connectionId": mine,
            "request": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        },
    )
    assert decision.json()["allowed"] is True

    assert (await alice.call("DELETE", mine)).status_code == 200
    gone = await http.get(f"{fresh_emulator.url}/connect/{NS}/{mine}", headers=ADMIN)
    assert gone.status_code == 404
    assert await alice.list() == []


async def test_forged_owner_and_foreign_targets_denied(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    alice = Client(http, broker, keys, unique("alice"))
    bob_sub = unique("bob")
    forged = await alice.put(f"{alice.sub}-x", {"mcpUrl": GITHUB, "metadata": {"userId": bob_sub}})
    assert forged.status_code == 403
    assert forged.json()["code"] == "metadata_not_allowed"
    outside = await alice.put(f"{alice.sub}-x", {"mcpUrl": "https://evil.example.org/mcp"})
    assert outside.status_code == 403
    assert outside.json()["code"] == "target_not_allowed"
    # Ids are formed from the caller's prefix: alice cannot even name an id in bob's space.
    squat = await alice.put(f"{bob_sub}-github", {"mcpUrl": GITHUB})
    assert squat.status_code == 403
    assert squat.json()["code"] == "connection_id_not_allowed"
    listed = await http.get(f"{fresh_emulator.url}/connect/{NS}", headers=ADMIN)
    assert listed.json()["connections"] == []


async def test_per_user_limit_enforced(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    alice = Client(http, broker, keys, unique("alice"))
    bob = Client(http, broker, keys, unique("bob"))
    for index in range(5):
        response = await alice.put(f"{alice.sub}-{index}", {"mcpUrl": CUSTOM})
        assert response.status_code == 201, response.text
    refused = await alice.put(f"{alice.sub}-5", {"mcpUrl": CUSTOM})
    assert refused.status_code == 403
    assert refused.json()["code"] == "connection_limit_reached"
    assert (await bob.put(f"{bob.sub}-0", {"mcpUrl": CUSTOM})).status_code == 201
    assert (await alice.call("DELETE", f"{alice.sub}-0")).status_code == 200
    assert (await alice.put(f"{alice.sub}-5", {"mcpUrl": CUSTOM})).status_code == 201


async def test_oauth_target_reports_auth_required(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    alice = Client(http, broker, keys, unique("alice"))
    created = await alice.put(f"{alice.sub}-o", {"mcpUrl": "https://oauth.example.com/mcp"})
    assert created.status_code == 201
    status = created.json()["status"]
    assert status["state"] == "auth_required"
    assert status["setupUrl"].startswith("https://")


@pytest.mark.parametrize(
    "body",
    [
        {"mcpUrl": CUSTOM, "owner": "x"},
        {"mcpUrl": "not a url"},
        {"mcpUrl": CUSTOM, "headers": {f"X-{i}": "v" for i in range(100)}},
        {"mcpUrl": CUSTOM, "headers": {"X": "v" * 10_000}},
        {"mcpUrl": 42},
        "just a string",
    ],
)
async def test_bad_input_is_400(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys, body: Any
) -> None:
    alice = Client(http, broker, keys, unique("alice"))
    response = await alice.put(f"{alice.sub}-x", body)
    assert response.status_code == 400, response.text
    malformed = await http.put(
        f"{broker.url}/v1/connections/{NS}/{alice.sub}-x",
        content=b"{not json",
        headers={**alice.auth, "Content-Type": "application/json"},
    )
    assert malformed.status_code == 400


async def test_headers_never_in_responses_logs_or_traces(
    otlp_receiver: tuple[str, Path],
    http: httpx.AsyncClient,
    fresh_emulator: Process,
    keys: Keys,
    start_broker: Any,
) -> None:
    receiver_url, spans_file = otlp_receiver
    broker: Process = start_broker(
        fresh_emulator.url,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver_url,
    )
    alice = Client(http, broker, keys, unique("alice"))
    mine = f"{alice.sub}-h"
    headers = {"Authorization": f"Bearer {SECRET_HEADER}", "X-Api-Key": SECRET_HEADER}
    responses = [
        await alice.put(mine, {"mcpUrl": CUSTOM, "headers": headers}),
        await alice.put(mine, {"headers": headers, "name": "again"}),
        await alice.put(f"{alice.sub}-bad", {"mcpUrl": "nope", "headers": headers}),
        await alice.put(
            f"{alice.sub}-big", {"mcpUrl": CUSTOM, "headers": {"X": SECRET_HEADER * 500}}
        ),
        await alice.call("GET", mine),
        await http.get(f"{broker.url}/v1/connections/{NS}", headers=alice.auth),
    ]
    assert [r.status_code for r in responses] == [201, 200, 400, 400, 200, 200]
    broker.stop()  # flushes the span exporter
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    provision = [s for s in spans if s["name"] == "broker.provision"]
    assert provision
    assert any(s["attributes"].get("broker.decision") == "allow" for s in provision)
    everything = "\n".join([spans_file.read_text(), broker.output(), *(r.text for r in responses)])
    assert SECRET_HEADER not in everything
    audit = [json.loads(line) for line in broker.out_path.read_text().splitlines() if line]
    assert {"connection.create", "connection.update", "connection.read", "connection.list"} <= {
        record["event"] for record in audit
    }


async def test_minted_token_uses_the_created_connection_over_mcp(
    http: httpx.AsyncClient, broker: Process, fresh_emulator: Process, keys: Keys
) -> None:
    """alice creates a connection through the broker; her token then calls MCP on it at
    Smithery's endpoint, and bob's cannot. The connection is re-pointed by the operator (API key,
    metadata kept) at a local demo MCP server, since the example policy only allows https
    targets."""
    from broker.demo import MCP_PATH, create_demo_mcp_app
    from tests.emulator.loopback import LoopbackServer

    alice = Client(http, broker, keys, unique("alice"))
    bob = Client(http, broker, keys, unique("bob"))
    mine = f"{alice.sub}-tools"
    assert (await alice.put(mine, {"mcpUrl": CUSTOM})).status_code == 201
    metadata = (await at_smithery(http, fresh_emulator, mine))["metadata"]
    assert metadata == {"userId": alice.sub}
    with LoopbackServer(create_demo_mcp_app()) as demo:
        url = f"{fresh_emulator.url}/connect/{NS}/{mine}"
        assert (await http.delete(url, headers=ADMIN)).status_code == 200
        repointed = await http.put(
            url, headers=ADMIN, json={"mcpUrl": f"{demo.url}{MCP_PATH}", "metadata": metadata}
        )
        assert repointed.status_code in (200, 201), repointed.text
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"Accept": "application/json, text/event-stream"}
        for client, status in ((alice, 200), (bob, 404)):
            token = await client.token()
            response = await http.post(
                f"{url}/mcp", json=listing, headers={**headers, "Authorization": f"Bearer {token}"}
            )
            assert response.status_code == status, response.text
            if status == 200:
                assert "search_issues" in response.text


async def test_namespace_the_api_key_does_not_own_is_an_operator_error(
    tmp_path: Path, http: httpx.AsyncClient, keys: Keys, start_broker: Any
) -> None:
    """``broker emulator --namespace``: the API key owns those namespaces only, and Smithery's
    "404 Namespace not found or access denied" on a PUT reaches the caller as a stable 502
    ``upstream_rejected``, with the namespace (never the API key) in the broker's log."""
    emulator = spawn(
        "emulator-owning",
        ["emulator", "--api-key", API_KEY, "--namespace", "team-a", "--namespace", "team-b"],
        tmp_path,
        sock=listening_socket(),
    )
    try:
        for namespace, status in (("team-a", 201), ("team-b", 201), (NS, 404)):
            response = await http.put(
                f"{emulator.url}/connect/{namespace}/c1", headers=ADMIN, json={"mcpUrl": CUSTOM}
            )
            assert response.status_code == status, response.text
        broker: Process = start_broker(emulator.url)
        alice = Client(http, broker, keys, unique("alice"))
        refused = await alice.put(f"{alice.sub}-x", {"mcpUrl": CUSTOM})
        assert refused.status_code == 502, refused.text
        assert refused.json()["code"] == "upstream_rejected"
        broker.stop()
        assert f"namespace '{NS}' does not exist or the API key does not own it" in broker.output()
        assert API_KEY not in broker.output() + refused.text
    finally:
        emulator.stop()
