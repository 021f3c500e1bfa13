"""What a service token may do: its effective scope over connections.

A token carries blocks of constraints, root first (``token.py``). Like Biscuit attenuation, the
blocks are AND'ed and the constraints inside one block are OR'ed: a request is allowed when every
block has at least one constraint that allows it. A block without constraints (a token minted
without a policy) adds no restriction. The per-constraint rules follow
``reference/SMITHERY-SEMANTICS.md``: fields inside a constraint are AND'ed, an omitted field does
not restrict, a list widens. ``ttl`` is not part of the check.

``rpcReqMatch`` only concerns ``POST /connect/{ns}/{id}/mcp``: ``Scope.permits_message`` adds it
to the per-constraint check for that endpoint. Its regexes have JavaScript semantics, so this module
never evaluates them: it asks an injected ``RpcMatcher`` (the node oracle, ``rpc_oracle.py``), only
for constraints whose other fields already allow the message. Apart from that call this module is
pure: no I/O, no clock. It must not import the broker's matcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from msgspec import UnsetType

from broker.emulator.constraint import Constraint, MetadataFilter, Operation, Resource


@dataclass(frozen=True, slots=True)
class Action:
    """One thing a bearer asks to do: an operation on a resource type in a namespace."""

    namespace: str
    resource: Resource
    operation: Operation


class RpcMatcher(Protocol):
    """Whether every ``{dotPath: pattern}`` of an ``rpcReqMatch`` map matches a JSON-RPC body.

    ``body`` is the message's exact JSON text. Implementations must use JavaScript semantics
    (SMITHERY-SEMANTICS.md, "rpcReqMatch") and raise rather than guess when they cannot answer.
    """

    async def __call__(self, rules: Mapping[str, str], body: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Scope:
    """The effective scope of a service token: blocks AND'ed, constraints in a block OR'ed."""

    blocks: tuple[tuple[Constraint, ...], ...]

    def permits_action(self, action: Action) -> bool:
        """Whether the action is allowed for at least some resource metadata.

        This ignores ``metadata`` filters: it answers "may this token do this kind of thing in
        this namespace at all", which decides between 403 and a metadata-filtered result.
        """
        return all(
            not block or any(_constraint_permits_action(c, action) for c in block)
            for block in self.blocks
        )

    def permits(self, action: Action, metadata: Mapping[str, Any] | None) -> bool:
        """Whether the action is allowed on a resource that carries this metadata."""
        return all(
            not block
            or any(
                _constraint_permits_action(c, action) and _constraint_permits_metadata(c, metadata)
                for c in block
            )
            for block in self.blocks
        )

    async def permits_message(
        self,
        action: Action,
        metadata: Mapping[str, Any] | None,
        body: str,
        match: RpcMatcher,
        *,
        skip_rpc_match: bool = False,
    ) -> bool:
        """Whether the action on this connection is allowed for this JSON-RPC message ``body``.

        As ``permits``, and besides every ``rpcReqMatch`` entry of the constraint must match
        (an omitted ``rpcReqMatch`` does not restrict). ``skip_rpc_match`` ignores
        ``rpcReqMatch`` but nothing else (the lifecycle exemption). Blocks and constraints are
        tried in order and ``match`` is awaited only when it can change the answer.
        """
        for block in self.blocks:
            if block and not await _block_permits_message(
                block, action, metadata, body, match, skip_rpc_match=skip_rpc_match
            ):
                return False
        return True


async def _block_permits_message(
    block: Sequence[Constraint],
    action: Action,
    metadata: Mapping[str, Any] | None,
    body: str,
    match: RpcMatcher,
    *,
    skip_rpc_match: bool,
) -> bool:
    """At least one constraint of the block allows the message (OR)."""
    for constraint in block:
        if not (
            _constraint_permits_action(constraint, action)
            and _constraint_permits_metadata(constraint, metadata)
        ):
            continue
        rules = constraint.rpc_req_match
        if skip_rpc_match or isinstance(rules, UnsetType) or await match(rules, body):
            return True
    return False


def _constraint_permits_action(constraint: Constraint, action: Action) -> bool:
    return (
        _field_contains(constraint.namespaces, action.namespace)
        and _field_contains(constraint.resources, action.resource)
        and _field_contains(constraint.operations, action.operation)
    )


def _field_contains(allowed: str | Sequence[str] | UnsetType, value: str) -> bool:
    """An omitted field allows everything; a string allows itself; a list allows its members."""
    if isinstance(allowed, UnsetType):
        return True
    if isinstance(allowed, str):
        return allowed == value
    return value in allowed


def _constraint_permits_metadata(
    constraint: Constraint, metadata: Mapping[str, Any] | None
) -> bool:
    """An object needs all its pairs in the metadata (AND); an array needs any one object (OR).

    A connection without metadata has no pairs. Values compare as strings: a connection
    whose value is not a string (the Connection schema allows any JSON value) never equals a
    filter value (OPEN). An empty array allows nothing; an empty object allows everything.
    """
    wanted = constraint.metadata
    if isinstance(wanted, UnsetType):
        return True
    actual: Mapping[str, Any] = metadata or {}
    if isinstance(wanted, dict):
        return _pairs_match(wanted, actual)
    return any(_pairs_match(option, actual) for option in wanted)


def _pairs_match(wanted: MetadataFilter, actual: Mapping[str, Any]) -> bool:
    return all(
        isinstance(actual.get(key), str) and actual[key] == value for key, value in wanted.items()
    )
