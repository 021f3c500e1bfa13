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

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from broker.constraints import AppliedRule
from broker.jsonrpc import is_lifecycle
from broker.rpcmatch import RpcMatcher, js_string, lookup_segments

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
class _Test:
    """One distinct (dot path, pattern) pair of a constraint set, evaluated once per message."""

    path: int
    """Index into ``CompiledConstraints.paths``."""
    segments: tuple[str, ...]
    search: Callable[[str], bool]
    """The pattern's JavaScript ``test``."""
    ascii_search: Callable[[str], bool]
    """The same for an ASCII subject (``Pattern.ascii_search``)."""


@dataclass(frozen=True, slots=True)
class CompiledConstraint:
    """One rendered constraint, prepared for repeated decisions."""

    rule: str
    namespaces: frozenset[str] | None
    resources: frozenset[str] | None
    operations: frozenset[str] | None
    metadata: tuple[tuple[tuple[str, Any], ...], ...] | None
    """Each alternative (a list in the constraint ORs them) as its (key, value) pairs."""
    rpc: RpcMatcher | None
    static_denial: Denial | None
    """``resources``/``operations`` do not depend on the message: refused once, at compile time."""
    tests: tuple[int, ...]
    """The ``rpcReqMatch`` entries in declaration order, as indexes into the set's tests."""
    allowed: Decision
    """The decision this constraint gives when it allows (built once, shared)."""
    rpc_denials: tuple[tuple[Denial, Denial], ...]
    """Per entry: the denial when its field is missing, and when its pattern does not match."""


@dataclass(frozen=True, slots=True)
class CompiledConstraints:
    """A user's constraints, prepared for ``decide``: the distinct dot paths and (path,
    pattern) tests are numbered, so a decision looks up each path and runs each pattern at most
    once however many rules repeat it (``method: ^tools/call$`` in every tool rule)."""

    constraints: tuple[CompiledConstraint, ...]
    paths: tuple[tuple[str, ...], ...]
    tests: tuple[_Test, ...]

    def __len__(self) -> int:
        return len(self.constraints)

    def __iter__(self) -> Iterator[CompiledConstraint]:
        return iter(self.constraints)

    def __getitem__(self, index: int) -> CompiledConstraint:
        return self.constraints[index]


def compile_constraints(applied: Sequence[AppliedRule]) -> CompiledConstraints:
    """Prepare rendered rules for ``decide`` (patterns were validated when policies loaded)."""
    paths: dict[tuple[str, ...], int] = {}
    tests: dict[tuple[tuple[str, ...], str], int] = {}
    test_list: list[_Test] = []
    compiled: list[CompiledConstraint] = []
    # Equal metadata conditions share one object, so a decision checks each distinct one once.
    metadata_seen: dict[Any, Any] = {}
    for rule in applied:
        rpc_source = rule.constraint.get("rpcReqMatch")
        rpc = RpcMatcher.from_mapping(rpc_source) if rpc_source else None
        indexes: list[int] = []
        for entry in rpc.entries if rpc is not None else ():
            key = (entry.segments, entry.pattern.source)
            if key not in tests:
                path = paths.setdefault(entry.segments, len(paths))
                tests[key] = len(test_list)
                test_list.append(
                    _Test(path, entry.segments, entry.pattern.search, entry.pattern.ascii_search)
                )
            indexes.append(tests[key])
        one = _compile(rule.rule_id, rule.constraint, rpc, tuple(indexes))
        if one.metadata is not None:
            one = replace(one, metadata=_interned(one.metadata, metadata_seen))
        compiled.append(one)
    return CompiledConstraints(tuple(compiled), tuple(paths), tuple(test_list))


def _interned(value: Any, seen: dict[Any, Any]) -> Any:
    try:
        return seen.setdefault(value, value)
    except TypeError:  # a value that is not a string (it never matches, ``_covers_any``)
        return value


