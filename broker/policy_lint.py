"""Warnings about valid policies that are probably not what their author meant.

``lint_policy_set`` never rejects a set (``policy.py`` does that); it points at rules that are
duplicated or shadowed, can never apply, match tool names by prefix, would stop an MCP client
from starting a session, grant too broadly or for too long, or interpolate claims that may not be
strings. Each warning uses the same ``file:line:column: rule-id: $.path: message`` form as errors.

Pure: works on a loaded ``PolicySet``; no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Final

from broker import rpcmatch
from broker.errors import PolicyProblem
from broker.policy import ClaimRef, ClaimTest, Grant, PolicySet, Rule, Template, render_probe

MAX_EXECUTE_TTL_SECONDS: Final = 3600
DEFAULT_TTL_SECONDS: Final = 3600
# Claims that identity providers always issue as strings (RFC 7519 §4.1, OIDC Core §5.1).
STRING_CLAIMS: Final = frozenset({"sub", "iss", "jti", "email", "azp", "sid", "client_id"})
SESSION_PROBES: Final = (
    {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "0"},
        },
    },
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
)


def lint_policy_set(policy_set: PolicySet) -> list[PolicyProblem]:
    """Every warning for the set, in file order."""
    warnings: list[PolicyProblem] = []
    rules = policy_set.rules
    for rule in rules:
        warnings.extend(_rule_warnings(rule))
    warnings.extend(_overlap_warnings(rules))
    warnings.extend(_session_warnings(rules))
    return sorted(warnings, key=lambda w: (w.file, w.line or 0, w.column or 0, w.path))


def _warn(rule: Rule, path: str, message: str) -> PolicyProblem:
    return PolicyProblem(
        file=rule.file,
        path=f"{rule.path}{path}",
        message=message,
        rule_id=rule.id,
        line=rule.line or None,
        column=rule.column or None,
    )


def _rule_warnings(rule: Rule) -> Iterator[PolicyProblem]:
    grant = rule.grant
    if grant.namespaces is None:
        yield _warn(
            rule, ".grant", "no namespaces: the grant reaches every namespace the API key can reach"
        )
    if grant.metadata is None and _covers(grant.resources, "connections"):
        yield _warn(
            rule, ".grant", "no metadata: the grant covers every connection in its namespaces"
        )
    if _covers(grant.operations, "execute"):
        ttl = grant.ttl_seconds if grant.ttl_seconds is not None else DEFAULT_TTL_SECONDS
        if ttl > MAX_EXECUTE_TTL_SECONDS:
            yield _warn(
                rule,
                ".grant.ttl",
                f"execute grant lives {ttl}s; more than 1h is rarely "
                "needed and a token cannot be revoked",
            )
    for key, template in grant.rpc_req_match or ():
        if key == "params.name" and not (
            template.source.startswith("^") and template.source.endswith("$")
        ):
            yield _warn(
                rule,
                f".grant.rpcReqMatch.{key}",
                f"pattern {template.source!r} is not anchored: it also matches any tool "
                "whose name merely contains it; write ^(...)$",
            )
    reason = _never_holds(rule.claims)
    if reason is not None:
        yield _warn(rule, ".when.claims", f"the conditions can never hold: {reason}")
    for path, template in _joined_templates(rule):
        names = [part.path for part in template.parts if isinstance(part, ClaimRef)]
        yield _warn(
            rule,
            path,
            f"joins claims {', '.join(names)} in one value: values holding the text between "
            "them can collide (acme + eng/x and acme/eng + x both give acme/eng/x); give each "
            "claim a key of its own",
        )
    for path, claim in _interpolated_claims(grant):
        if claim not in STRING_CLAIMS and not _string_guaranteed(rule.claims, claim):
            yield _warn(
                rule,
                f".grant.{path}",
                f"claim {claim} is interpolated but not guaranteed to be a string; add "
                f"{{type: string}} (or equals/in with strings) under when.claims.{claim}",
            )


def _joined_templates(rule: Rule) -> Iterator[tuple[str, Template]]:
    """Namespace and metadata templates of the grant and the provision block holding two or
    more placeholders (``idPrefix`` has its own separator rule, checked at load)."""
    grant = rule.grant
    namespaces = grant.namespaces
    candidates: list[tuple[str, Template]] = []
    if isinstance(namespaces, Template):
        candidates.append((".grant.namespaces", namespaces))
    elif namespaces is not None:
        candidates.extend((f".grant.namespaces[{i}]", t) for i, t in enumerate(namespaces))
    for block in grant.metadata or ():
        candidates.extend((f".grant.metadata.{key}", t) for key, t in block)
    if rule.provision is not None:
        candidates.append((".provision.namespace", rule.provision.namespace))
        candidates.extend((f".provision.metadata.{key}", t) for key, t in rule.provision.metadata)
    for path, template in candidates:
        if sum(isinstance(part, ClaimRef) for part in template.parts) > 1:
            yield path, template


def _covers(value: str | tuple[str, ...] | None, item: str) -> bool:
    return value is None or value == item or (isinstance(value, tuple) and item in value)


def _never_holds(tests: tuple[ClaimTest, ...]) -> str | None:
    by_claim: dict[str, list[ClaimTest]] = defaultdict(list)
    for test in tests:
        by_claim[test.claim].append(test)
    for claim, claim_tests in by_claim.items():
        allowed: set[Any] | None = None
        types = {t.operand for t in claim_tests if t.op == "type"}
        if len(types) > 1:
            return f"claim {claim} cannot be both {' and '.join(sorted(map(str, types)))}"
        for test in claim_tests:
            if test.op == "equals":
                values = {_key(test.operand)}
            elif test.op == "in":
                assert isinstance(test.operand, tuple)
                values = {_key(v) for v in test.operand}
            else:
                continue
            allowed = values if allowed is None else allowed & values
        if allowed is not None and not allowed:
            return f"no value of claim {claim} satisfies every condition"
        if allowed is not None and types:
            wanted = next(iter(types))
            if not any(_type_of_key(v) == wanted for v in allowed):
                return f"claim {claim} must be a {wanted} but is compared with other types"
    return None


def _key(value: Any) -> tuple[str, Any]:
    """Hashable identity that keeps booleans apart from numbers, as JSON does."""
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    return ("string", value)


def _type_of_key(key: tuple[str, Any]) -> str:
    return key[0]


def _interpolated_claims(grant: Grant) -> Iterator[tuple[str, str]]:
    def refs(template: Template) -> Iterator[str]:
        for part in template.parts:
            if isinstance(part, ClaimRef):
                yield part.path

    if grant.namespaces is not None:
        templates = (
            (grant.namespaces,) if isinstance(grant.namespaces, Template) else grant.namespaces
        )
        for template in templates:
            for claim in refs(template):
                yield "namespaces", claim
    for obj in grant.metadata or ():
        for key, template in obj:
            for claim in refs(template):
                yield f"metadata.{key}", claim
    for key, template in grant.rpc_req_match or ():
        for claim in refs(template):
            yield f"rpcReqMatch.{key}", claim


def _string_guaranteed(tests: tuple[ClaimTest, ...], claim: str) -> bool:
    for test in tests:
        if test.claim != claim:
            continue
        if test.op == "type" and test.operand == "string":
            return True
        if test.op == "equals" and isinstance(test.operand, str):
            return True
        if (
            test.op == "in"
            and isinstance(test.operand, tuple)
            and all(isinstance(v, str) for v in test.operand)
        ):
            return True
    return False


def _condition_key(rule: Rule) -> tuple[Any, ...]:
    return (rule.issuers, tuple(sorted((t.claim, t.op, repr(t.operand)) for t in rule.claims)))


def _grant_key(grant: Grant) -> tuple[Any, ...]:
    return (
        grant.namespaces,
        grant.resources,
        grant.operations,
        grant.metadata,
        grant.metadata_is_list,
        grant.rpc_req_match,
    )


def _overlap_warnings(rules: tuple[Rule, ...]) -> Iterator[PolicyProblem]:
    """Each rule against every earlier one, the first that duplicates or shadows it named. The
    keys and claim sets are computed once per rule (once per pair made a 4,000-rule file take a
    minute), and a pair whose earlier rule tests a claim the later one does not is passed over
    at once: it can neither be a duplicate nor shadow it."""
    keys = [(_condition_key(rule), _grant_key(rule.grant)) for rule in rules]
    claims = [frozenset(rule.claims) for rule in rules]
    for index, later in enumerate(rules):
        for position in range(index):
            if not claims[position] <= claims[index]:
                continue
            earlier = rules[position]
            if keys[position] == keys[index]:
                yield _warn(later, "", f"duplicates rule {earlier.id} (same conditions and grant)")
                break
            if _implies(later, earlier) and _broader(earlier.grant, later.grant):
                yield _warn(
                    later,
                    "",
                    f"shadowed by rule {earlier.id}: it applies whenever this "
                    "rule does and grants at least as much",
                )
                break


def _implies(rule: Rule, other: Rule) -> bool:
    """Whenever ``rule``'s conditions hold, ``other``'s do too (syntactically: a superset)."""
    if other.issuers and not (rule.issuers and set(rule.issuers) <= set(other.issuers)):
        return False
    return set(other.claims) <= set(rule.claims)


def _as_set(value: Any) -> set[Any] | None:
    if value is None:
        return None
    return {value} if not isinstance(value, tuple) else set(value)


def _broader(wide: Grant, narrow: Grant) -> bool:
    """``wide`` allows everything ``narrow`` allows (syntactically)."""
    for field in ("namespaces", "resources", "operations"):
        wide_set, narrow_set = _as_set(getattr(wide, field)), _as_set(getattr(narrow, field))
        if wide_set is not None and (narrow_set is None or not narrow_set <= wide_set):
            return False
    if wide.metadata is not None and (wide.metadata, wide.metadata_is_list) != (
        narrow.metadata,
        narrow.metadata_is_list,
    ):
        return False
    return wide.rpc_req_match is None or wide.rpc_req_match == narrow.rpc_req_match


def _session_warnings(rules: tuple[Rule, ...]) -> Iterator[PolicyProblem]:
    """rpcReqMatch applies to every message: warn when the users a rule applies to could not
    even send ``initialize`` or ``tools/list`` on that rule's connections."""
    for rule in rules:
        if rule.grant.rpc_req_match is None or _allows_session(rule):
            continue
        companions = [
            other
            for other in rules
            if other is not rule
            and _implies(rule, other)
            and other.grant.metadata == rule.grant.metadata
            and _broader_scope(other.grant, rule.grant)
            and _allows_session(other)
        ]
        if not companions:
            yield _warn(
                rule,
                ".grant.rpcReqMatch",
                "blocks initialize and tools/list, and no other rule for the same users "
                "and connections allows them: MCP clients cannot start a session",
            )


