"""Admitting one JSON-RPC message for one user on one connection: the precheck and proxy use case.

Renders the user's constraints exactly as the token endpoint does (same rules, same digest),
reads the connection's metadata from Smithery when needed (briefly cached), and asks the pure
``precheck.decide``. Every decision is written to the audit log with its reasons, never with
tool arguments or credentials. The record is made right after the request's current step (see
``Admission.decide``): off the path between the decision and the upstream write or the answer.

No HTTP here (``routes/``); Smithery is reached only through ``upstream``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from broker.cache import BoundedCache, TimedCache
from broker.constraints import constraints_digest, render_rules
from broker.errors import ConnectionNotFoundError
from broker.identity import Principal
from broker.metrics import Metrics
from broker.policy import PolicySet
from broker.precheck import (
    CompiledConstraints,
    Decision,
    Target,
    compile_constraints,
    decide,
    reaches_namespace,
)
from broker.revocation import Revocations
from broker.telemetry import Telemetry, audit, deny
from broker.upstream import SmitheryClient

COMPILED_CACHE_ENTRIES: Final = 4096
CONNECTION_CACHE_ENTRIES: Final = 10_000
READERS_PER_CONNECTION: Final = 1024
"""Callers remembered per cached connection; past that the entry starts over (reads again)."""
TOKEN_CACHE_ENTRIES: Final = 10_000
_NO_METADATA: Final[Mapping[str, Any]] = MappingProxyType({})
"""A connection that does not exist (or carries no metadata)."""


@dataclass(slots=True)
class Admission:
    policy: Callable[[], PolicySet]
    upstream: SmitheryClient
    clock: Callable[[], float]
    exempt_lifecycle: bool = False
    connection_cache_seconds: float = 30.0
    telemetry: Telemetry = field(default_factory=Telemetry)
    metrics: Metrics = field(default_factory=Metrics)
    revocations: Revocations | None = None
    """Asked by ``admit``: a revoked subject (or rule) is refused, not decided."""
    _compiled: BoundedCache[tuple[str, str, str], CompiledConstraints] | None = None
    _connections: TimedCache[tuple[str, str], dict[tuple[str, str], Mapping[str, Any]]] | None = (
        None
    )
    _by_token: BoundedCache[tuple[str, bytes], CompiledConstraints] | None = None
    _forgotten: int = 0
    """Counts ``forget_connection`` calls: a read that a write overtook is not cached."""

    def __post_init__(self) -> None:
        self._compiled = BoundedCache(COMPILED_CACHE_ENTRIES)
        self._by_token = BoundedCache(TOKEN_CACHE_ENTRIES)
        self._connections = TimedCache(
            max_entries=CONNECTION_CACHE_ENTRIES,
            ttl_seconds=self.connection_cache_seconds,
            clock=self.clock,
        )

    def constraints_for(
        self, principal: Principal, policy_set: PolicySet | None = None
    ) -> CompiledConstraints:
        """The user's rendered constraints under ``policy_set`` (default: the current set),
        compiled once per distinct constraint set and remembered per (revision, verified JWT):
        a repeated token renders nothing."""
        if policy_set is None:
            policy_set = self.policy()
        assert self._compiled is not None
        assert self._by_token is not None
        token_key = (policy_set.revision, principal.token_digest)
        if principal.token_digest:
            known = self._by_token.get(token_key)
            if known is not None:
                return known
        rendering = render_rules(policy_set, principal.issuer, principal.claims)
        digest = constraints_digest(
            [{"rule": a.rule_id, "grant": a.constraint} for a in rendering.applied]
        )
        key = (policy_set.revision, principal.issuer, digest)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = compile_constraints(rendering.applied)
            self._compiled.put(key, compiled)
        if principal.token_digest:
            self._by_token.put(token_key, compiled)
        return compiled

    async def target(
        self,
        principal: Principal,
        constraints: CompiledConstraints,
        namespace: str,
        connection_id: str,
    ) -> Target:
        """The connection as a decision sees it: its metadata, read from Smithery (API key) and
        cached briefly, per caller.

        Whether a connection exists is not the caller's to learn beyond their rules' reach, as
        at Smithery, which answers 404 for a connection a token cannot see. So the connection
        is read only when some rule passes namespace, resource and operation, and one that
        does not exist has no metadata: it fails every metadata-scoped rule exactly as another
        user's connection does (the same answer, and, cached alike, the same time). The cache
        remembers what each caller read: shared between callers, an answer from memory would
        tell one user that another used that connection id within the cache window.
        """
        if not reaches_namespace(constraints, namespace):
            return Target(namespace, _NO_METADATA)
        assert self._connections is not None
        key = (namespace, connection_id)
        reader = (principal.issuer, principal.subject)
        readers = self._connections.get(key)
        metadata = None if readers is None else readers.get(reader)
        if metadata is None:
            forgotten = self._forgotten
            try:
                connection = await self.upstream.fetch_connection(namespace, connection_id)
                metadata = connection.metadata or _NO_METADATA
            except ConnectionNotFoundError:
                metadata = _NO_METADATA
            if forgotten == self._forgotten:  # else a write came in meanwhile: maybe read stale
                readers = self._connections.get(key)
                if readers is None or len(readers) >= READERS_PER_CONNECTION:
                    readers = {}
                    self._connections.put(key, readers)
                readers[reader] = metadata
        return Target(namespace, metadata)

    def forget_connection(self, namespace: str, connection_id: str) -> None:
        """A connection was created, changed or deleted here: every caller reads it afresh."""
        assert self._connections is not None
        self._forgotten += 1
        self._connections.discard((namespace, connection_id))

    def _audit(
        self,
        decision: Decision,
        event: str,
        when: float,
        principal: Principal,
        namespace: str,
        connection_id: str | None,
        method: object,
        tool: str | None,
    ) -> None:
        audit(
            event,
            time=when,
            subject=self.telemetry.enduser(principal.subject),
            issuer=principal.issuer,
            namespace=namespace,
            connection=self.telemetry.connection(connection_id),
            method=method,
            tool=tool,
            result="allow" if decision.allowed else "deny",
            rule=decision.rule,
            reasons=[d.reason for d in decision.reasons],
        )

    def admit(
        self, principal: Principal, policy_set: PolicySet | None = None
    ) -> CompiledConstraints:
        """The user's constraints, once the user (or a rule they would be served under) is
        known not to be revoked (``AccessRevokedError``). Routes call this before reading
        anything from Smithery for the request, so a revoked user causes no upstream call.
        ``policy_set``: the snapshot a request decides on from start to end (default: the
        current set)."""
        constraints = self.constraints_for(principal, policy_set)
        if self.revocations is not None:
            self.revocations.check(principal, (c.rule for c in constraints))
        return constraints

    def decide(
        self,
        principal: Principal,
        constraints: CompiledConstraints,
        target: Target,
        message: Mapping[str, Any],
        *,
        event: str,
        connection_id: str | None,
    ) -> Decision:
        """Decide ``message`` under ``constraints`` (from ``admit``), trace and audit it."""
        method = message.get("method")
        params = message.get("params")
        tool = params.get("name") if isinstance(params, dict) and method == "tools/call" else None
        tool = tool if isinstance(tool, str) else None
        with self.telemetry.span("broker.precheck") as span:
            decision = decide(
                constraints,
                target,
                message,
                exempt_lifecycle=self.exempt_lifecycle,
            )
            if span is not None:
                span.set_attribute("mcp.method", str(method))
                if tool is not None:
                    span.set_attribute("mcp.tool.name", tool)
                span.set_attribute("broker.namespace", target.namespace)
                if decision.allowed:
                    span.set_attribute("broker.decision", "allow")
                    span.set_attribute("broker.rules.matched", [decision.rule or ""])
                else:
                    first = decision.reasons[0]
                    deny(
                        span,
                        first.reason,
                        {
                            "reasons": [
                                f"{d.rule or '-'}:{d.reason}:{d.field or ''}"
                                for d in decision.reasons
                            ]
                        },
                    )
        reason = "" if decision.allowed else decision.reasons[0].reason
        self.metrics.inc(
            "broker_mcp_decisions_total",
            (
                ("endpoint", event.split(".")[0]),
                ("result", "allow" if decision.allowed else "deny"),
                ("reason", reason),
            ),
        )
        # The audit record is built and written once the request's current step ends: after
        # the proxy has written the message upstream, or precheck its answer. ``call_soon``
        # runs it in a copy of this context, so it carries this request's trace id; its time is
        # the decision's.
        record = (event, time.time(), principal, target.namespace, connection_id, method, tool)
        try:
            asyncio.get_running_loop().call_soon(self._audit, decision, *record)
        except RuntimeError:  # no event loop (tools): at once
            self._audit(decision, *record)
        return decision
