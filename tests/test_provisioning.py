"""The ``provision`` block: loading, rendering per user, target and ownership checks (pure), and
that a write, even a failed one, has the connection read afresh for decisions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.constraints import render_rules
from broker.errors import InvalidRequestError, UpstreamTimeoutError
from broker.policy import PolicySet, Provision, load_policy_dir, load_policy_sources
from broker.provisioning import (
    check_mcp_url,
    render_provisioning,
    select_entitlement,
)
from tests.inprocess import ROOT

ISSUER = "https://issuer.test/"
POLICY = b"""
rules:
  - id: members
    when: {claims: {org_id: {present: true}}}
    grant: {namespaces: my-app, metadata: {orgId: "{claims.org_id}"}}
    provision:
      namespace: "{claims.org_id}-ns"
      metadata: {orgId: "{claims.org_id}", userId: "{claims.sub}"}
      idPrefix: "{claims.org_id}.{claims.sub}-"
      mcpUrl: ["^https://(a|b)\\\\.example\\\\.com/mcp$"]
  - id: own
    grant: {namespaces: my-app, metadata: {userId: "{claims.sub}"}}
    provision:
      namespace: my-app
      metadata: {userId: "{claims.sub}"}
      idPrefix: "{claims.sub}-"
      servers: [github, "@acme/tools"]
      maxConnections: 3
  - id: no-provision
    grant: {namespaces: my-app}
