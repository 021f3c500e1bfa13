"""``/v1/connections``: users manage their own connections; the broker writes the metadata."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from broker.telemetry import capture_audit
from tests.inprocess import API_KEY, Harness, harness

NS = "my-app"
GITHUB = "https://server.smithery.ai/github/mcp"
CUSTOM = "https://tools.example.com/mcp"
SECRET_HEADER = "ghp-SECRET-header-value-9f2e"


def audit_records(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for chunk in chunks for line in chunk.splitlines()]


def user(h: Harness, sub: str) -> dict[str, str]:
    return h.auth(sub, email_verified=True)


async def put(h: Harness, sub: str, connection_id: str, **body: Any) -> Any:
    return await h.client.put(
        f"/v1/connections/{NS}/{connection_id}", json=body, headers=user(h, sub)
    )


async def upstream(h: Harness, connection_id: str) -> dict[str, Any]:
    response = await h.emulator.get(
        f"/connect/{NS}/{connection_id}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def test_create_writes_enforced_metadata_allowed() -> None:
    async with harness() as h:
        response = await put(
            h, "alice", "alice-github", mcpUrl=GITHUB, metadata={"team": "core"}, name="GitHub"
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["metadata"] == {"team": "core", "userId": "alice"}
        assert body["status"] == {"state": "connected"}
        assert (await upstream(h, "alice-github"))["metadata"] == {
            "team": "core",
            "userId": "alice",
        }
        again = await put(h, "alice", "alice-github", name="Renamed")
        assert again.status_code == 200
        assert again.json()["metadata"] == {"team": "core", "userId": "alice"}
        assert again.json()["name"] == "Renamed"


async def test_enforced_key_with_another_value_denied() -> None:
    async with harness() as h:
        response = await put(h, "alice", "alice-x", mcpUrl=GITHUB, metadata={"userId": "bob"})
        assert response.status_code == 403
        assert response.json()["code"] == "metadata_not_allowed"
        same = await put(h, "alice", "alice-x", mcpUrl=GITHUB, metadata={"userId": "alice"})
        assert same.status_code == 201


@pytest.mark.parametrize(
    "metadata",
    [
        # Keys other rules grant access by: alice would put her connection (her server, her
        # credentials) in front of acme's admins and the support agents.
        {"orgId": "acme", "visibility": "admins"},
        {"connectionId": "support-github"},
        {"label": "mine"},  # no rule uses it, but the policy does not list it either
    ],
)
async def test_metadata_the_policy_does_not_list_is_denied(metadata: dict[str, str]) -> None:
    async with harness() as h:
        response = await put(h, "alice", "alice-x", mcpUrl=GITHUB, metadata=metadata)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "metadata_not_allowed"
        assert "clientMetadata: 'team'" in response.json()["detail"]
        created = await put(h, "alice", "alice-x", mcpUrl=GITHUB)
        assert created.status_code == 201
        update = await put(h, "alice", "alice-x", metadata=metadata)
        assert update.status_code == 403
        assert (await upstream(h, "alice-x"))["metadata"] == {"userId": "alice"}
        # No token of another rule's users reaches it.
        for sub, claims in (
            ("bob", {"org_id": "acme", "org_role": "admin"}),
            ("carol", {"groups": ["support"]}),
        ):
            token = await h.client.post("/v1/tokens", headers=h.auth(sub, **claims))
            listed = await h.emulator.get(
                f"/connect/{NS}", headers={"Authorization": f"Bearer {token.json()['token']}"}
            )
            assert "alice-x" not in listed.text


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.org/mcp",
        "https://tools.example.com/mcp/extra",
        "https://tools.example.com.evil.org/mcp",
        "https://server.smithery.ai/unlisted/mcp",
    ],
)
async def test_target_outside_allowlist_denied(url: str) -> None:
    async with harness() as h:
        response = await put(h, "alice", "alice-x", mcpUrl=url)
        assert response.status_code == 403
        assert response.json()["code"] == "target_not_allowed"


@pytest.mark.parametrize("url", [GITHUB, "https://server.smithery.ai/linear", CUSTOM])
async def test_target_in_allowlist_allowed(url: str) -> None:
    async with harness() as h:
        assert (await put(h, "alice", "alice-x", mcpUrl=url)).status_code == 201


async def test_id_without_callers_prefix_denied() -> None:
    async with harness() as h:
        for connection_id in ("bob-github", "github", "alice-"):
            response = await put(h, "alice", connection_id, mcpUrl=GITHUB)
            assert response.status_code == 403
            assert response.json()["code"] == "connection_id_not_allowed"


async def test_other_users_connection_hidden_and_never_overwritten() -> None:
    async with harness() as h:
        assert (await put(h, "alice", "alice-github", mcpUrl=GITHUB)).status_code == 201
        # bob's prefix is bob-: alice's id is not his to name, read or delete.
        assert (await put(h, "bob", "alice-github", mcpUrl=GITHUB)).status_code == 403
        for method in ("GET", "DELETE"):
            response = await h.client.request(
                method, f"/v1/connections/{NS}/alice-github", headers=user(h, "bob")
            )
            assert response.status_code == 404
            assert response.json()["code"] == "connection_not_found"
        listing = await h.client.get(f"/v1/connections/{NS}", headers=user(h, "bob"))
        assert listing.json() == {"connections": [], "nextCursor": None}
        assert (await upstream(h, "alice-github"))["metadata"] == {"userId": "alice"}


async def test_connection_in_callers_prefix_owned_by_someone_else_not_overwritten() -> None:
    async with harness() as h:
        # Created with the API key outside the broker, tagged for bob but in alice's id space.
        await h.create_connection(NS, "alice-planted", metadata={"userId": "bob"})
        response = await put(h, "alice", "alice-planted", mcpUrl=GITHUB)
        assert response.status_code == 403
        assert response.json()["code"] == "connection_not_owned"
        get = await h.client.get(f"/v1/connections/{NS}/alice-planted", headers=user(h, "alice"))
        assert get.status_code == 404
        assert (await upstream(h, "alice-planted"))["metadata"] == {"userId": "bob"}


async def test_read_list_delete_own_allowed() -> None:
    async with harness() as h:
        for name in ("alice-a", "alice-b", "alice-c"):
            assert (await put(h, "alice", name, mcpUrl=CUSTOM)).status_code == 201
        await h.create_connection(NS, "zed-other", metadata={"userId": "zed"})
        got = await h.client.get(f"/v1/connections/{NS}/alice-b", headers=user(h, "alice"))
        assert got.status_code == 200
        assert got.json()["connectionId"] == "alice-b"
        first = await h.client.get(
            f"/v1/connections/{NS}", params={"limit": "2"}, headers=user(h, "alice")
        )
        page = first.json()
        assert [c["connectionId"] for c in page["connections"]] == ["alice-a", "alice-b"]
        second = await h.client.get(
            f"/v1/connections/{NS}",
            params={"cursor": page["nextCursor"]},
            headers=user(h, "alice"),
        )
        assert [c["connectionId"] for c in second.json()["connections"]] == ["alice-c"]
        assert second.json()["nextCursor"] is None
        deleted = await h.client.delete(f"/v1/connections/{NS}/alice-a", headers=user(h, "alice"))
        assert deleted.status_code == 200
        assert deleted.json() == {"success": True}
        gone = await h.client.get(f"/v1/connections/{NS}/alice-a", headers=user(h, "alice"))
        assert gone.status_code == 404


async def test_connection_limit_denied() -> None:
    async with harness() as h:
        for index in range(5):
            assert (await put(h, "alice", f"alice-{index}", mcpUrl=CUSTOM)).status_code == 201
        response = await put(h, "alice", "alice-5", mcpUrl=CUSTOM)
        assert response.status_code == 403
        assert response.json()["code"] == "connection_limit_reached"
        # Updating an existing one is not a new connection; bob has his own budget.
        assert (await put(h, "alice", "alice-0", name="still fine")).status_code == 200
        assert (await put(h, "bob", "bob-0", mcpUrl=CUSTOM)).status_code == 201


async def test_user_without_provision_rule_denied() -> None:
    async with harness() as h:
        unverified = h.auth("mallory", email_verified=False)
        response = await h.client.get(f"/v1/connections/{NS}", headers=unverified)
        assert response.status_code == 403
        assert response.json()["code"] == "no_matching_rule"
        other_ns = await h.client.get("/v1/connections/other-app", headers=user(h, "alice"))
        assert other_ns.json()["code"] == "no_matching_rule"


async def test_unauthenticated_denied() -> None:
    async with harness() as h:
        response = await h.client.get(f"/v1/connections/{NS}")
        assert response.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"mcpUrl": GITHUB, "owner": "bob"},
        {"mcpUrl": "not a url"},
        {"mcpUrl": "ftp://tools.example.com/mcp"},
        {"mcpUrl": "https://user:pw@tools.example.com/mcp"},
        {"mcpUrl": GITHUB, "headers": {f"X-H{i}": "v" for i in range(33)}},
        {"mcpUrl": GITHUB, "headers": {"Bad Header": "v"}},
        {"mcpUrl": GITHUB, "headers": {"X-Key\n": "v"}},  # Python's $ matches before a final \n
        # Smithery sends these to the MCP server: CR, LF or NUL there would inject headers.
        {"mcpUrl": GITHUB, "headers": {"X-Key": "v\r\nX-Admin: 1"}},
        {"mcpUrl": GITHUB, "headers": {"X-Key": "v\n"}},
        {"mcpUrl": GITHUB, "headers": {"X-Key": "v\x00"}},
        # Transport headers are the sender's own: a user's could redirect or split requests.
        {"mcpUrl": GITHUB, "headers": {"Host": "internal.example"}},
        {"mcpUrl": GITHUB, "headers": {"Transfer-Encoding": "chunked"}},
        {"mcpUrl": GITHUB, "headers": {"content-length": "0"}},
        {"mcpUrl": GITHUB, "headers": {"X-Key": "a", "x-key": "b"}},
        {"mcpUrl": GITHUB, "metadata": {"n": 1}},
        {"name": ""},
        [],
    ],
)
async def test_bad_input_is_400(body: Any) -> None:
    async with harness() as h:
        response = await put(h, "alice", "alice-x", **body) if isinstance(body, dict) else None
        if response is None:
            response = await h.client.put(
                f"/v1/connections/{NS}/alice-x", json=body, headers=user(h, "alice")
            )
        assert response.status_code == 400, response.text


async def test_create_without_url_is_400() -> None:
    async with harness() as h:
        response = await put(h, "alice", "alice-x", name="no url")
        assert response.status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"limit": "\u00b2"},  # a digit to str.isdigit, not to int()
        {"limit": "9" * 5000},  # more digits than int() converts (it was a 500)
        {"limit": "0" * 5000},
        {"limit": ""},
        {"metadata.userId": "bob"},
        {"cursor": "!!"},  # Smithery refuses it: the caller's mistake, not a 502 and an alert
    ],
)
async def test_bad_list_query_is_400(query: dict[str, str]) -> None:
    async with harness() as h:
        response = await h.client.get(
            f"/v1/connections/{NS}", params=query, headers=user(h, "alice")
        )
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_request"


async def test_a_zero_padded_limit_is_a_limit() -> None:
    async with harness() as h:
        response = await h.client.get(
            f"/v1/connections/{NS}", params={"limit": "0" * 5000 + "2"}, headers=user(h, "alice")
        )
        assert response.status_code == 200


@pytest.mark.parametrize("name", ["..x", "alice-x%0A", "alice-x%0D", "alice%20x"])
async def test_bad_names_are_400(name: str) -> None:
    async with harness() as h:
        for method in ("GET", "PUT", "DELETE"):
            response = await h.client.request(
                method,
                f"/v1/connections/{NS}/{name}",
                json={"mcpUrl": GITHUB} if method == "PUT" else None,
                headers=user(h, "alice"),
            )
            assert response.status_code == 400, (method, response.text)


async def test_headers_never_returned_nor_audited() -> None:
    async with harness() as h:
        with capture_audit() as lines:
            created = await put(
                h, "alice", "alice-h", mcpUrl=CUSTOM, headers={"Authorization": SECRET_HEADER}
            )
            listed = await h.client.get(f"/v1/connections/{NS}", headers=user(h, "alice"))
            bad = await put(
                h, "alice", "alice-h2", mcpUrl=CUSTOM, headers={"X": SECRET_HEADER * 2000}
            )
        assert created.status_code == 201
        assert bad.status_code == 400
        for response in (created, listed, bad):
            assert SECRET_HEADER not in response.text
        records = audit_records(lines)
        assert SECRET_HEADER not in json.dumps(records)
        events = [(r["event"], r["result"]) for r in records]
        assert ("connection.create", "allow") in events
        assert ("connection.list", "allow") in events


async def test_denials_are_audited_with_reason() -> None:
    async with harness() as h:
        with capture_audit() as lines:
            await put(h, "alice", "alice-x", mcpUrl="https://evil.example.org/mcp")
        records = audit_records(lines)
        assert records[-1]["event"] == "connection.put"
        assert records[-1]["result"] == "deny"
        assert records[-1]["reason"] == "target_not_allowed"
        assert records[-1]["rule"] == "own-connections"


async def test_namespace_the_api_key_does_not_own_is_upstream_rejected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The policy provisions in ``my-app``, which this emulator's API key does not own: Smithery
    answers the PUT "404 Namespace not found or access denied". That is the operator's
    configuration, not the caller's request: a stable 502 ``upstream_rejected`` (not a 404 the
    caller would take for their connection), with the namespace named in the log only."""
    async with harness(emulator_options={"owned_namespaces": ("another-app",)}) as h:
        with caplog.at_level(logging.ERROR, logger="broker.upstream"):
            response = await put(h, "alice", "alice-github", mcpUrl=GITHUB)
        assert response.status_code == 502, response.text
        assert response.json()["code"] == "upstream_rejected"
        # Nothing there to delete: the read before the delete already answers 404.
        deleted = await h.client.delete(
            f"/v1/connections/{NS}/alice-github", headers=user(h, "alice")
        )
        assert deleted.status_code == 404
        assert deleted.json()["code"] == "connection_not_found"
    [logged] = [r.getMessage() for r in caplog.records if r.name == "broker.upstream"]
    assert "namespace 'my-app' does not exist or the API key does not own it" in logged
    assert "error=not_found" in logged
    assert API_KEY not in caplog.text + response.text
