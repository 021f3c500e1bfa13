"""Each warning kind of ``broker policy check`` with its exact message."""

from __future__ import annotations

import pytest

from broker.policy import load_policy_dir, load_policy_sources
from broker.policy_lint import lint_policy_set, shared_claim_warnings
from tests.test_policy import EXAMPLES


def warnings_of(text: str) -> list[str]:
    policy_set = load_policy_sources([("w.yaml", text.encode())])
    return [
        f"{w.file}:{w.line}:{w.column}: {w.rule_id}: {w.path}: {w.message}"
        for w in lint_policy_set(policy_set)
    ]


def test_example_policies_have_no_warnings() -> None:
    assert lint_policy_set(load_policy_dir(EXAMPLES)) == []


GOOD = "namespaces: a, metadata: {userId: '{claims.sub}'}, ttl: 15m"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"rules:\n  - {{id: a, grant: {{{GOOD}}}}}\n  - {{id: b, grant: {{{GOOD}}}}}\n",
            ["w.yaml:3:5: b: $.rules[1]: duplicates rule a (same conditions and grant)"],
        ),
        (
            "rules:\n"
            "  - {id: wide, grant: {namespaces: [a, b], metadata: {team: x}}}\n"
            "  - {id: narrow, when: {claims: {admin: true}}, grant: {namespaces: a,"
            " metadata: {team: x}, operations: read}}\n",
            [
                "w.yaml:3:5: narrow: $.rules[1]: shadowed by rule wide: it applies whenever this "
                "rule does and grants at least as much"
            ],
        ),
        (
            f"rules:\n  - {{id: r, when: {{claims: {{role: {{equals: a, in: [b, c]}}}}}}, "
            f"grant: {{{GOOD}}}}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].when.claims: the conditions can never hold: no value of "
                "claim role satisfies every condition"
            ],
        ),
        (
            f"rules:\n  - {{id: r, when: {{claims: {{n: {{type: string, equals: 3}}}}}}, "
            f"grant: {{{GOOD}}}}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].when.claims: the conditions can never hold: "
                "claim n must be a string but is compared with other types"
            ],
        ),
        (
            f"rules:\n  - {{id: r, grant: {{{GOOD}, rpcReqMatch: {{method: '^(initialize|tools/"
            "list|tools/call)$', params.name: 'search'}}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].grant.rpcReqMatch: blocks initialize and tools/list, "
                "and no other rule for the same users and connections allows them: MCP clients "
                "cannot start a session",
                "w.yaml:2:5: r: $.rules[0].grant.rpcReqMatch.params.name: pattern 'search' is not "
                "anchored: it also matches any tool whose name merely contains it; write ^(...)$",
            ],
        ),
        (
            "rules:\n  - {id: r, grant: {metadata: {userId: '{claims.sub}'}, ttl: 15m}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].grant: no namespaces: the grant reaches every namespace "
                "the API key can reach"
            ],
        ),
        (
            "rules:\n  - {id: r, grant: {namespaces: a, ttl: 15m}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].grant: no metadata: the grant covers every connection "
                "in its namespaces"
            ],
        ),
        (
            "rules:\n  - {id: r, grant: {namespaces: a, metadata: {u: x}, operations: execute, "
            "ttl: 2h}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].grant.ttl: execute grant lives 7200s; more than 1h is "
                "rarely needed and a token cannot be revoked"
            ],
        ),
        (
            "rules:\n  - {id: r, grant: {namespaces: a, metadata: {org: '{claims.org}'}, "
            "ttl: 15m}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].grant.metadata.org: claim org is interpolated but not "
                "guaranteed to be a string; add {type: string} (or equals/in with strings) under "
                "when.claims.org"
            ],
        ),
        (
            "rules:\n  - {id: r, when: {claims: {org: {type: string}, team: {type: string}}}, "
            "grant: {namespaces: a, metadata: {scope: '{claims.org}/{claims.team}'}, "
            "ttl: 15m}}\n",
            [
                "w.yaml:2:5: r: $.rules[0].grant.metadata.scope: joins claims org, team in one "
                "value: values holding the text between them can collide (acme + eng/x and "
                "acme/eng + x both give acme/eng/x); give each claim a key of its own"
            ],
        ),
    ],
    ids=[
        "duplicate",
        "shadowed",
        "never-holds",
        "never-holds-type",
        "session-and-unanchored",
        "no-namespaces",
        "no-metadata",
        "long-execute-ttl",
        "non-string-claim",
        "joined-claims",
    ],
)
def test_warning_kind(text: str, expected: list[str]) -> None:
    assert warnings_of(text) == expected


def test_session_rule_next_to_tool_rule_is_not_warned() -> None:
    text = (
        "rules:\n"
        "  - {id: s, grant: {namespaces: a, metadata: {c: x}, ttl: 5m,"
        " rpcReqMatch: {method: '^(initialize|tools/list)$'}}}\n"
        "  - {id: t, grant: {namespaces: a, metadata: {c: x}, ttl: 5m,"
        " rpcReqMatch: {params.name: '^get$'}}}\n"
    )
    assert warnings_of(text) == []


A, B = "https://a.example/", "https://b.example/"


def test_claims_shared_across_issuers_are_warned_with_two_issuers_only() -> None:
    policy_set = load_policy_dir(EXAMPLES)
    assert shared_claim_warnings(policy_set, (A,)) == []
    warned = {w.rule_id: w.message for w in shared_claim_warnings(policy_set, (A, B))}
    # sub and org_id go into metadata; the support rules' metadata is literal.
    assert set(warned) == {
        "own-connections",
        "workspace-connections",
        "workspace-admin-connections",
    }
    assert warned["own-connections"] == (
        "applies to tokens of 2 issuers and interpolates claims into grant.metadata and "
        "provision: users of two issuers with the same claim value share these connections; "
        "add when.issuer"
    )


@pytest.mark.parametrize(
    ("when", "warned"),
    [
        ("", True),
        (f"when: {{issuer: '{A}'}}", False),
        (f"when: {{issuer: ['{A}', '{B}']}}", True),
        (f"when: {{issuer: ['{A}', 'https://c.example/']}}", False),  # c is not configured
    ],
)
def test_when_issuer_keeps_one_issuers_users_apart(when: str, warned: bool) -> None:
    text = f"rules:\n  - id: r\n    {when}\n    grant: {{namespaces: 'ns-{{claims.sub}}'}}\n"
    policy_set = load_policy_sources([("w.yaml", text.replace("    \n", "").encode())])
    assert bool(shared_claim_warnings(policy_set, (A, B))) is warned
