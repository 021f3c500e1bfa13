"""Rendering claims into Smithery Constraints: golden cases, escaping, fail-closed interpolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import rpcmatch
from broker.constraints import constraints_digest, plan_mint, render_rules
from broker.policy import load_policy_dir, load_policy_sources

EXAMPLES = load_policy_dir(Path(__file__).resolve().parent.parent / "policies")
ISSUER = "https://idp.example/"


def plan_for(
    claims: dict[str, Any], policy_set: Any = EXAMPLES
) -> tuple[list[str], list[dict[str, Any]]]:
    rendering = render_rules(policy_set, ISSUER, claims)
    plan = plan_mint(rendering.applied)
    return list(plan.rule_ids), list(plan.constraints)


def test_per_user_golden() -> None:
    assert plan_for({"sub": "alice", "email_verified": True}) == (
        ["own-connections"],
        [
            {
                "namespaces": "my-app",
                "resources": "connections",
                "operations": ["read", "execute"],
                "metadata": {"userId": "alice"},
                "ttl": 900,
            }
        ],
    )


def test_workspace_admin_golden() -> None:
    assert plan_for({"sub": "w", "org_id": "acme", "org_role": "admin"}) == (
        ["workspace-connections", "workspace-admin-connections"],
        [
            {
                "namespaces": "my-app",
                "resources": "connections",
                "operations": ["read", "execute"],
                "metadata": {"orgId": "acme", "visibility": "workspace"},
                "ttl": 1800,
            },
            {
                "namespaces": "my-app",
                "resources": "connections",
                "operations": ["read", "execute"],
                "metadata": {"orgId": "acme", "visibility": "admins"},
            },
        ],
    )


def test_support_golden_single_ttl_is_the_shortest() -> None:
    rule_ids, constraints = plan_for({"sub": "sam", "groups": ["support"], "email_verified": True})
    assert rule_ids == ["own-connections", "support-github-session", "support-github-readonly"]
    assert [c.get("ttl") for c in constraints] == [600, None, None]
    assert constraints[2]["rpcReqMatch"] == {
        "method": "^tools/call$",
        "params.name": "^(search_issues|get_issue)$",
    }
    assert constraints[2]["metadata"] == {"connectionId": "support-github"}


def test_no_rule_applies_to_unverified_user() -> None:
    rendering = render_rules(EXAMPLES, ISSUER, {"sub": "mallory"})
    assert rendering.applied == ()
    assert {s.rule_id for s in rendering.skipped} == {r.id for r in EXAMPLES.rules}


TEMPLATED = load_policy_sources(
    [
        (
            "t.yaml",
            b"""
rules:
  - id: owner-only
    grant:
      namespaces: ["{claims.tenant}-prod", shared]
      metadata: [{userId: "{claims.sub}"}, {team: "{claims.team}"}]
      rpcReqMatch:
        params.arguments.owner: "^{claims.sub}$"
""",
        )
    ]
)


def test_interpolation_fills_namespaces_metadata_and_patterns() -> None:
    _, constraints = plan_for({"sub": "alice", "tenant": "acme", "team": 7}, TEMPLATED)
    assert constraints == [
        {
            "namespaces": ["acme-prod", "shared"],
            "metadata": [{"userId": "alice"}, {"team": "7"}],
            "rpcReqMatch": {"params.arguments.owner": "^alice$"},
        }
    ]


def test_subject_with_regex_metacharacters_cannot_widen_pattern() -> None:
    _, constraints = plan_for({"sub": "a.b|c", "tenant": "t", "team": "x"}, TEMPLATED)
    pattern = constraints[0]["rpcReqMatch"]["params.arguments.owner"]
    compiled = rpcmatch.compile_pattern(pattern)
    assert compiled.search("a.b|c")
    for other in ("c", "axb", "a.b", "aXb|c", "a.b|cc", "a.b|c\n"):
        assert not compiled.search(other), other


def test_metadata_values_are_not_escaped() -> None:
    _, constraints = plan_for({"sub": "a.b|c", "tenant": "t", "team": "x"}, TEMPLATED)
    assert constraints[0]["metadata"][0] == {"userId": "a.b|c"}


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "a", "team": "x"}, "claim tenant is missing"),
        ({"sub": "a", "tenant": ["t"], "team": "x"}, "claim tenant is not a string or number"),
        ({"sub": "a", "tenant": True, "team": "x"}, "claim tenant is not a string or number"),
        ({"sub": "a", "tenant": "", "team": "x"}, "claim tenant is empty"),
        (
            {"sub": "a", "tenant": "t" * 257, "team": "x"},
            "claim tenant is longer than 256 characters",
        ),
        ({"sub": "a", "tenant": float("nan"), "team": "x"}, "claim tenant is not a finite number"),
    ],
)
def test_rule_needing_unusable_claim_does_not_apply(claims: dict[str, Any], reason: str) -> None:
    rendering = render_rules(TEMPLATED, ISSUER, claims)
    assert rendering.applied == ()
    assert [(s.rule_id, s.reason) for s in rendering.skipped] == [("owner-only", reason)]


def test_rendered_pattern_over_smithery_limit_in_utf16_units_does_not_apply() -> None:
    """Smithery counts ``rpcReqMatch`` patterns as JavaScript does: an emoji is 2 units. 250
    emoji (within the 256-character claim limit) make ``^...$`` 502 units, which Smithery
    would refuse: the rule does not apply, rather than failing the whole mint upstream."""
    claims = {"tenant": "t", "team": "x"}
    rendering = render_rules(TEMPLATED, ISSUER, {**claims, "sub": "\U0001f600" * 250})
    assert rendering.applied == ()
    assert [(s.rule_id, s.reason) for s in rendering.skipped] == [
        ("owner-only", "rpcReqMatch params.arguments.owner exceeds 500 characters")
    ]
    fits = render_rules(TEMPLATED, ISSUER, {**claims, "sub": "\U0001f600" * 249})
    assert [a.rule_id for a in fits.applied] == ["owner-only"]  # 500 units exactly


def test_digest_is_canonical_and_sensitive() -> None:
    a = [{"namespaces": "x", "metadata": {"a": "1", "b": "2"}}]
    b = [{"metadata": {"b": "2", "a": "1"}, "namespaces": "x"}]
    c = [{"namespaces": "x", "metadata": {"a": "1", "b": "3"}}]
    assert constraints_digest(a) == constraints_digest(b)
    assert constraints_digest(a) != constraints_digest(c)


def test_plan_needs_a_rule() -> None:
    with pytest.raises(ValueError, match="at least one"):
        plan_mint([])
