"""``POST /tokens``: schema validation, authentication, ttl and expiry, attenuation."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from litestar.testing import TestClient

from broker.emulator import create_emulator_app
from tests.emulator.emulator_harness import (
    API_KEY,
    API_KEY_HEADERS,
    SIGNING_KEY,
    FakeClock,
    Minter,
    bearer,
    introspect,
)

CONNECTIONS_READ = {"namespaces": "app", "resources": "connections", "operations": "read"}


def _stats(client: TestClient[Any]) -> dict[str, Any]:
    body = client.get("/_emulator/stats").json()
    assert isinstance(body, dict)
    return body


def _expires_at(client: TestClient[Any], body: dict[str, Any], headers: dict[str, str]) -> str:
    response = client.post("/tokens", headers=headers, json=body)
    assert response.status_code == 200, response.text
    expires_at = response.json()["expiresAt"]
    assert isinstance(expires_at, str)
    return expires_at


# --- 400: every schema violation, with the JSON path of the problem --------------------------

INVALID_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed_json", b'{"policy": [', "Malformed JSON"),
    ("array_body", b"[]", "`$`"),
    ("string_body", b'"policy"', "`$`"),
    ("number_body", b"1", "`$`"),
    ("null_body", b"null", "`$`"),
    ("unknown_top_level_field", b'{"scope": "all"}', "`scope`"),
    ("policy_null", b'{"policy": null}', "`$.policy`"),
    ("policy_object", b'{"policy": {"resources": "connections"}}', "`$.policy`"),
    ("policy_empty", b'{"policy": []}', "`$.policy`"),
    ("constraint_not_object", b'{"policy": ["connections"]}', "`$.policy[0]`"),
    ("unknown_constraint_field", b'{"policy": [{"tools": ["x"]}]}', "`$.policy[0]`"),
    ("second_constraint_unknown_field", b'{"policy": [{}, {"scopes": 1}]}', "`$.policy[1]`"),
    ("namespaces_number", b'{"policy": [{"namespaces": 5}]}', "`$.policy[0].namespaces`"),
    ("namespaces_item_number", b'{"policy": [{"namespaces": ["a", 1]}]}', "namespaces[1]"),
    ("namespaces_null", b'{"policy": [{"namespaces": null}]}', "`$.policy[0].namespaces`"),
    ("resources_unknown", b'{"policy": [{"resources": "tools"}]}', "`$.policy[0].resources`"),
    (
        "resources_item_unknown",
        b'{"policy": [{"resources": ["connections", "tools"]}]}',
        "`$.policy[0].resources[1]`",
    ),
    ("resources_wrong_case", b'{"policy": [{"resources": "Connections"}]}', "resources"),
    ("operations_unknown", b'{"policy": [{"operations": "delete"}]}', "operations"),
    (
        "operations_item_unknown",
        b'{"policy": [{"operations": ["read", "admin"]}]}',
        "`$.policy[0].operations[1]`",
    ),
    ("operations_object", b'{"policy": [{"operations": {"read": true}}]}', "operations"),
    ("metadata_string", b'{"policy": [{"metadata": "userId=alice"}]}', "metadata"),
    ("metadata_number_value", b'{"policy": [{"metadata": {"userId": 7}}]}', "metadata"),
    ("metadata_null_value", b'{"policy": [{"metadata": {"userId": null}}]}', "metadata"),
    ("metadata_nested_object", b'{"policy": [{"metadata": {"a": {"b": "c"}}}]}', "metadata"),
    ("metadata_array_of_strings", b'{"policy": [{"metadata": ["a"]}]}', "metadata[0]"),
    ("metadata_array_bad_value", b'{"policy": [{"metadata": [{"a": "b"}, {"c": 1}]}]}', "[1]"),
    ("ttl_boolean", b'{"policy": [{"ttl": true}]}', "`$.policy[0].ttl`"),
    ("ttl_object", b'{"policy": [{"ttl": {"h": 1}}]}', "`$.policy[0].ttl`"),
    ("ttl_null", b'{"policy": [{"ttl": null}]}', "`$.policy[0].ttl`"),
    ("ttl_zero", b'{"policy": [{"ttl": 0}]}', "`$.policy[0].ttl`"),
    ("ttl_zero_string", b'{"policy": [{"ttl": "0"}]}', "`$.policy[0].ttl`"),
    ("ttl_zero_minutes", b'{"policy": [{"ttl": "0m"}]}', "`$.policy[0].ttl`"),
    ("ttl_negative", b'{"policy": [{"ttl": -5}]}', "`$.policy[0].ttl`"),
    ("ttl_negative_string", b'{"policy": [{"ttl": "-5"}]}', "`$.policy[0].ttl`"),
    ("ttl_over_24h_seconds", b'{"policy": [{"ttl": 86401}]}', "`$.policy[0].ttl`"),
    ("ttl_over_24h_digits", b'{"policy": [{"ttl": "86401"}]}', "`$.policy[0].ttl`"),
    ("ttl_over_24h_fraction", b'{"policy": [{"ttl": 86400.5}]}', "`$.policy[0].ttl`"),
    ("ttl_over_24h_hours", b'{"policy": [{"ttl": "25h"}]}', "`$.policy[0].ttl`"),
    ("ttl_over_24h_minutes", b'{"policy": [{"ttl": "1441m"}]}', "`$.policy[0].ttl`"),
    ("ttl_two_days", b'{"policy": [{"ttl": "2d"}]}', "`$.policy[0].ttl`"),
    ("ttl_huge_number", b'{"policy": [{"ttl": 1e999}]}', "`$.policy[0].ttl`"),
    ("ttl_unknown_unit", b'{"policy": [{"ttl": "1w"}]}', "`$.policy[0].ttl`"),
    ("ttl_decimal_string", b'{"policy": [{"ttl": "1.5h"}]}', "`$.policy[0].ttl`"),
    ("ttl_compound", b'{"policy": [{"ttl": "1h30m"}]}', "`$.policy[0].ttl`"),
    ("ttl_space", b'{"policy": [{"ttl": "5 m"}]}', "`$.policy[0].ttl`"),
    ("ttl_upper_unit", b'{"policy": [{"ttl": "5M"}]}', "`$.policy[0].ttl`"),
    ("ttl_empty_string", b'{"policy": [{"ttl": ""}]}', "`$.policy[0].ttl`"),
    ("ttl_unit_only", b'{"policy": [{"ttl": "h"}]}', "`$.policy[0].ttl`"),
    ("ttl_in_second_constraint", b'{"policy": [{}, {"ttl": "soon"}]}', "`$.policy[1].ttl`"),
    ("rpc_req_match_array", b'{"policy": [{"rpcReqMatch": ["method"]}]}', "rpcReqMatch"),
    ("rpc_req_match_number_value", b'{"policy": [{"rpcReqMatch": {"method": 1}}]}', "rpcReqMatch"),
    (
        "rpc_req_match_key_too_long",
        b'{"policy": [{"rpcReqMatch": {"' + b"k" * 201 + b'": "x"}}]}',
        "rpcReqMatch",
    ),
    (
        "rpc_req_match_pattern_too_long",
        b'{"policy": [{"rpcReqMatch": {"method": "' + b"x" * 501 + b'"}}]}',
        "rpcReqMatch",
    ),
    # Smithery counts lengths as JavaScript does (UTF-16 units): an emoji is 2.
    (
        "rpc_req_match_key_too_long_in_utf16_units",
        b'{"policy": [{"rpcReqMatch": {"' + "\U0001f600".encode() * 101 + b'": "x"}}]}',
        "`$.policy[0].rpcReqMatch`",
    ),
    (
        "rpc_req_match_pattern_too_long_in_utf16_units",
        b'{"policy": [{"rpcReqMatch": {"method": "' + "\U0001f600".encode() * 251 + b'"}}]}',
        "`$.policy[0].rpcReqMatch",
    ),
    ("organization_id_number", b'{"organizationId": 42}', "`$.organizationId`"),
]


@pytest.mark.parametrize(
    ("body", "path_hint"),
    [pytest.param(body, hint, id=name) for name, body, hint in INVALID_BODIES],
)
def test_invalid_body_rejected(client: TestClient[Any], body: bytes, path_hint: str) -> None:
    response = client.post(
        "/tokens", headers={**API_KEY_HEADERS, "Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 400, response.text
    error = response.json()
    assert set(error) == {"error", "message"}
    assert error["error"] == "invalid_request"
    assert path_hint in error["message"]
    assert _stats(client)["tokens_minted"] == 0
    assert _stats(client)["tokens_rejected"] == 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="no_body"),
        pytest.param(b"  \n", id="whitespace_body"),
        pytest.param(b"{}", id="empty_object"),
        pytest.param(b'{"organizationId": "org_1"}', id="organization_only"),
        pytest.param(
            b'{"policy": [{"rpcReqMatch": {"' + b"k" * 200 + b'": "' + b"x" * 500 + b'"}}]}',
            id="rpc_req_match_at_length_limits",
        ),
        pytest.param(
            b'{"policy": [{"rpcReqMatch": {"'
            + "\U0001f600".encode() * 100
            + b'": "'
            + "\U0001f600".encode() * 250
            + b'"}}]}',
            id="rpc_req_match_at_length_limits_in_utf16_units",
        ),
        pytest.param(
            b'{"policy": [{"namespaces": [], "resources": [], "operations": [], "metadata": []}]}',
            id="empty_lists",
        ),
        pytest.param(
            b'{"policy": [{"namespaces": "a", "resources": "skills", "operations": "execute",'
            b' "metadata": {"k": "v"}, "ttl": 60, "rpcReqMatch": {"method": "^tools/list$"}}]}',
            id="every_field_scalar_form",
        ),
    ],
)
def test_valid_body_minted(client: TestClient[Any], body: bytes) -> None:
    response = client.post("/tokens", headers=API_KEY_HEADERS, content=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"token", "expiresAt"}
    assert _stats(client)["tokens_minted"] == 1


# --- 401 ----------------------------------------------------------------------------------------


def _replace_payload(token: str, edit: Any) -> str:
    prefix, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    edit(decoded)
    raw = json.dumps(decoded, separators=(",", ":")).encode()
    return f"{prefix}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}.{signature}"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing_header"),
        pytest.param({"Authorization": "Bearer wrong-key"}, id="wrong_api_key"),
        pytest.param({"Authorization": f"Bearer {API_KEY}x"}, id="api_key_with_suffix"),
        pytest.param({"Authorization": f"Basic {API_KEY}"}, id="basic_scheme"),
        pytest.param({"Authorization": API_KEY}, id="no_scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty_credential"),
        pytest.param({"Authorization": "Bearer emu1.e30.AAAA"}, id="garbage_token"),
    ],
)
def test_bad_bearer_unauthorized(client: TestClient[Any], headers: dict[str, str]) -> None:
    response = client.post("/tokens", headers=headers, json={})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "message": "Invalid API key"}
    assert _stats(client)["tokens_rejected"] == 1


def test_lowercase_bearer_scheme_allowed(client: TestClient[Any]) -> None:
    response = client.post("/tokens", headers={"Authorization": f"bearer {API_KEY}"}, json={})
    assert response.status_code == 200


def test_unauthorized_checked_before_body(client: TestClient[Any]) -> None:
    response = client.post("/tokens", content=b"{not json")
    assert response.status_code == 401


def test_widened_payload_with_original_signature_rejected(
    client: TestClient[Any], mint: Minter
) -> None:
    narrow = mint({"policy": [CONNECTIONS_READ]})

    def widen(payload: dict[str, Any]) -> None:
        payload["blocks"][0]["policy"] = [{}]

    forged = _replace_payload(narrow, widen)
    assert forged != narrow
    assert client.post("/tokens", headers=bearer(forged), json={}).status_code == 401
    assert client.get("/connect/app", headers=bearer(forged)).status_code == 401


def test_extended_expiry_with_original_signature_rejected(
    client: TestClient[Any], mint: Minter
) -> None:
    token = mint({"policy": [{"ttl": 60}]})

    def extend(payload: dict[str, Any]) -> None:
        payload["blocks"][0]["expiresAtMs"] += 86_400_000

    response = client.post("/tokens", headers=bearer(_replace_payload(token, extend)), json={})
    assert response.status_code == 401


def test_dropped_parent_block_rejected(client: TestClient[Any], mint: Minter) -> None:
    parent = mint({"policy": [CONNECTIONS_READ]})
    child = mint({}, parent=parent)

    def drop_parent(payload: dict[str, Any]) -> None:
        del payload["blocks"][0]

    response = client.post("/tokens", headers=bearer(_replace_payload(child, drop_parent)))
    assert response.status_code == 401


def test_token_signed_with_other_key_rejected(clock: FakeClock, client: TestClient[Any]) -> None:
    other = create_emulator_app(API_KEY, signing_key=b"another-key", clock=clock)
    with TestClient(other) as other_client:
        foreign = Minter(other_client)({})
    assert client.post("/tokens", headers=bearer(foreign), json={}).status_code == 401


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: t.rsplit(".", 1)[0] + ".", id="signature_stripped"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], id="signature_part_missing"),
        pytest.param(lambda t: t[:-2], id="signature_truncated"),
        pytest.param(lambda t: t + "A", id="signature_extended"),
        pytest.param(lambda t: "emu2" + t[4:], id="prefix_changed"),
        pytest.param(lambda t: t + ".x", id="extra_part"),
        pytest.param(lambda t: t.replace(".", ".é", 1), id="non_ascii_payload"),
    ],
)
def test_mangled_token_rejected(client: TestClient[Any], mint: Minter, mangle: Any) -> None:
    token = mint({})
    mangled = mangle(token)
    assert mangled != token
    # Bytes, so that a non-ASCII header value reaches the server as UTF-8.
    headers = {b"Authorization": f"Bearer {mangled}".encode()}
    assert client.post("/tokens", headers=headers, json={}).status_code == 401


def test_random_signing_key_per_app_by_default(clock: FakeClock) -> None:
    first = create_emulator_app(API_KEY, clock=clock)
    second = create_emulator_app(API_KEY, clock=clock)
    with TestClient(first) as first_client, TestClient(second) as second_client:
        token = Minter(first_client)({})
        assert first_client.post("/tokens", headers=bearer(token)).status_code == 200
        assert second_client.post("/tokens", headers=bearer(token)).status_code == 401


# --- ttl and expiresAt --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "expires_at"),
    [
        pytest.param(90, "2024-01-01T00:01:30.000Z", id="integer_seconds"),
        pytest.param(90.25, "2024-01-01T00:01:30.250Z", id="fractional_seconds"),
        pytest.param(0.0001, "2024-01-01T00:00:00.001Z", id="sub_millisecond_rounds_up"),
        pytest.param("90", "2024-01-01T00:01:30.000Z", id="digit_string"),
        pytest.param("30s", "2024-01-01T00:00:30.000Z", id="seconds"),
        pytest.param("15m", "2024-01-01T00:15:00.000Z", id="minutes"),
        pytest.param("2h", "2024-01-01T02:00:00.000Z", id="hours"),
        pytest.param("1d", "2024-01-02T00:00:00.000Z", id="one_day"),
        pytest.param("007m", "2024-01-01T00:07:00.000Z", id="leading_zeros"),
        pytest.param(86400, "2024-01-02T00:00:00.000Z", id="24h_in_seconds_boundary"),
        pytest.param("86400", "2024-01-02T00:00:00.000Z", id="24h_digits_boundary"),
        pytest.param("24h", "2024-01-02T00:00:00.000Z", id="24h_boundary"),
        pytest.param("1440m", "2024-01-02T00:00:00.000Z", id="1440m_boundary"),
    ],
)
def test_ttl_sets_expiry(client: TestClient[Any], ttl: Any, expires_at: str) -> None:
    assert _expires_at(client, {"policy": [{"ttl": ttl}]}, API_KEY_HEADERS) == expires_at


def test_default_ttl_is_one_hour(client: TestClient[Any]) -> None:
    assert _expires_at(client, {}, API_KEY_HEADERS) == "2024-01-01T01:00:00.000Z"
    assert _expires_at(client, {"policy": [{}]}, API_KEY_HEADERS) == "2024-01-01T01:00:00.000Z"


def test_smallest_ttl_wins(client: TestClient[Any]) -> None:
    body = {"policy": [{"ttl": "2h"}, {"ttl": "15m"}, {"ttl": 3600}, {}]}
    assert _expires_at(client, body, API_KEY_HEADERS) == "2024-01-01T00:15:00.000Z"


def test_constraint_without_ttl_does_not_shorten_to_default(client: TestClient[Any]) -> None:
    # OPEN choice: only explicit ttls take part; the 1h default applies when none is given.
    body = {"policy": [{"ttl": "2h"}, {"namespaces": "app"}]}
    assert _expires_at(client, body, API_KEY_HEADERS) == "2024-01-01T02:00:00.000Z"


def test_expires_at_is_iso8601_utc_with_milliseconds(clock: FakeClock) -> None:
    clock.now_seconds = 1_704_067_200.123_9
    app = create_emulator_app(API_KEY, signing_key=SIGNING_KEY, clock=clock)
    with TestClient(app) as client:
        expires_at = _expires_at(client, {}, API_KEY_HEADERS)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", expires_at)
    assert expires_at == "2024-01-01T01:00:00.123Z"


# --- attenuation --------------------------------------------------------------------------------


def test_child_keeps_parent_block(client: TestClient[Any], mint: Minter) -> None:
    parent_policy = [{**CONNECTIONS_READ, "metadata": {"userId": "alice"}, "ttl": "30m"}]
    child_policy = [{"operations": ["read", "execute"]}, {"namespaces": ["app", "other"]}]
    parent = mint({"policy": parent_policy})
    child = mint({"policy": child_policy}, parent=parent)
    view = introspect(client, child)
    assert view["policy"] == child_policy
    assert view["parents"] == [{"policy": parent_policy, "expiresAt": "2024-01-01T00:30:00.000Z"}]


def test_grandchild_lists_ancestors_root_first(client: TestClient[Any], mint: Minter) -> None:
    root = mint({"policy": [{"namespaces": "root"}]})
    child = mint({"policy": [{"namespaces": "child"}]}, parent=root)
    grandchild = mint({"policy": [{"namespaces": "grandchild"}]}, parent=child)
    view = introspect(client, grandchild)
    assert view["policy"] == [{"namespaces": "grandchild"}]
    assert [p["policy"] for p in view["parents"]] == [
        [{"namespaces": "root"}],
        [{"namespaces": "child"}],
    ]


def test_child_expiry_capped_at_parent(client: TestClient[Any], mint: Minter) -> None:
    parent = mint({"policy": [{"ttl": "15m"}]})
    expires_at = _expires_at(client, {"policy": [{"ttl": "2h"}]}, bearer(parent))
    assert expires_at == "2024-01-01T00:15:00.000Z"


def test_child_default_ttl_capped_at_parent(client: TestClient[Any], mint: Minter) -> None:
    parent = mint({"policy": [{"ttl": "10m"}]})
    assert _expires_at(client, {}, bearer(parent)) == "2024-01-01T00:10:00.000Z"


def test_child_may_expire_before_parent(
    client: TestClient[Any], clock: FakeClock, mint: Minter
) -> None:
    parent = mint({"policy": [{"ttl": "2h"}]})
    clock.advance(60)
    expires_at = _expires_at(client, {"policy": [{"ttl": "5m"}]}, bearer(parent))
    assert expires_at == "2024-01-01T00:06:00.000Z"


def test_child_over_24h_ttl_still_rejected(client: TestClient[Any], mint: Minter) -> None:
    parent = mint({})
    response = client.post("/tokens", headers=bearer(parent), json={"policy": [{"ttl": "25h"}]})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_child_without_policy_inherits_scope(client: TestClient[Any], mint: Minter) -> None:
    parent_policy = [CONNECTIONS_READ]
    parent = mint({"policy": parent_policy})
    child = mint({}, parent=parent)
    view = introspect(client, child)
    assert view["policy"] == []
    assert [p["policy"] for p in view["parents"]] == [parent_policy]


def test_expired_parent_cannot_mint(
    client: TestClient[Any], clock: FakeClock, mint: Minter
) -> None:
    parent = mint({"policy": [{"ttl": 60}]})
    clock.advance(59.999)
    assert client.post("/tokens", headers=bearer(parent), json={}).status_code == 200
    clock.advance(0.001)
    response = client.post("/tokens", headers=bearer(parent), json={})
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "message": "Invalid API key"}


def test_child_of_expired_ancestor_cannot_mint(
    client: TestClient[Any], clock: FakeClock, mint: Minter
) -> None:
    parent = mint({"policy": [{"ttl": "10m"}]})
    child = mint({"policy": [{"ttl": "1h"}]}, parent=parent)
    clock.advance(600)
    assert client.post("/tokens", headers=bearer(child), json={}).status_code == 401


def test_counters_track_mints_and_rejections(client: TestClient[Any], mint: Minter) -> None:
    parent = mint({})
    mint({}, parent=parent)
    client.post("/tokens", json={})
    client.post("/tokens", headers=API_KEY_HEADERS, json={"policy": []})
    stats = _stats(client)
    assert stats["tokens_minted"] == 2
    assert stats["tokens_rejected"] == 2
