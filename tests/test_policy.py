"""Policy loading, validation (every error at once, with positions) and rule selection."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from broker.errors import PolicyError
from broker.policy import (
    ClaimTest,
    PolicySet,
    evaluate_test,
    load_policy_dir,
    load_policy_sources,
    match_rule,
    parse_ttl,
    same_scalar,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "policies"
INVALID = Path(__file__).parent / "fixtures" / "policies" / "invalid"


def load(text: str, name: str = "p.yaml") -> PolicySet:
    return load_policy_sources([(name, text.encode())])


def problems_of(text: str, name: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(text, name)
    return [str(p) for p in caught.value.problems]


def expected_problems(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ").rstrip("\n")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


# --- the shipped examples -----------------------------------------------------------------------


def test_example_policies_load() -> None:
    policy_set = load_policy_dir(EXAMPLES)
    assert [rule.id for rule in policy_set.rules] == [
        "own-connections",
        "support-github-session",
        "support-github-readonly",
        "workspace-connections",
        "workspace-admin-connections",
    ]
    assert len(policy_set.revision) == 16


def test_revision_is_a_content_hash(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "p")
    first = load_policy_dir(tmp_path / "p").revision
    assert load_policy_dir(tmp_path / "p").revision == first
    target = tmp_path / "p" / "per-user-connections.yaml"
    target.write_text(target.read_text().replace("ttl: 15m", "ttl: 10m"))
    assert load_policy_dir(tmp_path / "p").revision != first


# --- invalid fixtures: each yields exactly its expected messages --------------------------------

INVALID_FIXTURES = sorted(INVALID.glob("*.yaml"))


@pytest.mark.parametrize("fixture", INVALID_FIXTURES, ids=[p.stem for p in INVALID_FIXTURES])
def test_invalid_fixture_yields_exact_messages(fixture: Path) -> None:
    expected = expected_problems(fixture)
    assert expected, f"{fixture.name} declares no '# expect:' lines"
    with pytest.raises(PolicyError) as caught:
        load_policy_sources([(fixture.name, fixture.read_bytes())])
    actual = [str(p) for p in caught.value.problems]
    pattern_expected = [e for e in expected if e.endswith("PATTERN_ERROR")]
    plain_expected = [e for e in expected if not e.endswith("PATTERN_ERROR")]
    # Pattern-compiler wording belongs to rpcmatch's tests; here only its location is pinned.
    for prefix in (e.removesuffix("PATTERN_ERROR") for e in pattern_expected):
        assert sum(a.startswith(prefix) for a in actual) == 1, (prefix, actual)
    rest = [a for a in actual if not any(a.startswith(e[:-13]) for e in pattern_expected)]
    assert sorted(rest) == sorted(plain_expected)


def test_all_errors_in_all_files_reported_at_once(tmp_path: Path) -> None:
    for fixture in INVALID_FIXTURES:
        shutil.copy(fixture, tmp_path / fixture.name)
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(tmp_path)
    expected_total = sum(len(expected_problems(f)) for f in INVALID_FIXTURES)
    assert len(caught.value.problems) == expected_total
    assert {Path(p.file).name for p in caught.value.problems} == {f.name for f in INVALID_FIXTURES}


def test_one_invalid_file_rejects_the_whole_set(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "p")
    (tmp_path / "p" / "zz-broken.yaml").write_text(
        "rules:\n  - id: x\n    grant: {namespaces: a, ttl: 2d}\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(tmp_path / "p")
    assert [str(p).split(": ", 1)[1] for p in caught.value.problems] == [
        "x: $.rules[0].grant.ttl: must not exceed 24h (Smithery's maximum)"
    ]


def test_missing_directory_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="1 problem"):
        load_policy_dir(tmp_path / "nope")
    with pytest.raises(PolicyError) as caught:
        load_policy_dir(tmp_path)
    assert "no policy files" in str(caught.value.problems[0])


def test_duplicate_id_across_files_names_first_file() -> None:
    rule = b"rules:\n  - {id: same, grant: {namespaces: a}}\n"
    with pytest.raises(PolicyError) as caught:
        load_policy_sources([("a.yaml", rule), ("b.yaml", rule)])
    assert [str(p) for p in caught.value.problems] == [
        "b.yaml:2:10: same: $.rules[0].id: duplicate rule id (first defined in a.yaml)"
    ]


def test_yaml_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("rules: *a8")
    problems = problems_of("\n".join(lines))
    assert problems == ["p.yaml: -: $: document expands to more than 100000 nodes"]


def test_non_utf8_file_is_refused() -> None:
    with pytest.raises(PolicyError, match="1 problem"):
        load_policy_sources([("p.yaml", b"rules: \xff\n")])


def test_condition_forms_are_parsed() -> None:
    policy_set = load(
        """