def _broader_scope(wide: Grant, narrow: Grant) -> bool:
    for field in ("namespaces", "resources", "operations"):
        wide_set, narrow_set = _as_set(getattr(wide, field)), _as_set(getattr(narrow, field))
        if wide_set is not None and (narrow_set is None or not narrow_set <= wide_set):
            return False
    return True


def _allows_session(rule: Rule) -> bool:
    if rule.grant.rpc_req_match is None:
        return True
    patterns = {key: render_probe(template) for key, template in rule.grant.rpc_req_match}
    matcher = rpcmatch.RpcMatcher.from_mapping(patterns)
    return all(matcher.matches(probe) for probe in SESSION_PROBES)


def shared_claim_warnings(policy_set: PolicySet, issuers: tuple[str, ...]) -> list[PolicyProblem]:
    """With two or more issuers, a claim such as ``sub`` is unique only within its issuer. A
    rule that applies to tokens of several issuers and interpolates a claim into the grant's
    namespaces or metadata, or into its ``provision`` block, gives two users of different
    issuers who share that claim's value the same connections (``when.issuer`` separates
    them). The set alone cannot tell: ``broker serve`` logs these at start and on reload."""
    warnings: list[PolicyProblem] = []
    for rule in policy_set.rules:
        reach = [issuer for issuer in issuers if not rule.issuers or issuer in rule.issuers]
        if len(reach) < 2:
            continue
        places = [name for name, templates in _claim_templates(rule) if _interpolates(templates)]
        if places:
            warnings.append(
                _warn(
                    rule,
                    ".when",
                    f"applies to tokens of {len(reach)} issuers and interpolates claims into "
                    f"{' and '.join(places)}: users of two issuers with the same claim value "
                    "share these connections; add when.issuer",
                )
            )
    return warnings


def _claim_templates(rule: Rule) -> Iterator[tuple[str, list[Template]]]:
    grant = rule.grant
    namespaces = grant.namespaces
    if isinstance(namespaces, Template):
        yield "grant.namespaces", [namespaces]
    elif namespaces is not None:
        yield "grant.namespaces", list(namespaces)
    yield "grant.metadata", [t for block in grant.metadata or () for _, t in block]
    if rule.provision is not None:
        provision = rule.provision
        yield (
            "provision",
            [provision.namespace, provision.id_prefix] + [t for _, t in provision.metadata],
        )


def _interpolates(templates: list[Template]) -> bool:
    return any(not template.is_literal for template in templates)
