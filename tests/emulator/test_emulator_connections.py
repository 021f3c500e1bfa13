"""``/connect/{namespace}``: connection CRUD with the API key, and scope checks with tokens."""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app
from tests.emulator.emulator_harness import (
    API_KEY,
    API_KEY_HEADERS,
    FakeClock,
    Minter,
    bearer,
    post_mcp,
    rpc,
)
from tests.emulator.mcp_target import McpTarget

ALICE = {"userId": "alice", "team": "eng"}
BOB = {"userId": "bob", "team": "ops"}
READ = {"namespaces": "app", "resources": "connections", "operations": "read"}
WRITE = {"namespaces": "app", "resources": "connections", "operations": "write"}
ACCESS_DENIED = {"error": "not_found", "message": "Namespace not found or access denied"}


def _put(
    client: TestClient[Any],
    connection_id: str,
    body: dict[str, Any],
    *,
    namespace: str = "app",
    headers: dict[str, str] = API_KEY_HEADERS,
) -> Any:
    return client.put(f"/connect/{namespace}/{connection_id}", headers=headers, json=body)


def _create(
    client: TestClient[Any],
    connection_id: str,
    metadata: Any = None,
    *,
    namespace: str = "app",
    **fields: Any,
) -> None:
    body: dict[str, Any] = {"mcpUrl": f"https://{connection_id}.example/mcp", **fields}
    if metadata is not None:
        body["metadata"] = metadata
    response = _put(client, connection_id, body, namespace=namespace)
    assert response.status_code == 201, response.text