"""


def policy() -> PolicySet:
    return load_policy_sources([("p.yaml", POLICY)])


def test_provision_block_loads() -> None:
    provision = policy().rules[1].provision
    assert isinstance(provision, Provision)
    assert provision.namespace.source == "my-app"
    assert provision.id_prefix.source == "{claims.sub}-"
    assert provision.servers == ("github", "@acme/tools")
    assert provision.mcp_url == ()
    assert provision.max_connections == 3
    assert policy().rules[2].provision is None


def test_entitlement_renders_claims() -> None:
    found = select_entitlement(policy(), ISSUER, {"sub": "alice"}, "my-app")
    assert found is not None
    assert found.rule_id == "own"
    assert found.metadata == {"userId": "alice"}
    assert found.id_prefix == "alice-"
    assert found.max_connections == 3


def test_first_rule_for_the_namespace_wins() -> None:
    claims = {"sub": "alice", "org_id": "acme"}
    found = select_entitlement(policy(), ISSUER, claims, "acme-ns")
    assert found is not None
    assert found.rule_id == "members"
    assert found.id_prefix == "acme.alice-"
    assert found.metadata == {"orgId": "acme", "userId": "alice"}
    assert select_entitlement(policy(), ISSUER, claims, "my-app") is not None
    assert select_entitlement(policy(), ISSUER, claims, "elsewhere") is None


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"sub": ""},
        {"sub": "alice-x"},  # holds the separator: could produce another user's prefix
        {"sub": "auth0|123"},  # not connection-id characters
        {"sub": True},
        {"sub": "x" * 300},
    ],
)
def test_unusable_claim_denied(claims: dict[str, Any]) -> None:
    assert select_entitlement(policy(), ISSUER, claims, "my-app") is None


def test_prefixes_of_two_users_never_overlap() -> None:
    prefixes = []
    for sub in ("alice", "alice.x", "al", "a_b", "42"):
        found = select_entitlement(policy(), ISSUER, {"sub": sub}, "my-app")
        assert found is not None
        prefixes.append(found.id_prefix)
    for one in prefixes:
        for other in prefixes:
            assert one == other or not other.startswith(one)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://server.smithery.ai/github", True),
        ("https://server.smithery.ai/github/mcp", True),
        ("https://server.smithery.ai/@acme/tools/mcp", True),
        ("https://server.smithery.ai/github/other", False),
        ("https://server.smithery.ai/gitlab/mcp", False),
        ("http://server.smithery.ai/github/mcp", False),
    ],
)
def test_servers_allowlist(url: str, allowed: bool) -> None:
    found = select_entitlement(policy(), ISSUER, {"sub": "alice"}, "my-app")
    assert found is not None
    assert found.allows_target(url) is allowed


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://a.example.com/mcp", True),
        ("https://b.example.com/mcp", True),
        ("https://c.example.com/mcp", False),
        ("https://a.example.com/mcp?x=1", False),
        ("https://a.example.com/mcp\n", True),  # JavaScript: $ does not match before \n...
    ],
)
def test_url_patterns(url: str, allowed: bool) -> None:
    found = select_entitlement(policy(), ISSUER, {"sub": "u", "org_id": "o"}, "o-ns")
    assert found is not None
    if url.endswith("\n"):
        # ...so a trailing newline is refused, as Smithery's JavaScript would.
        allowed = False
    assert found.allows_target(url) is allowed


def test_owns_needs_every_enforced_pair() -> None:
    found = select_entitlement(policy(), ISSUER, {"sub": "u", "org_id": "o"}, "o-ns")
    assert found is not None
    assert found.owns({"orgId": "o", "userId": "u", "extra": "x"})
    assert not found.owns({"orgId": "o"})
    assert not found.owns({"orgId": "o", "userId": "v"})
    assert not found.owns(None)


@pytest.mark.parametrize(
    "url",
    [
        "not a url",
        "ftp://x.example/mcp",
        "https://user:pw@x.example/mcp",
        "https:///mcp",
        "https://x.example:99999/mcp",
        "https://x.example/m cp",
        # Each passes ^https://[^/]+\.example\.com/mcp$ as a string while a WHATWG parser
        # (Smithery's) reads another host from it: attacker.net, 169.254.169.254, 10.0.0.1...
        "https://attacker.net\\.example.com/mcp",
        "https://169.254.169.254?.example.com/mcp",
        "https://10.0.0.1:8080?.example.com/mcp",
        "https://attacker.net#.example.com/mcp",
        "https://evil%2Eorg.example.com/mcp",
        "https://[::ffff:a00:1].example.com/mcp",
        "https://bu\u0308cher.example.com/mcp",
        "https://x.example.com/mcp\u2028",
    ],
)
def test_bad_url_is_invalid_request(url: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_mcp_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://tools.example.com/mcp",
        "https://tools.example.com/mcp?team=a%20b",
        "https://xn--bcher-kva.example.com:8443/mcp",
        "http://[2001:db8::1]/mcp",
        "https://tools.example.com",
    ],
)
def test_plain_urls_pass(url: str) -> None:
    assert check_mcp_url(url) == url


class EndlessList:
    """Smithery whose list never ends: the same cursor again, or a new one every page, each page
    holding connections the filter should have left out."""

    def __init__(self, *, loop: bool) -> None:
        self.loop = loop
        self.pages = 0

    async def fetch_connection_document(self, namespace: str, connection_id: str) -> Any:
        return None

    async def list_connections(self, *args: Any, **kwargs: Any) -> Any:
        from broker.upstream import ConnectionDocument, ConnectionPage

        self.pages += 1
        bob = ConnectionDocument(
            connectionId="bob-x", name="x", mcpUrl="https://x", metadata={"userId": "bob"}
        )
        cursor = "c" if self.loop else f"c{self.pages}"
        return ConnectionPage(connections=[bob], nextCursor=cursor)


@pytest.mark.parametrize("loop", [True, False])
async def test_a_list_that_never_ends_fails_the_create_instead_of_holding_it(loop: bool) -> None:
    from broker.errors import UpstreamProtocolError
    from broker.identity import Principal
    from broker.provisioning import ConnectionRequest, Provisioning

    smithery = EndlessList(loop=loop)
    provisioning = Provisioning(policy=policy, upstream=smithery)  # type: ignore[arg-type]
    alice = Principal(ISSUER, "alice", {"sub": "alice"}, 2e9)
    with pytest.raises(UpstreamProtocolError):
        await provisioning.put(
            alice,
            "my-app",
            "alice-x",
            ConnectionRequest(mcpUrl="https://server.smithery.ai/github"),
        )
    assert smithery.pages == (2 if loop else 11)  # maxConnections 3: one page, and ten more


def test_explanation_lists_applied_and_skipped() -> None:
    applied, skipped = render_provisioning(policy(), ISSUER, {"sub": "alice"})
    assert [a["rule"] for a in applied] == ["own"]
    assert applied[0]["idPrefix"] == "alice-"
    assert skipped == [("members", "the rule does not apply")]


def test_shipped_example_grant_and_provision_agree() -> None:
    """``own-connections``: what alice may create is exactly what her token may use."""
    shipped = load_policy_dir(ROOT / "policies")
    claims = {"sub": "alice", "email_verified": True}
    found = select_entitlement(shipped, ISSUER, claims, "my-app")
    assert found is not None
    assert found.rule_id == "own-connections"
    assert found.id_prefix == "alice-"
    assert found.max_connections == 5
    (applied,) = [
        a for a in render_rules(shipped, ISSUER, claims).applied if a.rule_id == found.rule_id
    ]
    assert applied.constraint["metadata"] == found.metadata
    assert applied.constraint["namespaces"] == found.namespace
    assert (
        select_entitlement(shipped, ISSUER, {"sub": "m", "email_verified": False}, "my-app") is None
    )


class FailingSmithery:
    """Smithery that may have applied a write, then timed out answering it."""

    def __init__(self) -> None:
        self.written: list[str] = []

    async def fetch_connection_document(self, namespace: str, connection_id: str) -> Any:
        return None

    async def list_connections(self, *args: Any, **kwargs: Any) -> Any:
        from broker.upstream import ConnectionPage

        return ConnectionPage(connections=[], nextCursor=None)

    async def put_connection(self, namespace: str, connection_id: str, body: Any) -> Any:
        self.written.append(connection_id)
        raise UpstreamTimeoutError("Smithery did not answer in time.")


async def test_a_write_that_failed_still_has_the_connection_read_afresh() -> None:
    from broker.identity import Principal
    from broker.provisioning import ConnectionRequest, Provisioning

    forgotten: list[tuple[str, str]] = []
    smithery = FailingSmithery()
    provisioning = Provisioning(
        policy=policy,
        upstream=smithery,  # type: ignore[arg-type]
        changed=lambda namespace, connection_id: forgotten.append((namespace, connection_id)),
    )
    alice = Principal(ISSUER, "alice", {"sub": "alice"}, 2e9)
    with pytest.raises(UpstreamTimeoutError):
        await provisioning.put(
            alice,
            "my-app",
            "alice-x",
            ConnectionRequest(mcpUrl="https://server.smithery.ai/github"),
        )
    assert smithery.written == ["alice-x"]
    assert forgotten == [("my-app", "alice-x")]


async def test_one_create_at_a_time_per_user_even_as_a_waiter_takes_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The count against maxConnections and the create must not interleave. The per-process
    lock's entry was dropped when its holder left with a waiter queued (an unlocked lock), so
    a create arriving just then got a fresh lock and ran beside the waiter."""
    from broker.identity import Principal
    from broker.provisioning import ConnectionRequest, Provisioning

    inside = peak = 0
    first_inside = asyncio.Event()
    release_first = asyncio.Event()

    async def counting_put(self: Provisioning, *args: Any) -> tuple[Any, bool]:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        if not first_inside.is_set():
            first_inside.set()
            await release_first.wait()
        for _ in range(3):  # list, count, create: several awaits
            await asyncio.sleep(0)
        inside -= 1
        return None, True

    monkeypatch.setattr(Provisioning, "_put_locked", counting_put)
    provisioning = Provisioning(policy=policy, upstream=None)  # type: ignore[arg-type]
    alice = Principal(ISSUER, "alice", {"sub": "alice"}, 2e9)
    request = ConnectionRequest(mcpUrl="https://server.smithery.ai/github")
    later: list[asyncio.Task[Any]] = []

    async def first() -> None:
        await provisioning.put(alice, "my-app", "alice-1", request)
        # A third create arrives as the first leaves, before the queued second has run.
        later.append(asyncio.create_task(provisioning.put(alice, "my-app", "alice-3", request)))

    one = asyncio.create_task(first())
    await first_inside.wait()
    two = asyncio.create_task(provisioning.put(alice, "my-app", "alice-2", request))
    await asyncio.sleep(0)  # the second queues on the lock
    release_first.set()
    await one
    await asyncio.gather(two, *later)
    assert peak == 1
    assert len(provisioning._locks) == 0  # nothing kept once nobody holds or waits
