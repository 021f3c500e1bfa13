"""``POST /v1/admin/revoke`` with the memory backend (one process): purge, then refuse on every
user-facing endpoint for the period; decision table of what is refused and what is not."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.config import AdminSettings, Secret, TelemetrySettings
from broker.revocation import Scope
from broker.telemetry import capture_audit, setup_telemetry
from tests.inprocess import Harness, harness

ADMIN = "admin-token-revoke-0123"
MESSAGE = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


ADMIN_SETTINGS = AdminSettings(token=Secret(ADMIN), revocation_seconds=600)


async def revoke(h: Harness, body: Any, token: str = ADMIN) -> Any:
    return await h.client.post(
        "/v1/admin/revoke", json=body, headers={"Authorization": f"Bearer {token}"}
    )


async def token(h: Harness, sub: str, **claims: Any) -> Any:
    return await h.client.post("/v1/tokens", headers=h.auth(sub, email_verified=True, **claims))


async def precheck(h: Harness, sub: str) -> Any:
    return await h.client.post(
        "/v1/precheck",
        json={"namespace": "my-app", "request": MESSAGE, "metadata": {"userId": sub}},
        headers=h.auth(sub, email_verified=True),
    )


async def proxy(h: Harness, sub: str, connection: str) -> Any:
    return await h.client.post(
        f"/v1/mcp/my-app/{connection}", json=MESSAGE, headers=h.auth(sub, email_verified=True)
    )


def assert_revoked(response: Any) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "access_revoked"


async def test_revoked_subject_refused_on_tokens_precheck_and_proxy() -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        await h.create_connection("my-app", "mallory-github", metadata={"userId": "mallory"})
        first = await token(h, "mallory")
        assert first.status_code == 200
        assert len(h.state.cache) == 1
        response = await revoke(h, {"subject": "mallory"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["revoked"] == "subject"
        assert body["purged"] == 1
        assert body["purgedShared"] is None
        assert body["refusedUntil"].endswith("Z")
        assert "mallory" not in response.text
        assert len(h.state.cache) == 0
        assert_revoked(await token(h, "mallory"))
        assert_revoked(await precheck(h, "mallory"))
        assert_revoked(await proxy(h, "mallory", "mallory-github"))
        # Everyone else is served.
        assert (await token(h, "alice")).status_code == 200
        assert (await precheck(h, "alice")).json()["allowed"] is True


class CountingTransport(httpx.AsyncBaseTransport):
    """The emulator's ASGI transport, recording each request's method and path."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.requests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return await self.inner.handle_async_request(request)


async def test_a_revoked_user_causes_no_call_to_smithery() -> None:
    transports: list[CountingTransport] = []

    def counting(app: Any) -> CountingTransport:
        transports.append(CountingTransport(app))
        return transports[0]

    async with harness(upstream=counting, admin=ADMIN_SETTINGS) as h:
        await h.create_connection("my-app", "mallory-github", metadata={"userId": "mallory"})
        assert (await revoke(h, {"subject": "mallory"})).status_code == 200
        upstream = transports[0]
        upstream.requests.clear()
        assert_revoked(await proxy(h, "mallory", "mallory-github"))
        assert_revoked(
            await h.client.post(
                "/v1/precheck",
                json={"namespace": "my-app", "connectionId": "mallory-github", "request": MESSAGE},
                headers=h.auth("mallory", email_verified=True),
            )
        )
        assert upstream.requests == []  # neither the connection's metadata nor a token
        # The same requests from someone else do reach Smithery (the check is not vacuous).
        await h.create_connection("my-app", "alice-github", metadata={"userId": "alice"})
        assert (await proxy(h, "alice", "alice-github")).status_code != 403
        assert "GET /connect/my-app/alice-github" in upstream.requests


async def test_refusal_ends_after_the_period_and_the_old_token_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        before = (await token(h, "mallory")).json()["token"]
        assert (await revoke(h, {"subject": "mallory", "seconds": 30})).status_code == 200
        assert_revoked(await token(h, "mallory"))
        now = h.state.clock()
        monkeypatch.setattr(h.state.issuance.revocations, "_clock", lambda: now + 31)
        after = await token(h, "mallory")
        assert after.status_code == 200
        assert after.json()["token"] != before  # re-minted: the purged token is not served


