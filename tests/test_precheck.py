"""The precheck decision as decision tables (``..._allowed`` / ``..._denied``)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from broker.constraints import AppliedRule
from broker.precheck import Decision, Target, compile_constraints, decide
from broker.rpcmatch import RpcMatcher


def rules(*constraints: tuple[str, dict[str, Any]]) -> Any:
    return compile_constraints([AppliedRule(rule, c, None) for rule, c in constraints])


def call(tool: str, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
NOTE = {"jsonrpc": "2.0", "method": "notifications/initialized"}

OWN = (
    "own",
    {
        "namespaces": "my-app",
        "resources": "connections",
        "operations": ["read", "execute"],
        "metadata": {"userId": "alice"},
    },
)
SUPPORT_SESSION = (
    "support-session",
    {
        "namespaces": "my-app",
        "resources": "connections",
        "operations": ["read", "execute"],
        "metadata": {"connectionId": "support-github"},
        "rpcReqMatch": {"method": "^(initialize|notifications/initialized|ping|tools/list)$"},
    },
)
SUPPORT_READ = (
    "support-read",
    {
        "namespaces": "my-app",
        "resources": "connections",
        "operations": ["read", "execute"],
        "metadata": {"connectionId": "support-github"},
        "rpcReqMatch": {"method": "^tools/call$", "params.name": "^(search_issues|get_issue)$"},
    },
)
READ_ONLY = ("read-only", {"namespaces": ["my-app", "other"], "operations": "read"})
WORKSPACE = (
    "workspace",
    {"namespaces": "my-app", "metadata": [{"orgId": "acme"}, {"team": "core"}]},
)
ARG = (
    "arg",
    {
        "rpcReqMatch": {
            "params.arguments.repo": "^acme/",
            "params.arguments.n": "^[0-9]+$",
            "params.arguments.tags.0": "^bug$",
        }
    },
)
ALICE = Target("my-app", {"userId": "alice"})
SUPPORT = Target("my-app", {"connectionId": "support-github"})


@pytest.mark.parametrize(
    ("constraints", "target", "message", "rule"),
    [
        ([OWN], ALICE, call("delete_repository", name="x"), "own"),
        ([OWN], Target("my-app", {"userId": "alice", "extra": "x"}), LIST, "own"),
        ([SUPPORT_SESSION, SUPPORT_READ], SUPPORT, LIST, "support-session"),
        ([SUPPORT_SESSION, SUPPORT_READ], SUPPORT, INIT, "support-session"),
        ([SUPPORT_SESSION, SUPPORT_READ], SUPPORT, NOTE, "support-session"),
        ([SUPPORT_SESSION, SUPPORT_READ], SUPPORT, call("get_issue", number=1), "support-read"),
        ([OWN, SUPPORT_READ], SUPPORT, call("search_issues", query="q"), "support-read"),
        ([WORKSPACE], Target("my-app", {"team": "core"}), LIST, "workspace"),
        ([WORKSPACE], Target("my-app", {"orgId": "acme", "team": "x"}), LIST, "workspace"),
        ([ARG], Target("any"), call("t", repo="acme/api", n=42, tags=["bug"]), "arg"),
        ([ARG], Target("any"), call("t", repo="acme/x", n="7", tags=["bug", "p1"]), "arg"),
        # an all-digit segment also reads an object's key, as JavaScript's obj["0"] does
        ([ARG], Target("any"), call("t", repo="acme/x", n=1, tags={"0": "bug"}), "arg"),
    ],
)
def test_message_allowed(
    constraints: Any, target: Target, message: dict[str, Any], rule: str
) -> None:
    decision = decide(rules(*constraints), target, message)
    assert decision == Decision(True, rule)


@pytest.mark.parametrize(
    ("constraints", "target", "message", "expected"),
    [
        ([OWN], Target("my-app", {"userId": "bob"}), LIST, [("own", "metadata", None, None)]),
        ([OWN], Target("my-app", None), LIST, [("own", "metadata", None, None)]),
        ([OWN], Target("other", {"userId": "alice"}), LIST, [("own", "namespace", None, None)]),
        ([READ_ONLY], Target("my-app"), LIST, [("read-only", "operation", None, None)]),
        (
            [("servers", {"resources": "servers"})],
            Target("x"),
            LIST,
            [("servers", "resource", None, None)],
        ),
        (
            [SUPPORT_SESSION, SUPPORT_READ],
            SUPPORT,
            call("delete_repository", name="x"),
            [
                (
                    "support-session",
                    "rpc_pattern_mismatch",
                    "method",
                    "^(initialize|notifications/initialized|ping|tools/list)$",
                ),
                (
                    "support-read",
                    "rpc_pattern_mismatch",
                    "params.name",
                    "^(search_issues|get_issue)$",
                ),
            ],
        ),
        (
            [SUPPORT_READ],
            SUPPORT,
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call"},
            [("support-read", "rpc_field_missing", "params.name", "^(search_issues|get_issue)$")],
        ),
        (
            [SUPPORT_READ],
            SUPPORT,
            call("get_issue\n"),
            [
                (
                    "support-read",
                    "rpc_pattern_mismatch",
                    "params.name",
                    "^(search_issues|get_issue)$",
                )
            ],
        ),
        (
            [SUPPORT_READ],
            SUPPORT,
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ["get_issue"]}},
            [("support-read", "rpc_field_missing", "params.name", "^(search_issues|get_issue)$")],
        ),
        (
            [SUPPORT_READ],
            SUPPORT,
            INIT,
            [("support-read", "rpc_pattern_mismatch", "method", "^tools/call$")],
        ),
        (
            [WORKSPACE],
            Target("my-app", {"orgId": "other"}),
            LIST,
            [("workspace", "metadata", None, None)],
        ),
        (
            [ARG],
            Target("any"),
            call("t", repo="acme/x", n="7a", tags=["bug"]),
            [("arg", "rpc_pattern_mismatch", "params.arguments.n", "^[0-9]+$")],
        ),
        ([], Target("my-app"), LIST, [(None, "no_matching_rule", None, None)]),
    ],
)
def test_message_denied(
    constraints: Any, target: Target, message: dict[str, Any], expected: list[Any]
) -> None:
    decision = decide(rules(*constraints), target, message)
    assert not decision.allowed
    assert decision.rule is None
    assert [(d.rule, d.reason, d.field, d.pattern) for d in decision.reasons] == expected


def test_metadata_value_must_be_a_string_equal() -> None:
    decision = decide(rules(("r", {"metadata": {"n": "1"}})), Target("x", {"n": 1}), LIST)
    assert not decision.allowed


def test_lifecycle_exemption_allowed_only_when_switched_on() -> None:
    constraints = rules(SUPPORT_READ)
    for message in (INIT, NOTE, {"jsonrpc": "2.0", "id": 3, "method": "ping"}):
        assert not decide(constraints, SUPPORT, message).allowed
        assert decide(constraints, SUPPORT, message, exempt_lifecycle=True).allowed
    # the exemption skips rpcReqMatch only, never metadata
    assert not decide(constraints, ALICE, INIT, exempt_lifecycle=True).allowed
    assert not decide(constraints, SUPPORT, LIST, exempt_lifecycle=True).allowed


def test_denial_json_names_rule_field_and_pattern() -> None:
    decision = decide(rules(SUPPORT_READ), SUPPORT, call("delete_repository"))
    assert [d.as_json() for d in decision.reasons] == [
        {
            "rule": "support-read",
            "reason": "rpc_pattern_mismatch",
            "detail": "params.name does not match ^(search_issues|get_issue)$",
            "field": "params.name",
            "pattern": "^(search_issues|get_issue)$",
        }
    ]


@pytest.mark.parametrize(
    "message",
    [
        LIST,
        INIT,
        NOTE,
        call("get_issue"),
        call("delete_repository"),
        call("get_issue\n"),
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ["get_issue"]}},
        call("t", repo="acme/x", n=7, tags=["bug"]),
        call("t", repo="acme/x", n="7a", tags=[]),
    ],
)
def test_fast_match_agrees_with_explained_match(message: dict[str, Any]) -> None:
    for _, constraint in (SUPPORT_SESSION, SUPPORT_READ, ARG):
        matcher = compile_constraints([AppliedRule("r", constraint, None)])[0].rpc
        assert matcher is not None
        assert matcher.matches(message) is (matcher.first_mismatch(message) is None)


def reference_decision(
    applied: list[AppliedRule], target: Target, message: dict[str, Any], exempt: bool
) -> tuple[bool, str | None, list[tuple[str | None, str, str | None, str | None]]]:
    """The decision written the plain way, rule by rule with ``RpcMatcher.first_mismatch``:
    what ``decide`` (which shares path lookups and pattern runs across rules) must agree with."""
    reasons: list[tuple[str | None, str, str | None, str | None]] = []
    method = message.get("method")
    lifecycle = exempt and (
        method in ("initialize", "ping")
        or (isinstance(method, str) and method.startswith("notifications/"))
    )
    for rule in applied:
        grant = rule.constraint
        namespaces = grant.get("namespaces")
        resources = grant.get("resources")
        operations = grant.get("operations")
        metadata = grant.get("metadata")

        def listed(value: Any, wanted: str) -> bool:
            return value is None or wanted == value or (isinstance(value, list) and wanted in value)

        if not listed(namespaces, target.namespace):
            reasons.append((rule.rule_id, "namespace", None, None))
            continue
        if not listed(resources, "connections"):
            reasons.append((rule.rule_id, "resource", None, None))
            continue
        if not listed(operations, "execute"):
            reasons.append((rule.rule_id, "operation", None, None))
            continue
        if metadata is not None:
            options = metadata if isinstance(metadata, list) else [metadata]
            actual = target.metadata
            if actual is None or not any(
                all(isinstance(actual.get(k), str) and actual[k] == v for k, v in o.items())
                for o in options
            ):
                reasons.append((rule.rule_id, "metadata", None, None))
                continue
        rpc = grant.get("rpcReqMatch")
        if rpc and not lifecycle:
            mismatch = RpcMatcher.from_mapping(rpc).first_mismatch(message)
            if mismatch is not None:
                reasons.append((rule.rule_id, mismatch.reason, mismatch.field, mismatch.pattern))
                continue
        return True, rule.rule_id, []
    if not applied:
        return False, None, [(None, "no_matching_rule", None, None)]
    return False, None, reasons


def test_decide_agrees_with_the_rule_by_rule_reference() -> None:
    """Seeded random rule sets (shared and distinct patterns on shared paths) and messages."""
    rng = random.Random(20261121)
    patterns = {
        "method": ["^tools/call$", "^tools/(list|call)$", "^initialize$", "call", "^ping$"],
        "params.name": ["^get_issue$", "^(search_issues|get_issue)$", "issue", "^x$"],
        "params.arguments.n": ["^[0-9]+$", "^1$", "^true$", "^null$"],
        "params.arguments.list.0": ["^a$", "."],
    }
    values: list[Any] = ["get_issue", "search_issues", "x", "1", 1, 12, True, None, "a", {}, []]
    methods = ["tools/call", "tools/list", "initialize", "ping", "notifications/x", 5]
    allowed = 0
    for _ in range(3000):
        applied = []
        for index in range(rng.randint(0, 5)):
            grant: dict[str, Any] = {}
            if rng.random() < 0.3:
                grant["namespaces"] = rng.choice(["my-app", ["other", "my-app"], "other"])
            if rng.random() < 0.2:
                grant["resources"] = rng.choice(["connections", ["servers"]])
            if rng.random() < 0.2:
                grant["operations"] = rng.choice(["execute", ["read"], ["read", "execute"]])
            if rng.random() < 0.3:
                grant["metadata"] = rng.choice(
                    [{"userId": "alice"}, [{"userId": "bob"}, {"team": "t"}], {"team": "t"}]
                )
            if rng.random() < 0.8:
                chosen = rng.sample(sorted(patterns), rng.randint(1, len(patterns)))
                grant["rpcReqMatch"] = {path: rng.choice(patterns[path]) for path in chosen}
            applied.append(AppliedRule(f"r{index}", grant, None))
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": rng.choice(methods)}
        if rng.random() < 0.8:
            arguments = {"n": rng.choice(values), "list": rng.choice([[], ["a"], ["b"], "a"])}
            message["params"] = {"name": rng.choice(values), "arguments": arguments}
        metadata = rng.choice([None, {"userId": "alice"}, {"team": "t", "userId": 1}, {}])
        target = Target(rng.choice(["my-app", "other"]), metadata)
        exempt = rng.random() < 0.3
        decision = decide(compile_constraints(applied), target, message, exempt_lifecycle=exempt)
        expected = reference_decision(applied, target, message, exempt)
        assert (
            decision.allowed,
            decision.rule,
            [(d.rule, d.reason, d.field, d.pattern) for d in decision.reasons],
        ) == expected, (applied, target, message, exempt)
        allowed += decision.allowed
    assert 300 < allowed < 2700  # both outcomes well represented


def test_a_metadata_condition_shared_by_rules_is_checked_again_after_another() -> None:
    alice, bob = {"userId": "alice"}, {"userId": "bob"}
    compiled = rules(
        ("alice-read", {"metadata": alice, "rpcReqMatch": {"params.name": "^get_issue$"}}),
        ("bob-any", {"metadata": bob}),
        ("alice-search", {"metadata": dict(alice), "rpcReqMatch": {"params.name": "^search"}}),
    )
    # Equal conditions are one object (checked once per decision while no other comes between).
    assert compiled[0].metadata is compiled[2].metadata
    assert compiled[0].metadata is not compiled[1].metadata
    decision = decide(compiled, Target("my-app", alice), call("search_issues"))
    assert (decision.allowed, decision.rule) == (True, "alice-search")
    for_bob = decide(compiled, Target("my-app", bob), call("search_issues"))
    assert (for_bob.allowed, for_bob.rule) == (True, "bob-any")
    nobody = decide(compiled, Target("my-app", {"userId": "eve"}), call("search_issues"))
    assert [d.reason for d in nobody.reasons] == ["metadata", "metadata", "metadata"]