def _listed_ids(client: TestClient[Any], token: str, query: str = "") -> list[str]:
    response = client.get(f"/connect/app{query}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [c["connectionId"] for c in response.json()["connections"]]


# --- CRUD with the API key ----------------------------------------------------------------------


def test_create_returns_connection_without_headers(client: TestClient[Any]) -> None:
    body = {
        "mcpUrl": "https://mcp.example/mcp",
        "name": "GitHub",
        "metadata": ALICE,
        "headers": {"X-API-Key": "upstream-secret"},
    }
    response = _put(client, "gh", body)
    assert response.status_code == 201
    assert response.json() == {
        "connectionId": "gh",
        "name": "GitHub",
        "mcpUrl": "https://mcp.example/mcp",
        "metadata": ALICE,
        "transport": "http",
        "createdAt": "2024-01-01T00:00:00.000Z",
        "status": {"state": "connected"},
    }
    for response in (
        client.get("/connect/app/gh", headers=API_KEY_HEADERS),
        client.get("/connect/app", headers=API_KEY_HEADERS),
    ):
        assert "upstream-secret" not in response.text
        assert "headers" not in response.text


def test_create_defaults_name_to_id_and_metadata_to_null(client: TestClient[Any]) -> None:
    response = _put(client, "plain", {"mcpUrl": "https://plain.example/"})
    assert response.json()["name"] == "plain"
    assert response.json()["metadata"] is None


def test_update_keeps_omitted_fields(client: TestClient[Any], clock: FakeClock) -> None:
    _create(client, "gh", ALICE, name="GitHub")
    clock.advance(60)
    response = _put(client, "gh", {"metadata": BOB})
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "GitHub"
    assert body["mcpUrl"] == "https://gh.example/mcp"
    assert body["metadata"] == BOB
    assert body["createdAt"] == "2024-01-01T00:00:00.000Z"


def test_update_with_same_url_allowed(client: TestClient[Any]) -> None:
    _create(client, "gh")
    response = _put(client, "gh", {"mcpUrl": "https://gh.example/mcp", "name": "Renamed"})
    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"


def test_update_with_different_url_conflicts(client: TestClient[Any]) -> None:
    _create(client, "gh")
    response = _put(client, "gh", {"mcpUrl": "https://elsewhere.example/mcp"})
    assert response.status_code == 409
    assert set(response.json()) == {"error", "message"}
    got = client.get("/connect/app/gh", headers=API_KEY_HEADERS).json()
    assert got["mcpUrl"] == "https://gh.example/mcp"


def test_transport_switch_cannot_repoint_secret_headers(client: TestClient[Any]) -> None:
    """The reviewer's bypass of the 409: http → uplink (the URL dropped) → http with a new URL
    (nothing left to differ from). Every step that moves the target is a 409, so the stored
    headers never leave the server they were given for."""
    body = {"mcpUrl": "https://good.example/mcp", "headers": {"X-API-Key": "secret-key"}}
    assert _put(client, "sec", body).status_code == 201
    to_uplink = _put(client, "sec", {"transport": "uplink"})
    assert to_uplink.status_code == 409
    assert to_uplink.json()["error"] == "conflict"
    back = _put(client, "sec", {"transport": "http", "mcpUrl": "https://evil.example/mcp"})
    assert back.status_code == 409
    stored = client.get("/connect/app/sec", headers=API_KEY_HEADERS).json()
    assert (stored["transport"], stored["mcpUrl"]) == ("http", "https://good.example/mcp")


def test_uplink_connection_cannot_take_a_url_and_its_headers_stay_home(
    client: TestClient[Any], target: McpTarget, target_url: str
) -> None:
    """An uplink connection's mcpUrl is null: giving one is "a different mcpUrl" (409)."""
    body = {"transport": "uplink", "headers": {"X-API-Key": "secret-key"}}
    assert _put(client, "up", body).status_code == 201
    response = _put(client, "up", {"transport": "http", "mcpUrl": f"{target_url}/json"})
    assert response.status_code == 409
    assert post_mcp(client, API_KEY, rpc("ping"), connection_id="up").status_code == 502
    assert target.received == []
    stored = client.get("/connect/app/up", headers=API_KEY_HEADERS).json()
    assert (stored["transport"], stored["mcpUrl"], stored["status"]) == (
        "uplink",
        None,
        {"state": "connected"},
    )


def test_restating_the_same_target_allowed(client: TestClient[Any]) -> None:
    _create(client, "gh")
    same = _put(client, "gh", {"transport": "http", "mcpUrl": "https://gh.example/mcp"})
    assert same.status_code == 200
    assert _put(client, "local", {"transport": "uplink"}).status_code == 201
    renamed = _put(client, "local", {"transport": "uplink", "name": "Laptop"})
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Laptop"


def test_uplink_connection_has_null_url(client: TestClient[Any]) -> None:
    response = _put(client, "local", {"transport": "uplink"})
    assert response.status_code == 201
    assert response.json()["mcpUrl"] is None
    assert response.json()["transport"] == "uplink"


def test_mock_config_echoed(client: TestClient[Any]) -> None:
    body = {"mcpUrl": "https://m.example/", "mock": {"enabled": True, "scenario": "inbox"}}
    response = _put(client, "mocked", body)
    assert response.json()["mock"] == {"enabled": True, "scenario": "inbox"}


def test_namespaces_are_separate(client: TestClient[Any]) -> None:
    _create(client, "gh", namespace="app")
    assert client.get("/connect/other/gh", headers=API_KEY_HEADERS).status_code == 404
    assert client.get("/connect/other", headers=API_KEY_HEADERS).json() == {
        "connections": [],
        "nextCursor": None,
    }


def test_delete_then_get_not_found(client: TestClient[Any]) -> None:
    _create(client, "gh")
    response = client.delete("/connect/app/gh", headers=API_KEY_HEADERS)
    assert response.status_code == 200
    assert response.json() == {"success": True}
    response = client.get("/connect/app/gh", headers=API_KEY_HEADERS)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "Connection not found"}
    assert client.delete("/connect/app/gh", headers=API_KEY_HEADERS).status_code == 404


# --- namespaces the API key owns ----------------------------------------------------------------