async def test_issuer_scoped_revocation_spares_the_same_subject_elsewhere() -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        other = await revoke(h, {"subject": "mallory", "issuer": "https://other-idp.test/"})
        assert other.status_code == 200
        assert (await token(h, "mallory")).status_code == 200
        issuer = h.state.dev_signer.issuer
        assert (await revoke(h, {"subject": "mallory", "issuer": issuer})).status_code == 200
        assert_revoked(await token(h, "mallory"))


async def test_rule_revocation_refuses_whoever_it_would_serve() -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        assert (await token(h, "sam", groups=["support"])).status_code == 200
        response = await revoke(h, {"rule": "support-github-readonly"})
        assert response.status_code == 200, response.text
        assert_revoked(await token(h, "sam", groups=["support"]))
        assert (await token(h, "alice")).status_code == 200  # not under that rule


async def test_rule_revocation_purges_only_the_tokens_that_carry_the_rule() -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        alice = (await token(h, "alice")).json()
        sam = (await token(h, "sam", groups=["support"])).json()
        assert "support-github-readonly" in sam["rules"]
        assert "support-github-readonly" not in alice["rules"]
        assert len(h.state.cache) == 2
        response = await revoke(h, {"rule": "support-github-readonly"})
        assert response.json()["purged"] == 1
        assert len(h.state.cache) == 1
        again = (await token(h, "alice")).json()
        assert again["token"] == alice["token"]  # still cached: served without a new mint
        assert_revoked(await token(h, "sam", groups=["support"]))


async def test_revoke_all_refuses_everyone_and_zero_seconds_only_purges() -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        first = (await token(h, "alice")).json()["token"]
        purge_only = await revoke(h, {"all": True, "seconds": 0})
        assert purge_only.json()["purged"] == 1
        second = await token(h, "alice")
        assert second.status_code == 200
        assert second.json()["token"] != first
        assert (await revoke(h, {"all": True})).status_code == 200
        assert_revoked(await token(h, "alice"))
        assert_revoked(await precheck(h, "bob"))


async def test_a_shorter_revocation_does_not_lift_a_longer_one() -> None:
    """A purge-only revocation of a user already revoked for longer keeps the refusal (Redis
    keeps the longer one too: tests/test_revocation_sync.py), and the answer says so: it
    reported the shorter period's end while the user stayed refused."""
    async with harness(admin=ADMIN_SETTINGS) as h:
        long = (await revoke(h, {"subject": "mallory"})).json()
        short = await revoke(h, {"subject": "mallory", "seconds": 0})
        assert short.status_code == 200, short.text
        assert short.json()["refusedUntil"] == long["refusedUntil"]
        assert_revoked(await token(h, "mallory"))


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"all": False},
        {"subject": "a", "rule": "r"},
        {"subject": "a", "all": True},
        {"rule": "r", "issuer": "https://idp.test/"},
        {"subject": ""},
        {"subject": "a", "seconds": -1},
        {"subject": "a", "extra": 1},
        {"subject": 5},
        [],
    ],
)
async def test_bad_revocation_requests_denied(body: Any) -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        response = await revoke(h, body)
        assert response.status_code == 400, response.text
        assert len(h.state.cluster.revocations) == 0


async def test_revoke_without_admin_credential_denied() -> None:
    async with harness() as h:
        assert (await revoke(h, {"all": True})).status_code == 404  # no admin token: hidden
    async with harness(admin=ADMIN_SETTINGS) as h:
        assert (await revoke(h, {"all": True}, token="wrong")).status_code == 401
        user = await h.client.post(
            "/v1/admin/revoke", json={"all": True}, headers=h.auth("alice", email_verified=True)
        )
        assert user.status_code == 401
        assert (await token(h, "alice")).status_code == 200


