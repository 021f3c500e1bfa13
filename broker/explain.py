"""Dry runs of a policy set: which rules apply to some claims and why the others do not, the exact
constraint JSON that would be sent to Smithery, the connections the user may create
(``provision`` blocks, rendered), and (with a request) the precheck decision.

Used by ``broker policy explain``, ``broker policy test`` and ``POST /v1/explain``. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.constraints import plan_mint, render_rules
from broker.errors import InvalidRequestError
from broker.jsonrpc import check_message
from broker.policy import PolicySet
from broker.precheck import Decision, Target, compile_constraints, decide
from broker.provisioning import render_provisioning


@dataclass(frozen=True, slots=True)
class Explanation:
    revision: str
    issuer: str
    applied: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    """(rule id, why it did not apply)."""
    constraints: tuple[dict[str, Any], ...]
    """Exactly the ``policy`` array ``POST /tokens`` would receive (empty: 403 no_matching_rule)."""
    decision: Decision | None = None
    target: Target | None = None
    provisioning: tuple[dict[str, Any], ...] = ()
    """The ``provision`` blocks that apply, rendered: what ``/v1/connections`` would enforce."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policyRevision": self.revision,
            "issuer": self.issuer,
            "rules": {
                "applied": list(self.applied),
                "skipped": [{"rule": rule, "reason": reason} for rule, reason in self.skipped],
            },
            "constraints": list(self.constraints),
        }
        if self.provisioning:
            out["provisioning"] = list(self.provisioning)
        if self.decision is not None:
            out["decision"] = {
                "allowed": self.decision.allowed,
                "rule": self.decision.rule,
                "reasons": [d.as_json() for d in self.decision.reasons],
            }
        return out


def effective_issuer(issuer: str, claims: Mapping[str, Any]) -> str:
    """``issuer``, or else the claims' ``iss``; ``InvalidRequestError`` when they differ."""
    claimed = claims.get("iss")
    if not isinstance(claimed, str) or not claimed:
        return issuer
    if issuer and issuer != claimed:
        raise InvalidRequestError(
            f"The issuer {issuer!r} is not the claims' iss {claimed!r}: give one of them."
        )
    return claimed


def explain(
    policy_set: PolicySet,
    claims: Mapping[str, Any],
    *,
    issuer: str,
    request: Any = None,
    target: Target | None = None,
    exempt_lifecycle: bool = False,
) -> Explanation:
    """Evaluate ``policy_set`` for these claims; with ``request`` and ``target``, decide it too.

    The issuer is ``issuer``, or else the claims' ``iss``, as the verifier would see it (an
    explanation that ignored the ``iss`` would report no rule where ``/v1/tokens`` applies one).

    Raises ``CallerError`` subclasses for an invalid JSON-RPC ``request``, or an ``issuer`` that
    contradicts the claims' ``iss``.
    """
    issuer = effective_issuer(issuer, claims)
    rendering = render_rules(policy_set, issuer, claims)
    constraints = plan_mint(rendering.applied).constraints if rendering.applied else ()
    decision = None
    if request is not None:
        message = check_message(request)
        where = target or Target(namespace="")
        decision = decide(
            compile_constraints(rendering.applied),
            where,
            message,
            exempt_lifecycle=exempt_lifecycle,
        )
    provisioning, _ = render_provisioning(policy_set, issuer, claims)
    return Explanation(
        provisioning=tuple(provisioning),
        revision=policy_set.revision,
        issuer=issuer,
        applied=rendering.rule_ids,
        skipped=tuple((s.rule_id, s.reason) for s in rendering.skipped),
        constraints=tuple(constraints),
        decision=decision,
        target=target,
    )


def format_text(explanation: Explanation) -> str:
    """The human-readable form printed by ``broker policy explain``."""
    lines = [f"policy revision {explanation.revision}, issuer {explanation.issuer or '-'}", ""]
    if explanation.applied:
        lines.append("rules that apply:")
        lines.extend(f"  + {rule}" for rule in explanation.applied)
    else:
        lines.append("no rule applies: /v1/tokens answers 403 no_matching_rule")
    if explanation.skipped:
        lines.append("rules that do not apply:")
        lines.extend(f"  - {rule}: {reason}" for rule, reason in explanation.skipped)
    if explanation.constraints:
        lines.append("")
        lines.append("constraints sent to Smithery (POST /tokens policy):")
        text = json.dumps(list(explanation.constraints), indent=2, ensure_ascii=False)
        lines.extend(f"  {line}" for line in text.splitlines())
    for block in explanation.provisioning:
        lines.append("")
        lines.append(f"connections the user may create (rule {block['rule']}, /v1/connections):")
        lines.append(f"  namespace {block['namespace']}, ids starting {block['idPrefix']!r}")
        lines.append(f"  metadata enforced: {json.dumps(block['metadata'], ensure_ascii=False)}")
        if block["servers"]:
            lines.append(f"  servers: {', '.join(block['servers'])}")
        if block["mcpUrl"]:
            lines.append(f"  mcpUrl matching: {', '.join(block['mcpUrl'])}")
        if block["clientMetadata"]:
            lines.append(f"  metadata clients may set: {', '.join(block['clientMetadata'])}")
        limit = block["maxConnections"]
        lines.append(f"  at most {limit} connections" if limit is not None else "  no limit")
    if explanation.decision is not None:
        decision = explanation.decision
        lines.append("")
        where = explanation.target.namespace if explanation.target else "-"
        if decision.allowed:
            lines.append(f"request: ALLOWED in {where} by rule {decision.rule}")
        else:
            lines.append(f"request: DENIED in {where}")
            for denial in decision.reasons:
                lines.append(f"  - {denial.rule or '-'}: {denial.reason}: {denial.detail}")
    return "\n".join(lines) + "\n"
