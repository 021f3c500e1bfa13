"""Issuing a service token to an authenticated principal: the token endpoint's use case.

Render the policy for the principal, narrow it to the rules the caller asked for (never wider),
plan the mint, then serve the token from the cache or mint it once (single-flight). Denials raise
the broker's errors; the precise reason goes to the audit log, not to the caller.

No HTTP here (``routes/``) and no direct Smithery or cache-library calls (``upstream``/``cache``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from broker.cache import BoundedCache, CachedToken, CacheKey, TokenCache
from broker.constraints import MintPlan, plan_mint, render_rules
from broker.errors import (
    BrokerError,
    CallerError,
    NoMatchingRuleError,
    RuleNotApplicableError,
    UnknownRuleError,
)
from broker.identity import Principal
from broker.metrics import Metrics
from broker.policy import PolicySet
from broker.ratelimit import RateLimiter
from broker.revocation import AccessRevokedError, Revocations
from broker.sharedcache import SharedCache
from broker.telemetry import Telemetry, audit, audit_log, deny
from broker.upstream import MintedToken, SmitheryClient


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: float
    rule_ids: tuple[str, ...]
    policy_revision: str
    cache_hit: bool
    digest: str


PLAN_CACHE_ENTRIES: Final = 10_000


@dataclass(slots=True)
class Issuance:
    """Everything the token endpoint needs; built once by ``create_app``."""

    policy: Callable[[], PolicySet]
    """The current policy set (a snapshot is taken once per request)."""
    cache: TokenCache
    upstream: SmitheryClient
    plans: BoundedCache[tuple[str, bytes, tuple[str, ...]], MintPlan] = field(
        default_factory=lambda: BoundedCache(PLAN_CACHE_ENTRIES)
    )
    """Plans by (policy revision, JWT digest, requested rules): a repeated token renders once."""
    telemetry: Telemetry = field(default_factory=Telemetry)
    metrics: Metrics = field(default_factory=Metrics)
    mint_limit: RateLimiter | None = None
    """Per-user limit on mints (cache hits are not limited)."""
    revocations: Revocations | None = None
    """Checked once the rules are known: a revoked subject or rule gets no token."""
    shared: SharedCache | None = None
    """With Redis: the tier consulted on a memory miss (one mint across replicas)."""

    def plan(
        self, policy_set: PolicySet, principal: Principal, requested: Sequence[str]
    ) -> MintPlan:
        """The mint plan for ``principal``, narrowed to ``requested`` rule ids when given."""
        rendering = render_rules(policy_set, principal.issuer, principal.claims)
        applied = rendering.applied
        applicable = tuple(a.rule_id for a in applied)
        if requested:
            unknown = [r for r in requested if policy_set.rule(r) is None]
            if unknown:
                raise UnknownRuleError(f"Unknown rule id(s): {', '.join(sorted(set(unknown)))}.")
            wanted = set(requested)
            applied = tuple(a for a in applied if a.rule_id in wanted)
            missing = wanted - {a.rule_id for a in applied}
            if missing:
                audit(
                    "token.denied",
                    subject=self.telemetry.enduser(principal.subject),
                    issuer=principal.issuer,
                    revision=policy_set.revision,
                    reason="rule_not_applicable",
                    rules=sorted(missing),
                )
                raise RuleNotApplicableError(
                    f"Rule(s) not applicable to the caller: {', '.join(sorted(missing))}."
                )
        if not applied:
            audit(
                "token.denied",
                subject=self.telemetry.enduser(principal.subject),
                issuer=principal.issuer,
                revision=policy_set.revision,
                reason="no_matching_rule",
                skipped={s.rule_id: s.reason for s in rendering.skipped},
            )
            raise NoMatchingRuleError("No policy rule grants access to this user.")
        plan = plan_mint(applied)
        return dataclasses.replace(plan, applicable=applicable) if requested else plan

    async def issue(
        self,
        principal: Principal,
        requested: Sequence[str] = (),
        *,
        for_proxy: bool = False,
        policy_set: PolicySet | None = None,
    ) -> IssuedToken:
        """The user's service token (cached, or minted now), narrowed to ``requested`` rules.

        ``for_proxy``: the guarded proxy uses the token itself and hands it to no one, and its
        own ``proxy.decision`` record covers the call: no ``token.issued`` then (a token minted
        for it has its ``token.minted``, as every mint). ``policy_set``: the snapshot the
        request decided on (default: the current set), so a reload in between cannot have one
        revision decide and another mint.
        """
        if policy_set is None:
            policy_set = self.policy()
        telemetry = self.telemetry
        plan_key = (policy_set.revision, principal.token_digest, tuple(requested))
        with telemetry.span("broker.policy.evaluate") as span:
            plan = self.plans.get(plan_key) if principal.token_digest else None
            if plan is None:
                try:
                    plan = self.plan(policy_set, principal, requested)
                except BrokerError as exc:
                    deny(span, exc.code)
                    self.metrics.inc(
                        "broker_token_decisions_total", (("result", "deny"), ("reason", exc.code))
                    )
                    raise
                if principal.token_digest:
                    self.plans.put(plan_key, plan)
            if span is not None:
                span.set_attribute("broker.policy.revision", policy_set.revision)
                span.set_attribute("broker.rules.matched", list(plan.rule_ids))
                span.set_attribute("broker.constraints.digest", plan.digest)
        revocations = self.revocations
        if revocations is not None:
            revocations.check(principal, plan.revocable)

        def mint() -> Awaitable[MintedToken]:
            # Again here: a revocation may have come in while this waited for another
            # replica's mint (the lock wait) or for a slot.
            if revocations is not None:
                revocations.check(principal, plan.revocable)
            return self._mint(plan, principal, policy_set)

        key = CacheKey(principal.issuer, principal.subject, plan.digest_bytes, policy_set.revision)
        try:
            entry, hit = await self._fetch(principal, plan, key, mint)
        except AccessRevokedError:
            raise  # the revocation check wrote its own record
        except BrokerError as exc:
            # No token after all: refused here (a rate limit) or failed at Smithery.
            audit(
                "token.denied" if isinstance(exc, CallerError) else "token.failed",
                subject=telemetry.enduser(principal.subject),
                issuer=principal.issuer,
                revision=policy_set.revision,
                rules=list(plan.rule_ids),
                digest=plan.digest,
                reason=exc.code,
            )
            raise
        if revocations is not None:  # revoked while the token was being fetched or minted
            revocations.check(principal, plan.revocable)
        self.metrics.inc("broker_token_decisions_total", (("result", "allow"), ("reason", "")))
        if audit_log.enabled and not for_proxy:  # nobody reads it, or the proxy's own record
            audit(
                "token.issued",
                subject=telemetry.enduser(principal.subject),
                issuer=principal.issuer,
                revision=policy_set.revision,
                rules=list(plan.rule_ids),
                digest=plan.digest,
                cache_hit=hit,
            )
        return IssuedToken(
            token=entry.token,
            expires_at=entry.expires_at,
            rule_ids=plan.rule_ids,
            policy_revision=policy_set.revision,
            cache_hit=hit,
            digest=plan.digest,
        )

    async def _fetch(
        self,
        principal: Principal,
        plan: MintPlan,
        key: CacheKey,
        mint: Callable[[], Awaitable[MintedToken]],
    ) -> tuple[CachedToken, bool]:
        """The token for ``key``: from memory, from Redis, or minted (once across requests and,
        with Redis, across replicas); and whether it was a cache hit."""
        with self.telemetry.span("broker.cache.lookup") as span:
            limit = self.mint_limit
            shared = self.shared
            if shared is None:
                entry, hit = await self.cache.get_or_mint(
                    key,
                    mint,
                    None
                    if limit is None
                    else lambda: limit.check(principal.issuer, principal.subject),
                    rules=plan.rule_ids,
                )
            else:
                # The limit is taken inside the shared tier, only when a mint is due (a token
                # another replica stored is a hit); refresh-ahead, as in memory, takes none.
                entry, hit = await self.cache.get_or_mint(
                    key,
                    lambda: shared.fetch_or_mint(
                        key,
                        plan.rule_ids,
                        mint,
                        None
                        if limit is None
                        else lambda: limit.acquire(principal.issuer, principal.subject),
                    ),
                    rules=plan.rule_ids,
                    refresh=lambda: shared.fetch_or_mint(key, plan.rule_ids, mint),
                )
            if span is not None:
                span.set_attribute("broker.cache.hit", hit)
                span.set_attribute(
                    "broker.token.fingerprint", self.telemetry.fingerprint(entry.token)
                )
        return entry, hit

    async def _mint(
        self, plan: MintPlan, principal: Principal, policy_set: PolicySet
    ) -> MintedToken:
        """One token from Smithery, audited as ``token.minted`` once it is: exactly one record
        per token minted on this replica, whoever waits for it (no one, when the request that
        started it left, or when it is a refresh-ahead)."""
        with self.telemetry.span("broker.token.mint") as span:
            try:
                minted = await self.upstream.mint_token(plan.constraints)
            except BrokerError as exc:
                self.metrics.inc("broker_upstream_mints_total", (("result", exc.code),))
                if span is not None:
                    span.set_attribute("broker.upstream.error", exc.code)
                raise
            self.metrics.inc("broker_upstream_mints_total", (("result", "ok"),))
            audit(
                "token.minted",
                subject=self.telemetry.enduser(principal.subject),
                issuer=principal.issuer,
                revision=policy_set.revision,
                rules=list(plan.rule_ids),
                digest=plan.digest,
                expires_at=minted.expires_at,
            )
            return minted