async def test_a_revocation_during_the_mint_refuses_the_token_it_brings() -> None:
    """Revoked while this request's token was being minted (or awaited from another replica):
    the request is refused, not served the new token."""

    class RevokingDuringMint(httpx.AsyncBaseTransport):
        def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
            self.inner = inner
            self.state: Any = None

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/tokens" and self.state is not None:
                await self.state.issuance.revocations.revoke(Scope(subject="mallory"), 600)
            return await self.inner.handle_async_request(request)

    transports: list[RevokingDuringMint] = []

    def revoking(app: Any) -> RevokingDuringMint:
        transports.append(RevokingDuringMint(httpx.ASGITransport(app=app)))
        return transports[0]

    async with harness(upstream=revoking, admin=ADMIN_SETTINGS) as h:
        transports[0].state = h.state
        assert_revoked(await token(h, "mallory"))
        transports[0].state = None
        assert_revoked(await token(h, "mallory"))  # and refused from then on
        assert (await token(h, "alice")).status_code == 200


async def connections(h: Harness, sub: str) -> list[Any]:
    """Create, list and delete one of ``sub``'s connections through ``/v1/connections``."""
    auth = h.auth(sub, email_verified=True)
    return [
        await h.client.put(
            f"/v1/connections/my-app/{sub}-gh",
            json={"mcpUrl": "https://mcp.example.com/mcp"},
            headers=auth,
        ),
        await h.client.get("/v1/connections/my-app", headers=auth),
        await h.client.delete(f"/v1/connections/my-app/{sub}-gh", headers=auth),
    ]


@pytest.mark.parametrize("scope", [{"subject": "mallory"}, {"rule": "own-connections"}])
async def test_a_revoked_user_manages_no_connections(scope: dict[str, str]) -> None:
    """They act with the broker's API key on the user's behalf: refused like a token, and
    recorded once per call, as the connection decision it is."""
    async with harness(admin=ADMIN_SETTINGS) as h:
        assert [r.status_code for r in await connections(h, "mallory")] == [201, 200, 200]
        assert (await revoke(h, scope)).status_code == 200
        with capture_audit() as lines:
            for response in await connections(h, "mallory"):  # were 201, 200, 200
                assert_revoked(response)
            await h.settle()
        records = [json.loads(line) for chunk in lines for line in chunk.splitlines()]
        assert [(r["event"], r["result"], r["reason"]) for r in records] == [
            ("connection.put", "deny", "access_revoked"),
            ("connection.list", "deny", "access_revoked"),
            ("connection.delete", "deny", "access_revoked"),
        ]


async def test_a_refusal_is_one_audited_decision_and_a_denied_span() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(TelemetrySettings(subject="hash"), {}, exporter=exporter)
    async with harness(admin=ADMIN_SETTINGS, telemetry=telemetry) as h:
        assert (await revoke(h, {"subject": "mallory"})).status_code == 200
        exporter.clear()
        with capture_audit() as lines:
            assert_revoked(await token(h, "mallory"))
            await h.settle()
    records = [json.loads(line) for chunk in lines for line in chunk.splitlines()]
    assert [(r["event"], r["result"], r["reason"], r["scope"]) for r in records] == [
        ("access.revoked", "deny", "access_revoked", "subject-any")
    ]
    denied = [
        s for s in exporter.get_finished_spans() if s.attributes.get("broker.decision") == "deny"
    ]
    assert [s.attributes["broker.deny.reason"] for s in denied] == ["access_revoked"]


async def test_asking_for_fewer_rules_does_not_get_past_a_revoked_rule() -> None:
    async with harness(admin=ADMIN_SETTINGS) as h:
        support = {"groups": ["support"]}
        narrowed = {"rules": ["support-github-session"]}
        auth = h.auth("sam", email_verified=True, **support)
        assert (await h.client.post("/v1/tokens", json=narrowed, headers=auth)).status_code == 200
        assert (await revoke(h, {"rule": "support-github-readonly"})).status_code == 200
        assert_revoked(await h.client.post("/v1/tokens", headers=auth))
        assert_revoked(await h.client.post("/v1/tokens", json=narrowed, headers=auth))  # was 200