def test_writes_outside_owned_namespaces_not_found(client: TestClient[Any]) -> None:
    """OpenAPI: "Requires API key and namespace ownership"; 404 "Namespace not found or access
    denied" (PUT, POST), "Namespace or connection not found" (DELETE)."""
    url = {"mcpUrl": "https://x.example/mcp"}
    for response in (
        _put(client, "x", url, namespace="nobody"),
        client.post("/connect/nobody", headers=API_KEY_HEADERS, json=url),
        client.delete("/connect/nobody/x", headers=API_KEY_HEADERS),
        client.put("/connect/nobody/x", headers=API_KEY_HEADERS, content=b"{"),  # before body
    ):
        assert response.status_code == 404, response.text
        assert response.json() == ACCESS_DENIED
    assert client.get("/connect/nobody", headers=API_KEY_HEADERS).json() == {
        "connections": [],
        "nextCursor": None,
    }
    assert client.get("/_emulator/stats").json()["connections"] == 0


def test_owned_namespaces_configured() -> None:
    app = create_emulator_app("key", owned_namespaces=["team-a"])
    with TestClient(app) as other:
        headers = bearer("key")
        url = {"mcpUrl": "https://x.example/mcp"}
        assert other.put("/connect/team-a/x", headers=headers, json=url).status_code == 201
        assert other.put("/connect/app/x", headers=headers, json=url).status_code == 404


def test_default_owned_namespace_is_the_example_policies_one() -> None:
    with TestClient(create_emulator_app("key")) as other:
        headers = bearer("key")
        url = {"mcpUrl": "https://x.example/mcp"}
        assert other.put("/connect/my-app/x", headers=headers, json=url).status_code == 201
        assert other.put("/connect/app/x", headers=headers, json=url).status_code == 404


def test_owned_namespaces_as_one_string_refused() -> None:
    with pytest.raises(TypeError, match="owned_namespaces"):
        create_emulator_app("key", owned_namespaces="my-app")


# --- POST /connect/{namespace}: create with a generated id ---------------------------------------


def test_post_creates_connection_with_generated_id(client: TestClient[Any]) -> None:
    body = {"mcpUrl": "https://gh.example/mcp", "metadata": ALICE, "headers": {"X-Key": "s3"}}
    first = client.post("/connect/app", headers=API_KEY_HEADERS, json=body)
    second = client.post("/connect/app", headers=API_KEY_HEADERS, json=body)
    assert first.status_code == second.status_code == 201
    created = first.json()
    connection_id = created["connectionId"]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", connection_id)
    assert connection_id != second.json()["connectionId"]
    assert created == {
        "connectionId": connection_id,
        "name": connection_id,
        "mcpUrl": "https://gh.example/mcp",
        "metadata": ALICE,
        "transport": "http",
        "createdAt": "2024-01-01T00:00:00.000Z",
        "status": {"state": "connected"},
    }
    got = client.get(f"/connect/app/{connection_id}", headers=API_KEY_HEADERS)
    assert got.json() == created
    assert "s3" not in got.text


def test_post_creates_uplink_connection(client: TestClient[Any]) -> None:
    response = client.post("/connect/app", headers=API_KEY_HEADERS, json={"transport": "uplink"})
    assert response.status_code == 201
    assert (response.json()["transport"], response.json()["mcpUrl"]) == ("uplink", None)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{}", id="http_without_url"),
        pytest.param(b'{"mcpUrl": "ftp://x.example/"}', id="url_not_http"),
        pytest.param(b'{"mcpUrl": "https://x.example/", "connectionId": "mine"}', id="unknown"),
        pytest.param(b'{"transport": "uplink", "mcpUrl": "https://x.example/"}', id="uplink_url"),
    ],
)
def test_post_invalid_body_rejected(client: TestClient[Any], body: bytes) -> None:
    response = client.post("/connect/app", headers=API_KEY_HEADERS, content=body)
    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
    assert client.get("/connect/app", headers=API_KEY_HEADERS).json()["connections"] == []


