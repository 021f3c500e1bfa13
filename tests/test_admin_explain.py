"""``POST /v1/explain``: operators only, constant-time admin credential, hidden when unset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.config import AdminSettings, Secret
from broker.telemetry import capture_audit
from tests.inprocess import harness

ADMIN = "admin-token-0123456789"


async def test_hidden_without_admin_token() -> None:
    async with harness() as h:
        response = await h.client.post(
            "/v1/explain",
            json={"claims": {"sub": "a"}},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert response.status_code == 404
        # Nor does the public document name them.
        paths = (await h.client.get("/schema/openapi.json")).json()["paths"]
        assert "/v1/explain" not in paths
        assert "/v1/admin/revoke" not in paths
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        paths = (await h.client.get("/schema/openapi.json")).json()["paths"]
        assert {"/v1/explain", "/v1/admin/revoke"} <= set(paths)


@pytest.mark.parametrize("page", ["/schema/swagger", "/schema/redoc", "/schema/elements"])
async def test_schema_serves_the_document_only(page: str) -> None:
    """Litestar's viewer pages load scripts from public CDNs onto the broker's origin."""
    async with harness() as h:
        assert (await h.client.get(page)).status_code == 404
        document = await h.client.get("/schema")
        assert document.status_code == 200
        assert document.json()["info"]["title"] == "Token Broker"
        assert "<script" not in document.text


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Bearer {ADMIN}x", "Basic abc"])
async def test_wrong_or_missing_admin_credential_is_401(
    monkeypatch: pytest.MonkeyPatch, header: str | None
) -> None:
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        headers = {"Authorization": header} if header else {}
        response = await h.client.post(
            "/v1/explain", json={"claims": {"sub": "a"}}, headers=headers
        )
        assert response.status_code == 401
        assert ADMIN not in response.text


async def test_user_jwt_is_not_an_admin_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        response = await h.client.post(
            "/v1/explain",
            json={"claims": {"sub": "a"}},
            headers=h.auth("alice", email_verified=True),
        )
        assert response.status_code == 401


async def test_explain_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        body = {
            "claims": {"sub": "sam", "groups": ["support"]},
            "namespace": "my-app",
            "metadata": {"connectionId": "support-github"},
            "request": {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "get_issue"},
            },
        }
        response = await h.client.post(
            "/v1/explain", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert response.status_code == 200
        result = response.json()
        assert result["rules"]["applied"] == ["support-github-session", "support-github-readonly"]
        assert result["decision"] == {
            "allowed": True,
            "rule": "support-github-readonly",
            "reasons": [],
        }
        assert len(result["constraints"]) == 2


async def test_operator_endpoint_attempts_are_audited() -> None:
    """A wrong credential used to leave only an INFO log line; a dry run, nothing at all."""
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        with capture_audit() as lines:
            wrong = await h.client.post(
                "/v1/admin/revoke", json={"all": True}, headers={"Authorization": "Bearer nope"}
            )
            missing = await h.client.post("/v1/explain", json={"claims": {"sub": "a"}})
            ran = await h.client.post(
                "/v1/explain",
                json={"claims": {"sub": "alice", "email_verified": True}},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
    assert [wrong.status_code, missing.status_code, ran.status_code] == [401, 401, 200]
    records = [json.loads(line) for chunk in lines for line in chunk.splitlines()]
    assert [(r["event"], r["result"], r.get("reason")) for r in records] == [
        ("admin.revoke", "deny", "bad_admin_token"),
        ("admin.explain", "deny", "missing"),
        ("admin.explain", "allow", None),
    ]
    assert records[2]["rules"] == ["own-connections"]
    assert ADMIN not in json.dumps(records)


ISSUER_RULE = """\
rules:
  - id: own
    when:
      issuer: https://idp.example/
      claims: {email_verified: true}
    grant: {namespaces: my-app, metadata: {userId: "{claims.sub}"}}
    provision:
      namespace: my-app
      metadata: {userId: "{claims.sub}"}
      idPrefix: "{claims.sub}-"
      servers: [github]
      maxConnections: 5
"""


async def test_explain_takes_the_issuer_from_the_claims_iss(tmp_path: Path) -> None:
    """Without an explicit issuer the dry run reported ``issuer: ""`` and no connections the
    user may create for a rule restricted by ``when.issuer``, while /v1/connections (which sees
    the token's iss) lets them create some."""
    (tmp_path / "p.yaml").write_text(ISSUER_RULE)
    async with harness(tmp_path, admin=AdminSettings(token=Secret(ADMIN))) as h:
        response = await h.client.post(
            "/v1/explain",
            json={
                "claims": {"sub": "alice", "email_verified": True, "iss": "https://idp.example/"}
            },
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert response.status_code == 200
    result = response.json()
    assert result["issuer"] == "https://idp.example/"
    assert result["rules"]["applied"] == ["own"]
    assert [(block["rule"], block["idPrefix"]) for block in result["provisioning"]] == [
        ("own", "alice-")
    ]


async def test_explain_metadata_without_namespace_is_400() -> None:
    """The metadata was silently dropped, and the operator got a decision that ignored it; the
    CLI refuses the same input."""
    async with harness(admin=AdminSettings(token=Secret(ADMIN))) as h:
        response = await h.client.post(
            "/v1/explain",
            json={"claims": {"sub": "a", "email_verified": True}, "metadata": {"userId": "a"}},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "invalid_request"
    assert "namespace is required with metadata" in problem["detail"]