def _as_set(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def _compile(
    rule: str, constraint: Mapping[str, Any], rpc: RpcMatcher | None, tests: tuple[int, ...]
) -> CompiledConstraint:
    metadata = constraint.get("metadata")
    resources = _as_set(constraint.get("resources"))
    operations = _as_set(constraint.get("operations"))
    static_denial = None
    if resources is not None and RESOURCE not in resources:
        static_denial = Denial(rule, "resource", "the rule does not grant connections")
    elif operations is not None and OPERATION not in operations:
        static_denial = Denial(rule, "operation", "the rule does not grant execute")
    return CompiledConstraint(
        rule=rule,
        namespaces=_as_set(constraint.get("namespaces")),
        resources=resources,
        operations=operations,
        metadata=None
        if metadata is None
        else tuple(
            tuple(wanted.items())
            for wanted in (metadata if isinstance(metadata, list) else [metadata])
        ),
        rpc=rpc,
        static_denial=static_denial,
        tests=tests,
        allowed=Decision(True, rule),
        rpc_denials=tuple(
            (
                Denial(
                    rule,
                    "rpc_field_missing",
                    f"{entry.field} is missing or not a scalar",
                    entry.field,
                    entry.pattern.source,
                ),
                Denial(
                    rule,
                    "rpc_pattern_mismatch",
                    f"{entry.field} does not match {entry.pattern.source}",
                    entry.field,
                    entry.pattern.source,
                ),
            )
            for entry in (rpc.entries if rpc is not None else ())
        ),
    )


_NO_RULE: Final = Decision(
    False, None, (Denial(None, "no_matching_rule", "no policy rule applies to this user"),)
)
_UNKNOWN_METADATA_DETAIL: Final = "the connection's metadata is unknown"
_METADATA_DETAIL: Final = "the connection's metadata does not match the rule"
# Outcomes of one (path, pattern) test, cached per decision.
_MISSING_FIELD: Final = 0
_MISMATCH: Final = 1
_MATCH: Final = 2


def decide(
    constraints: CompiledConstraints,
    target: Target,
    message: Mapping[str, Any],
    *,
    exempt_lifecycle: bool = False,
) -> Decision:
    """Whether ``message`` may go to ``target`` under ``constraints``, and why not.

    One pass in policy order: the first constraint that covers the message allows it. Each
    refused constraint leaves its first failing check; only when none allows are those turned
    into reasons (prebuilt at compile time, so a denial allocates little more than its tuple).
    """
    rules = constraints.constraints
    if not rules:
        return _NO_RULE
    method = message.get("method")
    skip_rpc = exempt_lifecycle and isinstance(method, str) and is_lifecycle(method)
    namespace = target.namespace
    actual = target.metadata
    tests = constraints.tests
    values: list[object] = [_UNSET] * len(constraints.paths)
    outcomes: list[int] = [-1] * len(tests)
    failures: list[Denial] = []
    checked: object = None  # the metadata condition checked last, and its outcome
    covered = False
    for constraint in rules:
        if constraint.namespaces is not None and namespace not in constraint.namespaces:
            failures.append(
                Denial(constraint.rule, "namespace", f"namespace {namespace!r} is not granted")
            )
            continue
        if constraint.static_denial is not None:
            failures.append(constraint.static_denial)
            continue
        wanted = constraint.metadata
        if wanted is not None:
            if actual is None:
                failures.append(Denial(constraint.rule, "metadata", _UNKNOWN_METADATA_DETAIL))
                continue
            if wanted is not checked:  # rules often share one (interned): checked once
                checked, covered = wanted, _covers_any(wanted, actual)
            if not covered:
                failures.append(Denial(constraint.rule, "metadata", _METADATA_DETAIL))
                continue
        if skip_rpc:
            return constraint.allowed
        for position, index in enumerate(constraint.tests):
            outcome = outcomes[index]
            if outcome < 0:  # not run yet for this message (inlined: the hot loop)
                test = tests[index]
                value = values[test.path]
                if value is _UNSET:
                    value = values[test.path] = lookup_segments(message, test.segments)
                text = value if type(value) is str else js_string(value)
                # None for an absent path (the missing marker), an object and an array alike.
                if text is None:
                    outcome = _MISSING_FIELD
                elif text.isascii():
                    outcome = _MATCH if test.ascii_search(text) else _MISMATCH
                else:
                    outcome = _MATCH if test.search(text) else _MISMATCH
                outcomes[index] = outcome
            if outcome != _MATCH:
                failures.append(constraint.rpc_denials[position][outcome])
                break
        else:
            return constraint.allowed
    return Decision(False, None, tuple(failures))


def reaches_namespace(constraints: CompiledConstraints, namespace: str) -> bool:
    """Whether some constraint passes the checks made before the connection's metadata
    (namespace, resource, operation). When none does, no decision in ``namespace`` depends on
    a connection there, and a caller has no business learning whether one exists."""
    return any(
        (constraint.namespaces is None or namespace in constraint.namespaces)
        and constraint.static_denial is None
        for constraint in constraints.constraints
    )


def _covers_any(
    alternatives: tuple[tuple[tuple[str, Any], ...], ...], actual: Mapping[str, Any]
) -> bool:
    """Object metadata: every pair; a list of objects: any of them (fail closed on non-strings)."""
    get = actual.get
    for pairs in alternatives:
        for key, wanted in pairs:
            value = get(key)
            if not isinstance(value, str) or value != wanted:
                break
        else:
            return True
    return False


_UNSET: Final = object()