def test_post_with_token_needs_write_on_the_result(client: TestClient[Any], mint: Minter) -> None:
    token = bearer(mint({"policy": [{**WRITE, "metadata": {"userId": "alice"}}]}))
    url = "https://a.example/mcp"
    mine = client.post("/connect/app", headers=token, json={"mcpUrl": url, "metadata": ALICE})
    assert mine.status_code == 201
    theirs = client.post("/connect/app", headers=token, json={"mcpUrl": url, "metadata": BOB})
    assert theirs.status_code == 404
    assert theirs.json() == ACCESS_DENIED
    listed = client.get("/connect/app", headers=API_KEY_HEADERS).json()["connections"]
    assert [c["connectionId"] for c in listed] == [mine.json()["connectionId"]]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty_body"),
        pytest.param(b"{", id="malformed_json"),
        pytest.param(b"[]", id="array_body"),
        pytest.param(b"{}", id="create_without_url"),
        pytest.param(b'{"mcpUrl": "not a url"}', id="url_without_scheme"),
        pytest.param(b'{"mcpUrl": "ftp://x.example/"}', id="url_not_http"),
        pytest.param(b'{"mcpUrl": "http://[::1"}', id="url_python_cannot_parse"),  # was a 500
        pytest.param(b'{"mcpUrl": "https://x.example:99999/"}', id="url_port_out_of_range"),
        pytest.param(b'{"mcpUrl": "https://exa mple.com/"}', id="url_with_a_space"),
        pytest.param(b'{"mcpUrl": "https://x.example/\\u0000"}', id="url_with_a_control"),
        pytest.param(b'{"mcpUrl": "https://x.example/", "name": ""}', id="empty_name"),
        pytest.param(b'{"mcpUrl": "https://x.example/", "name": "' + b"n" * 256 + b'"}', id="long"),
        pytest.param(b'{"mcpUrl": "https://x.example/", "headers": {"a": 1}}', id="header_int"),
        pytest.param(b'{"mcpUrl": "https://x.example/", "metadata": []}', id="metadata_array"),
        pytest.param(b'{"mcpUrl": "https://x.example/", "transport": "ws"}', id="transport"),
        pytest.param(b'{"mcpUrl": "https://x.example/", "owner": "me"}', id="unknown_field"),
        pytest.param(b'{"transport": "uplink", "mcpUrl": "https://x.example/"}', id="uplink_url"),
    ],
)
def test_invalid_connection_body_rejected(client: TestClient[Any], body: bytes) -> None:
    response = client.put("/connect/app/x", headers=API_KEY_HEADERS, content=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == "validation_error"
    assert isinstance(error["message"], str)
    assert client.get("/connect/app/x", headers=API_KEY_HEADERS).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/connect/app"),
        ("GET", "/connect/app/gh"),
        ("PUT", "/connect/app/gh"),
        ("DELETE", "/connect/app/gh"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer nope"}, id="wrong_key"),
        pytest.param({"Authorization": "Bearer emu1.e30.AAAA"}, id="forged_token"),
    ],
)
def test_connection_routes_need_valid_bearer(
    client: TestClient[Any], method: str, path: str, headers: dict[str, str]
) -> None:
    _create(client, "gh")
    response = client.request(method, path, headers=headers, json={"mcpUrl": "https://a.test/"})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "message": "Invalid API key"}
    assert client.get("/connect/app/gh", headers=API_KEY_HEADERS).status_code == 200


def test_expired_token_unauthorized(
    client: TestClient[Any], clock: FakeClock, mint: Minter
) -> None:
    _create(client, "gh")
    token = mint({"policy": [{**READ, "ttl": 60}]})
    assert client.get("/connect/app/gh", headers=bearer(token)).status_code == 200
    clock.advance(60)
    assert client.get("/connect/app/gh", headers=bearer(token)).status_code == 401


