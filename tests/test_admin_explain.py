"""``POST /v1/explain``: operators only, constant-time admin credential, hidden when unset."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Bearer {ADMIN}x", "Basic abc"])
async def test_wrong_or_missing_admin_credential_is_401(
    monkeypatch: pytest.MonkeyPatch, header: str | None
) -> None:
    async with harness() as h:
        monkeypatch.setattr(h.state, "settings", _with_admin(h.state.settings))
        headers = {"Authorization": header} if header else {}
        response = await h.client.post(
            "/v1/explain", json={"claims": {"sub": "a"}}, headers=headers
        )
        assert response.status_code == 401
        assert ADMIN not in response.text


async def test_user_jwt_is_not_an_admin_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    async with harness() as h:
        monkeypatch.setattr(h.state, "settings", _with_admin(h.state.settings))
        response = await h.client.post(
            "/v1/explain",
            json={"claims": {"sub": "a"}},
            headers=h.auth("alice", email_verified=True),
        )
        assert response.status_code == 401


async def test_explain_dry_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async with harness() as h:
        monkeypatch.setattr(h.state, "settings", _with_admin(h.state.settings))
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


def _with_admin(settings: object) -> object:
    import msgspec

    from broker.config import AdminSettings, Secret, Settings

    assert isinstance(settings, Settings)
    return msgspec.structs.replace(settings, admin=AdminSettings(token=Secret(ADMIN)))