rules:
  - id: r
    when:
      issuer: https://idp.example/
      claims:
        email_verified: true
        org_role: { in: [admin, owner] }
        groups: { contains: support }
        tenant: { present: true }
        level: { equals: 3 }
    grant: { namespaces: my-app }
"""
    )
    rule = policy_set.rules[0]
    assert rule.issuers == ("https://idp.example/",)
    assert rule.claims == (
        ClaimTest("email_verified", "equals", True),
        ClaimTest("org_role", "in", ("admin", "owner")),
        ClaimTest("groups", "contains", "support"),
        ClaimTest("tenant", "present", True),
        ClaimTest("level", "equals", 3),
    )


def test_present_false_cannot_combine() -> None:
    problems = problems_of(
        "rules:\n  - id: r\n    when: {claims: {x: {present: false, equals: 1}}}\n"
        "    grant: {namespaces: a}\n"
    )
    assert problems == [
        "p.yaml:3:24: r: $.rules[0].when.claims.x: present: false cannot be combined with "
        "other operators"
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90),
        ("90", 90),
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        (60.0, 60),
        ("1.5h", None),
        ("1w", None),
        (True, None),
        ("", None),
        (1.5, None),
        ([], None),
    ],
)
def test_ttl_syntax(value: Any, seconds: int | None) -> None:
    assert parse_ttl(value) == seconds


def test_ttl_boundary_24h_allowed_above_refused() -> None:
    assert (
        load("rules: [{id: r, grant: {namespaces: a, ttl: 86400}}]").rules[0].grant.ttl_seconds
        == 86400
    )
    assert problems_of("rules: [{id: r, grant: {namespaces: a, ttl: 86401}}]") == [
        "p.yaml:1:45: r: $.rules[0].grant.ttl: must not exceed 24h (Smithery's maximum)"
    ]


def test_rpc_key_and_pattern_length_limits() -> None:
    long_key = "params." + "k" * 200
    problems = problems_of(
        f'rules: [{{id: r, grant: {{namespaces: a, rpcReqMatch: {{"{long_key}": x, '
        f'method: "{"a" * 501}"}}}}}}]'
    )
    assert [p.split(": ", 3)[3] for p in problems] == [
        "key is longer than 200 characters",
        "pattern is longer than 500 characters",
    ]


def test_rpc_length_limits_count_utf16_units_like_smithery() -> None:
    """JavaScript's ``length``: a character outside the BMP (an emoji) counts 2."""
    emoji = "\U0001f600"
    key = "params." + emoji * 97  # 104 code points, 201 UTF-16 units
    problems = problems_of(
        f'rules: [{{id: r, grant: {{namespaces: a, rpcReqMatch: {{"{key}": x, '
        f'method: "{emoji * 251}"}}}}}}]'
    )
    assert [p.split(": ", 3)[3] for p in problems] == [
        "key is longer than 200 characters",
        "pattern is longer than 500 characters",
    ]
    at_limit = load(
        f'rules: [{{id: r, grant: {{namespaces: a, rpcReqMatch: {{method: "{emoji * 250}"}}}}}}]'
    )
    assert at_limit.rules[0].id == "r"


# --- selection: decision tables -----------------------------------------------------------------

SELECT = load(
    """
rules:
  - id: verified
    when: {claims: {email_verified: true}}
    grant: {namespaces: a}
  - id: admins
    when: {claims: {role: {in: [admin, owner]}}}
    grant: {namespaces: a}
  - id: support
    when: {claims: {groups: {contains: support}}}
    grant: {namespaces: a}
  - id: scoped
    when: {claims: {scope: {contains: "broker:use"}}}
    grant: {namespaces: a}
  - id: tenant-a
    when: {issuer: "https://a.example/", claims: {tenant: {present: true}}}
    grant: {namespaces: a}
  - id: no-tenant
    when: {claims: {tenant: {present: false}}}
    grant: {namespaces: a}
  - id: nested
    when: {claims: {org.id: "o1"}}
    grant: {namespaces: a}
"""
)


def applies(rule_id: str, claims: dict[str, Any], issuer: str = "https://idp.example/") -> bool:
    rule = SELECT.rule(rule_id)
    assert rule is not None
    return match_rule(rule, issuer, claims) is None