# --- reading one connection with a scoped token -------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param([{}], id="unrestricted_constraint"),
        pytest.param([READ], id="exact_scalars"),
        pytest.param([{**READ, "namespaces": ["other", "app"]}], id="namespace_in_list"),
        pytest.param(
            [{"resources": ["servers", "connections"], "operations": ["read", "execute"]}],
            id="lists_widen",
        ),
        pytest.param([{**READ, "metadata": {"userId": "alice"}}], id="metadata_subset"),
        pytest.param([{**READ, "metadata": ALICE}], id="metadata_all_pairs"),
        pytest.param([{**READ, "metadata": {}}], id="metadata_empty_object"),
        pytest.param(
            [{**READ, "metadata": [{"userId": "bob"}, {"team": "eng"}]}], id="metadata_array_or"
        ),
        pytest.param([{"namespaces": "other"}, READ], id="second_constraint_grants"),
        pytest.param([{**READ, "rpcReqMatch": {"method": "^nothing$"}}], id="rpc_match_ignored"),
    ],
)
def test_read_allowed(client: TestClient[Any], mint: Minter, policy: list[Any]) -> None:
    _create(client, "gh", ALICE)
    response = client.get("/connect/app/gh", headers=bearer(mint({"policy": policy})))
    assert response.status_code == 200, response.text
    assert response.json()["connectionId"] == "gh"


@pytest.mark.parametrize(
    ("policy", "status"),
    [
        pytest.param([{**READ, "namespaces": "other"}], 403, id="other_namespace"),
        pytest.param([{**READ, "namespaces": []}], 403, id="empty_namespace_list"),
        pytest.param([{**READ, "resources": "servers"}], 403, id="other_resource"),
        pytest.param([{**READ, "operations": "write"}], 403, id="write_only"),
        pytest.param([{**READ, "operations": ["execute"]}], 403, id="execute_only"),
        pytest.param(
            [{**READ, "metadata": {"userId": "alice", "team": "ops"}}], 404, id="metadata_and_fails"
        ),
        pytest.param(
            [{**READ, "metadata": [{"userId": "bob"}, {"team": "ops"}]}],
            404,
            id="metadata_array_none_match",
        ),
        pytest.param([{**READ, "metadata": {"region": "eu"}}], 404, id="metadata_key_missing"),
        pytest.param([{**READ, "metadata": []}], 404, id="metadata_empty_array"),
        pytest.param([{**READ, "metadata": {"userId": "Alice"}}], 404, id="metadata_case"),
    ],
)
def test_read_denied(client: TestClient[Any], mint: Minter, policy: list[Any], status: int) -> None:
    _create(client, "gh", ALICE)
    response = client.get("/connect/app/gh", headers=bearer(mint({"policy": policy})))
    assert response.status_code == status
    assert set(response.json()) == {"error", "message"}
    assert response.json()["error"] == ("forbidden" if status == 403 else "not_found")


def test_metadata_filtered_read_indistinguishable_from_absent(
    client: TestClient[Any], mint: Minter
) -> None:
    _create(client, "bobs", BOB)
    alice = mint({"policy": [{**READ, "metadata": {"userId": "alice"}}]})
    hidden = client.get("/connect/app/bobs", headers=bearer(alice))
    absent = client.get("/connect/app/nobody", headers=bearer(alice))
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json() == absent.json()


def test_connection_without_metadata_hidden_from_metadata_token(
    client: TestClient[Any], mint: Minter
) -> None:
    _create(client, "bare")
    token = mint({"policy": [{**READ, "metadata": {"userId": "alice"}}]})
    assert client.get("/connect/app/bare", headers=bearer(token)).status_code == 404


