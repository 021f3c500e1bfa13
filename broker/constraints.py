"""Rendering policy rules into Smithery ``Constraint`` JSON for one principal, and the cache digest.

For each rule whose conditions hold, the grant's templates are filled from the principal's verified
claims. Claim values must be strings or numbers; inside ``rpcReqMatch`` they are regex-escaped so a
claim such as ``a.b|c`` can never widen a pattern. A rule whose interpolation needs a missing or
non-scalar claim does not apply (fail closed).

Pure: no I/O, no clock. It does not decide JSON-RPC requests (``precheck.py``) and does not mint.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from broker import rpcmatch
from broker.policy import (
    MAX_RPC_PATTERN_CHARS,
    ClaimRef,
    Grant,
    PolicySet,
    Rule,
    RuleSkip,
    Template,
    is_missing,
    lookup_claim,
    match_rule,
)

MAX_INTERPOLATED_CHARS: Final = 256
"""Longest claim value accepted into a constraint; longer values make the rule not apply."""

Constraint = dict[str, Any]
"""One Smithery Constraint as JSON-ready data (keys in Smithery's field order)."""


@dataclass(frozen=True, slots=True)
class AppliedRule:
    rule_id: str
    constraint: Constraint
    ttl_seconds: int | None


@dataclass(frozen=True, slots=True)
class Rendering:
    """The outcome of evaluating a policy set for one principal."""

    applied: tuple[AppliedRule, ...]
    skipped: tuple[RuleSkip, ...]

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(a.rule_id for a in self.applied)


@dataclass(frozen=True, slots=True)
class MintPlan:
    """Exactly what will be sent to ``POST /tokens`` and the digest that keys the token cache."""

    rule_ids: tuple[str, ...]
    constraints: tuple[Constraint, ...]
    digest: str
    """Hex SHA-256 of the canonical constraint list (for the audit log)."""
    digest_bytes: bytes
    """The same digest as raw bytes (the token cache key)."""
    applicable: tuple[str, ...] = ()
    """Every rule that applies to the user, when the caller asked for fewer (``rule_ids``): a
    revoked rule refuses everyone it would serve, whatever they ask for."""

    @property
    def revocable(self) -> tuple[str, ...]:
        """The rule ids a revocation check covers."""
        return self.applicable or self.rule_ids


class _RenderError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def render_rules(policy_set: PolicySet, issuer: str, claims: Mapping[str, Any]) -> Rendering:
    """Select the rules that apply to (issuer, claims) and render each into a Constraint."""
    applied: list[AppliedRule] = []
    skipped: list[RuleSkip] = []
    for rule in policy_set.rules:
        reason = match_rule(rule, issuer, claims)
        if reason is not None:
            skipped.append(RuleSkip(rule.id, reason))
            continue
        try:
            constraint = render_grant(rule.grant, claims)
        except _RenderError as exc:
            skipped.append(RuleSkip(rule.id, exc.reason))
            continue
        applied.append(AppliedRule(rule.id, constraint, rule.grant.ttl_seconds))
    return Rendering(applied=tuple(applied), skipped=tuple(skipped))


def render_grant(grant: Grant, claims: Mapping[str, Any]) -> Constraint:
    """One Constraint, fields in Smithery's order, without ``ttl`` (see ``plan_mint``)."""
    out: Constraint = {}
    if grant.namespaces is not None:
        if isinstance(grant.namespaces, Template):
            out["namespaces"] = _fill(grant.namespaces, claims, regex=False)
        else:
            out["namespaces"] = [_fill(t, claims, regex=False) for t in grant.namespaces]
    if grant.resources is not None:
        out["resources"] = _enum(grant.resources)
    if grant.operations is not None:
        out["operations"] = _enum(grant.operations)
    if grant.metadata is not None:
        objects = [{key: _fill(t, claims, regex=False) for key, t in obj} for obj in grant.metadata]
        out["metadata"] = objects if grant.metadata_is_list else objects[0]
    if grant.rpc_req_match is not None:
        rpc = {}
        for key, template in grant.rpc_req_match:
            pattern = _fill(template, claims, regex=True)
            if rpcmatch.js_length(pattern) > MAX_RPC_PATTERN_CHARS:
                raise _RenderError(f"rpcReqMatch {key} exceeds {MAX_RPC_PATTERN_CHARS} characters")
            rpc[key] = pattern
        out["rpcReqMatch"] = rpc
    return out


def plan_mint(applied: Sequence[AppliedRule]) -> MintPlan:
    """The ``policy`` array for one mint, with a single ttl.

    Every applicable rule becomes one Constraint (Smithery ORs them). The token's lifetime is the
    shortest ttl among the rules (the most restrictive rule wins) and is sent once, on the first
    constraint, because how Smithery combines several ttls is not documented.
    """
    if not applied:
        raise ValueError("plan_mint needs at least one applied rule")
    constraints = [dict(a.constraint) for a in applied]
    ttls = [a.ttl_seconds for a in applied if a.ttl_seconds is not None]
    if ttls:
        constraints[0]["ttl"] = min(ttls)
    digest = constraints_digest(constraints)
    return MintPlan(
        rule_ids=tuple(a.rule_id for a in applied),
        constraints=tuple(constraints),
        digest=digest,
        digest_bytes=bytes.fromhex(digest),
    )


def constraints_digest(constraints: Sequence[Constraint]) -> str:
    """SHA-256 over the canonical JSON (sorted keys) of the constraint list."""
    canonical = msgspec.json.encode(list(constraints), order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def _enum(value: str | tuple[str, ...]) -> str | list[str]:
    return value if isinstance(value, str) else list(value)


def _fill(template: Template, claims: Mapping[str, Any], *, regex: bool) -> str:
    if template.is_literal:
        return template.source
    out: list[str] = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        text = claim_text(claims, part)
        out.append(rpcmatch.escape_literal(text) if regex else text)
    return "".join(out)


def claim_text(claims: Mapping[str, Any], ref: ClaimRef) -> str:
    """A claim as interpolated text: strings as they are, finite numbers in JSON form."""
    value = lookup_claim(claims, ref.path)
    if is_missing(value):
        raise _RenderError(f"claim {ref.path} is missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _RenderError(f"claim {ref.path} is not a string or number")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _RenderError(f"claim {ref.path} is not a finite number")
        text = str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    else:
        text = str(value)
    if not text:
        raise _RenderError(f"claim {ref.path} is empty")
    if len(text) > MAX_INTERPOLATED_CHARS:
        raise _RenderError(f"claim {ref.path} is longer than {MAX_INTERPOLATED_CHARS} characters")
    return text


def applicable_rule(rule: Rule, issuer: str, claims: Mapping[str, Any]) -> bool:
    """Whether ``rule`` would apply to this principal (conditions hold and it renders)."""
    if match_rule(rule, issuer, claims) is not None:
        return False
    try:
        render_grant(rule.grant, claims)
    except _RenderError:
        return False
    return True