@pytest.mark.parametrize(
    ("rule_id", "claims", "issuer"),
    [
        ("verified", {"email_verified": True}, "https://idp.example/"),
        ("admins", {"role": "owner"}, "https://idp.example/"),
        ("support", {"groups": ["dev", "support"]}, "https://idp.example/"),
        ("scoped", {"scope": "openid broker:use profile"}, "https://idp.example/"),
        ("tenant-a", {"tenant": "t1"}, "https://a.example/"),
        ("no-tenant", {}, "https://idp.example/"),
        ("nested", {"org": {"id": "o1"}}, "https://idp.example/"),
        ("nested", {"org.id": "o1"}, "https://idp.example/"),
    ],
)
def test_rule_allowed(rule_id: str, claims: dict[str, Any], issuer: str) -> None:
    assert applies(rule_id, claims, issuer)


@pytest.mark.parametrize(
    ("rule_id", "claims", "issuer"),
    [
        ("verified", {"email_verified": "true"}, "https://idp.example/"),
        ("verified", {"email_verified": 1}, "https://idp.example/"),
        ("verified", {}, "https://idp.example/"),
        ("admins", {"role": "member"}, "https://idp.example/"),
        ("admins", {"role": ["admin"]}, "https://idp.example/"),
        ("support", {"groups": ["supporters"]}, "https://idp.example/"),
        ("support", {"groups": "support-team"}, "https://idp.example/"),
        ("scoped", {"scope": "openid broker:user"}, "https://idp.example/"),
        ("tenant-a", {"tenant": "t1"}, "https://b.example/"),
        ("no-tenant", {"tenant": None}, "https://idp.example/"),
        ("nested", {"org": {"id": "o2"}}, "https://idp.example/"),
        ("nested", {"org": "o1"}, "https://idp.example/"),
    ],
)
def test_rule_denied(rule_id: str, claims: dict[str, Any], issuer: str) -> None:
    assert not applies(rule_id, claims, issuer)


def test_denial_reasons_are_specific() -> None:
    assert evaluate_test(ClaimTest("role", "in", ("admin",)), {"role": "x"}) == (
        "claim role is not one of ['admin']"
    )
    assert evaluate_test(ClaimTest("g", "contains", "s"), {}) == "claim g is missing"
    assert evaluate_test(ClaimTest("g", "present", False), {"g": 1}) == "claim g is present"


@pytest.mark.parametrize(
    ("left", "right", "same"),
    [(True, True, True), (True, 1, False), (1, 1.0, True), ("1", 1, False), (0, False, False)],
)
def test_scalar_equality_is_json_typed(left: Any, right: Any, same: bool) -> None:
    assert same_scalar(left, right) is same


PLACEHOLDER_CONTEXT = (
    "a {claims...} placeholder must stand where its value reads as plain text: not inside "
    "[...], a {n,m} repeat, a group's (? or (?<name>, or after an escape that takes more "
    "characters (\\x, \\u, \\c, \\k, \\p, a backreference)"
)


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        (r"^x{{claims.n}}$", True),  # n = "1," makes x{1,}: a repeat, not the text x{1,}
        (r"^x{1,{claims.n}}$", True),
        (r"^[{claims.sub}]+$", True),  # sub = "a-z" makes a range
        (r"^\x4{claims.h}$", True),  # h = "1" completes \x41
        (r"^\1{claims.n}$", True),  # n = "0" makes \10
        (r"^\c{claims.a}$", True),
        (r"^(?<{claims.x}>a)$", True),  # x = "!" makes a lookbehind, any name no text
        (r"^(?<n{claims.x}>a)$", True),
        (r"^(?{claims.x}a)$", True),  # x = "=" makes a lookahead
        (r"^(?<n>{claims.sub})$", False),
        (r"^\(?<{claims.sub}$", False),  # an escaped parenthesis: text
        (r"^user-{claims.sub}$", False),
        (r"^[a-z]{claims.sub}$", False),
        (r"^x{1,2}{claims.sub}$", False),
        (r"^\x41{claims.sub}$", False),
        (r"^\cA{claims.sub}$", False),
        (r"^\[{claims.sub}\]$", False),
        (r"^a\{{claims.sub}$", False),
        (r"^{claims.org}/{claims.team}$", False),
    ],
)
def test_placeholders_only_where_a_value_reads_as_text(pattern: str, refused: bool) -> None:
    """The claim's value is escaped, but digits, ',' and '-' are text only in a literal
    position: elsewhere a user's claim could widen the pattern."""
    source = (
        "rules:\n  - id: r\n    grant:\n      namespaces: a\n"
        f"      rpcReqMatch: {{params.name: '{pattern}'}}\n"
    )
    if not refused:
        load_policy_sources([("p.yaml", source.encode())])
        return
    with pytest.raises(PolicyError) as caught:
        load_policy_sources([("p.yaml", source.encode())])
    assert [p.message for p in caught.value.problems] == [PLACEHOLDER_CONTEXT]