def test_non_string_metadata_never_matches_string_filter(
    client: TestClient[Any], mint: Minter
) -> None:
    # OPEN choice: connection metadata may hold any JSON value; filters compare strings only.
    _create(client, "numbered", {"tier": 1})
    token = mint({"policy": [{**READ, "metadata": {"tier": "1"}}]})
    assert client.get("/connect/app/numbered", headers=bearer(token)).status_code == 404
    assert _listed_ids(client, mint({"policy": [READ]}), "?metadata.tier=1") == []


# --- attenuated tokens: every block must allow -------------------------------------------------


def test_child_cannot_widen_namespace(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "gh", ALICE)
    _create(client, "gh", ALICE, namespace="other")
    parent = mint({"policy": [READ]})
    child = mint({"policy": [{"namespaces": "other"}]}, parent=parent)
    assert client.get("/connect/app/gh", headers=bearer(child)).status_code == 403
    assert client.get("/connect/other/gh", headers=bearer(child)).status_code == 403
    assert client.get("/connect/app/gh", headers=bearer(parent)).status_code == 200


def test_child_cannot_widen_operation(client: TestClient[Any], mint: Minter) -> None:
    parent = mint({"policy": [{"operations": "read"}]})
    child = mint({"policy": [{"operations": ["read", "write"]}]}, parent=parent)
    response = _put(client, "new", {"mcpUrl": "https://n.example/"}, headers=bearer(child))
    assert response.status_code == 404
    assert response.json() == ACCESS_DENIED


def test_child_narrows_by_metadata(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "alices", ALICE)
    _create(client, "bobs", BOB)
    parent = mint({"policy": [READ]})
    child = mint({"policy": [{"metadata": {"userId": "alice"}}]}, parent=parent)
    assert _listed_ids(client, parent) == ["alices", "bobs"]
    assert _listed_ids(client, child) == ["alices"]
    assert client.get("/connect/app/bobs", headers=bearer(child)).status_code == 404


def test_child_without_policy_keeps_parent_scope(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "alices", ALICE)
    _create(client, "bobs", BOB)
    parent = mint({"policy": [{**READ, "metadata": {"userId": "bob"}}]})
    child = mint({}, parent=parent)
    assert _listed_ids(client, child) == ["bobs"]
    assert client.get("/connect/app/alices", headers=bearer(child)).status_code == 404


def test_child_or_within_block_and_across_blocks(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "a", {"userId": "alice", "team": "eng"})
    _create(client, "b", {"userId": "bob", "team": "eng"})
    _create(client, "c", {"userId": "carol", "team": "ops"})
    parent = mint({"policy": [{**READ, "metadata": {"team": "eng"}}, {"namespaces": "other"}]})
    child = mint(
        {"policy": [{"metadata": {"userId": "bob"}}, {"metadata": {"userId": "carol"}}]},
        parent=parent,
    )
    assert _listed_ids(client, parent) == ["a", "b"]
    assert _listed_ids(client, child) == ["b"]


# --- writing with a scoped token ----------------------------------------------------------------


def test_write_with_matching_metadata_allowed(client: TestClient[Any], mint: Minter) -> None:
    token = mint({"policy": [{**WRITE, "metadata": {"userId": "alice"}}]})
    body = {"mcpUrl": "https://a.example/", "metadata": ALICE}
    response = _put(client, "mine", body, headers=bearer(token))
    assert response.status_code == 201
    response = _put(client, "mine", {"name": "Mine"}, headers=bearer(token))
    assert response.status_code == 200
    assert client.delete("/connect/app/mine", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param(BOB, id="someone_elses_metadata"),
        pytest.param(None, id="no_metadata"),
        pytest.param({"team": "eng"}, id="missing_user"),
    ],
)
def test_create_outside_metadata_scope_denied(
    client: TestClient[Any], mint: Minter, metadata: Any
) -> None:
    token = mint({"policy": [{**WRITE, "metadata": {"userId": "alice"}}]})
    body: dict[str, Any] = {"mcpUrl": "https://a.example/"}
    if metadata is not None:
        body["metadata"] = metadata
    response = _put(client, "theirs", body, headers=bearer(token))
    assert response.status_code == 404
    assert response.json() == ACCESS_DENIED
    assert client.get("/connect/app/theirs", headers=API_KEY_HEADERS).status_code == 404


