"""The allow/deny decision for one JSON-RPC message on one connection, with reasons (pure).

A message is allowed when ANY of the user's rendered constraints covers it (Smithery ORs the
constraints of a token): the constraint's ``namespaces`` include the target namespace, its
``resources`` include ``connections``, its ``operations`` include ``execute``, its ``metadata``
matches the connection's metadata (object: every pair; list: any object) and every
``rpcReqMatch`` entry matches the message (see ``rpcmatch``). Omitted fields do not restrict.
When no constraint covers it, the decision lists, for each rule, the first reason it failed.

Fail closed: unknown connection metadata never satisfies a metadata condition. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from broker.constraints import AppliedRule
from broker.jsonrpc import is_lifecycle
from broker.rpcmatch import RpcMatcher

DenialReason = Literal[
    "no_matching_rule",
    "namespace",
    "resource",
    "operation",
    "metadata",
    "rpc_field_missing",
    "rpc_pattern_mismatch",
]
RESOURCE: Final = "connections"
OPERATION: Final = "execute"


@dataclass(frozen=True, slots=True)
class Target:
    """Where the message goes: a namespace and the connection's metadata (None: unknown)."""

    namespace: str
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Denial:
    """Why one rule's constraint does not cover the message (the first failing check)."""

    rule: str | None
    reason: DenialReason
    detail: str
    field: str | None = None
    pattern: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "reason": self.reason, "detail": self.detail}
        if self.field is not None:
            out["field"] = self.field
        if self.pattern is not None:
            out["pattern"] = self.pattern
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str | None
    """The first rule (in policy order) whose constraint allows the message."""
    reasons: tuple[Denial, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledConstraint:
    """One rendered constraint, prepared for repeated decisions."""

    rule: str
    namespaces: frozenset[str] | None
    resources: frozenset[str] | None
    operations: frozenset[str] | None
    metadata: tuple[Mapping[str, str], ...] | None
    rpc: RpcMatcher | None


def compile_constraints(applied: Sequence[AppliedRule]) -> tuple[CompiledConstraint, ...]:
    """Prepare rendered rules for ``decide`` (patterns were validated when policies loaded)."""
    return tuple(_compile(rule.rule_id, rule.constraint) for rule in applied)


def _as_set(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def _compile(rule: str, constraint: Mapping[str, Any]) -> CompiledConstraint:
    metadata = constraint.get("metadata")
    rpc = constraint.get("rpcReqMatch")
    return CompiledConstraint(
        rule=rule,
        namespaces=_as_set(constraint.get("namespaces")),
        resources=_as_set(constraint.get("resources")),
        operations=_as_set(constraint.get("operations")),
        metadata=None
        if metadata is None
        else tuple(metadata if isinstance(metadata, list) else [metadata]),
        rpc=RpcMatcher.from_mapping(rpc) if rpc else None,
    )


def decide(
    constraints: Sequence[CompiledConstraint],
    target: Target,
    message: Mapping[str, Any],
    *,
    exempt_lifecycle: bool = False,
) -> Decision:
    """Whether ``message`` may go to ``target`` under ``constraints``, and why not."""
    if not constraints:
        return Decision(
            False, None, (Denial(None, "no_matching_rule", "no policy rule applies to this user"),)
        )
    method = message.get("method")
    skip_rpc = exempt_lifecycle and isinstance(method, str) and is_lifecycle(method)
    # First a plain yes/no pass that builds nothing; the reasons are worked out only when no
    # constraint allows the message (the MICRO benchmark in bench/ measured the difference).
    for constraint in constraints:
        if _allows(constraint, target, message, skip_rpc=skip_rpc):
            return Decision(True, constraint.rule)
    denials = [_check(c, target, message, skip_rpc=skip_rpc) for c in constraints]
    return Decision(False, None, tuple(d for d in denials if d is not None))


def _allows(
    constraint: CompiledConstraint, target: Target, message: Mapping[str, Any], *, skip_rpc: bool
) -> bool:
    if constraint.namespaces is not None and target.namespace not in constraint.namespaces:
        return False
    if constraint.resources is not None and RESOURCE not in constraint.resources:
        return False
    if constraint.operations is not None and OPERATION not in constraint.operations:
        return False
    if constraint.metadata is not None and (
        target.metadata is None
        or not any(_covers(wanted, target.metadata) for wanted in constraint.metadata)
    ):
        return False
    return constraint.rpc is None or skip_rpc or constraint.rpc.matches(message)


def _check(
    constraint: CompiledConstraint, target: Target, message: Mapping[str, Any], *, skip_rpc: bool
) -> Denial | None:
    rule = constraint.rule
    if constraint.namespaces is not None and target.namespace not in constraint.namespaces:
        return Denial(rule, "namespace", f"namespace {target.namespace!r} is not granted")
    if constraint.resources is not None and RESOURCE not in constraint.resources:
        return Denial(rule, "resource", "the rule does not grant connections")
    if constraint.operations is not None and OPERATION not in constraint.operations:
        return Denial(rule, "operation", "the rule does not grant execute")
    if constraint.metadata is not None:
        if target.metadata is None:
            return Denial(rule, "metadata", "the connection's metadata is unknown")
        if not any(_covers(wanted, target.metadata) for wanted in constraint.metadata):
            return Denial(rule, "metadata", "the connection's metadata does not match the rule")
    if constraint.rpc is not None and not skip_rpc:
        mismatch = constraint.rpc.first_mismatch(message)
        if mismatch is not None:
            detail = (
                f"{mismatch.field} is missing or not a scalar"
                if mismatch.reason == "rpc_field_missing"
                else f"{mismatch.field} does not match {mismatch.pattern}"
            )
            return Denial(rule, mismatch.reason, detail, mismatch.field, mismatch.pattern)
    return None


def _covers(wanted: Mapping[str, str], actual: Mapping[str, Any]) -> bool:
    return all(isinstance(actual.get(k), str) and actual[k] == v for k, v in wanted.items())