def test_retag_own_connection_to_someone_else_denied(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "mine", ALICE)
    token = mint({"policy": [{**WRITE, "metadata": {"userId": "alice"}}]})
    response = _put(client, "mine", {"metadata": BOB}, headers=bearer(token))
    assert response.status_code == 404
    assert response.json() == ACCESS_DENIED
    stored = client.get("/connect/app/mine", headers=API_KEY_HEADERS).json()
    assert stored["metadata"] == ALICE


def test_overwrite_hidden_connection_not_found(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "bobs", BOB)
    token = mint({"policy": [{**WRITE, "metadata": {"userId": "alice"}}]})
    body = {"mcpUrl": "https://bobs.example/mcp", "metadata": ALICE}
    response = _put(client, "bobs", body, headers=bearer(token))
    assert response.status_code == 404
    stored = client.get("/connect/app/bobs", headers=API_KEY_HEADERS).json()
    assert stored["metadata"] == BOB


def test_overwrite_readable_but_not_writable_denied(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "bobs", BOB)
    token = mint({"policy": [READ, {**WRITE, "metadata": {"userId": "alice"}}]})
    response = _put(client, "bobs", {"name": "hijacked"}, headers=bearer(token))
    assert response.status_code == 404
    assert response.json() == ACCESS_DENIED
    deleted = client.delete("/connect/app/bobs", headers=bearer(token))
    assert deleted.status_code == 404
    assert deleted.json() == ACCESS_DENIED
    assert client.get("/connect/app/bobs", headers=API_KEY_HEADERS).json()["name"] == "bobs"


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param([READ], id="read_only"),
        pytest.param([{**WRITE, "operations": "execute"}], id="execute_only"),
        pytest.param([{**WRITE, "namespaces": "other"}], id="other_namespace"),
        pytest.param([{**WRITE, "resources": ["servers", "namespaces"]}], id="other_resources"),
    ],
)
def test_write_denied(client: TestClient[Any], mint: Minter, policy: list[Any]) -> None:
    """The OpenAPI lists no 403 for PUT, POST or DELETE: "404 Namespace not found or access
    denied" (PUT, POST), "404 Namespace or connection not found" (DELETE)."""
    _create(client, "gh")
    token = bearer(mint({"policy": policy}))
    for response in (
        _put(client, "new", {"mcpUrl": "https://n.example/"}, headers=token),
        client.post("/connect/app", headers=token, json={"mcpUrl": "https://n.example/"}),
        client.delete("/connect/app/gh", headers=token),
    ):
        assert response.status_code == 404, response.text
        assert response.json() == ACCESS_DENIED
    assert client.get("/connect/app/gh", headers=API_KEY_HEADERS).status_code == 200
    assert client.get("/connect/app", headers=API_KEY_HEADERS).json()["connections"] != []
    assert client.get("/_emulator/stats").json()["requests_forbidden"] == 3


def test_delete_hidden_connection_not_found(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "bobs", BOB)
    token = mint({"policy": [{**WRITE, "metadata": {"userId": "alice"}}]})
    assert client.delete("/connect/app/bobs", headers=bearer(token)).status_code == 404
    assert client.get("/connect/app/bobs", headers=API_KEY_HEADERS).status_code == 200


def test_write_denial_checked_before_body(client: TestClient[Any], mint: Minter) -> None:
    token = mint({"policy": [READ]})
    response = client.put("/connect/app/x", headers=bearer(token), content=b"{")
    assert response.status_code == 404


# --- listing ------------------------------------------------------------------------------------


def test_list_filtered_to_readable(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "a1", {"userId": "alice", "team": "eng"})
    _create(client, "a2", {"userId": "alice", "team": "ops"})
    _create(client, "b1", {"userId": "bob", "team": "eng"})
    _create(client, "none")
    alice = mint({"policy": [{**READ, "metadata": {"userId": "alice"}}]})
    either = mint({"policy": [{**READ, "metadata": [{"userId": "bob"}, {"team": "ops"}]}]})
    assert _listed_ids(client, alice) == ["a1", "a2"]
    assert _listed_ids(client, either) == ["a2", "b1"]
    assert _listed_ids(client, alice, "?metadata.team=eng") == ["a1"]


def test_list_needs_read_in_namespace(client: TestClient[Any], mint: Minter) -> None:
    token = mint({"policy": [{**READ, "operations": "execute"}]})
    response = client.get("/connect/app", headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


def test_list_query_filters(client: TestClient[Any], mint: Minter) -> None:
    _create(client, "a", {"userId": "alice", "team": "eng"}, name="GitHub")
    _create(client, "b", {"userId": "bob", "team": "eng"}, name="Linear")
    _create(client, "c", {"userId": "carol"}, name="GitHub")
    token = mint({"policy": [READ]})
    assert _listed_ids(client, token, "?metadata.team=eng") == ["a", "b"]
    assert _listed_ids(client, token, "?metadata.team=eng&metadata.userId=bob") == ["b"]
    assert _listed_ids(client, token, "?metadata.team=nobody") == []
    assert _listed_ids(client, token, "?name=GitHub") == ["a", "c"]
    assert _listed_ids(client, token, "?mcpUrl=https://c.example/mcp") == ["c"]


def test_list_pages_with_cursor(client: TestClient[Any]) -> None:
    for connection_id in ["e", "c", "a", "d", "b"]:
        _create(client, connection_id)
    seen: list[str] = []
    query = "?limit=2"
    pages = 0
    while True:
        response = client.get(f"/connect/app{query}", headers=API_KEY_HEADERS)
        assert response.status_code == 200
        body = response.json()
        seen += [c["connectionId"] for c in body["connections"]]
        pages += 1
        if body["nextCursor"] is None:
            break
        query = f"?limit=2&cursor={body['nextCursor']}"
    assert seen == ["a", "b", "c", "d", "e"]
    assert pages == 3


def test_list_default_limit_is_100(client: TestClient[Any]) -> None:
    for index in range(101):
        _create(client, f"c{index:03d}")
    body = client.get("/connect/app", headers=API_KEY_HEADERS).json()
    assert len(body["connections"]) == 100
    assert body["nextCursor"] is not None
    rest = client.get(f"/connect/app?cursor={body['nextCursor']}", headers=API_KEY_HEADERS)
    assert [c["connectionId"] for c in rest.json()["connections"]] == ["c100"]
    assert rest.json()["nextCursor"] is None


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("?limit=0", id="limit_zero"),
        pytest.param("?limit=101", id="limit_over_max"),
        pytest.param("?limit=ten", id="limit_not_integer"),
        pytest.param("?limit=-1", id="limit_negative"),
        pytest.param("?limit=" + "9" * 5000, id="limit_beyond_int_conversion"),
        pytest.param("?limit=" + "0" * 5000, id="limit_zeros_beyond_int_conversion"),
        pytest.param("?limit=%C2%B2", id="limit_superscript_digit"),
        pytest.param("?limit=1&limit=2", id="limit_repeated"),
        pytest.param("?cursor=%25%25", id="cursor_garbage"),
        pytest.param("?owner=alice", id="unknown_parameter"),
        pytest.param("?metadata.=x", id="metadata_without_key"),
    ],
)
def test_invalid_list_query_rejected(client: TestClient[Any], query: str) -> None:
    response = client.get(f"/connect/app{query}", headers=API_KEY_HEADERS)
    assert response.status_code == 400
    assert response.json()["error"] == "validation_error"
