"""Revocation: an operator withdraws a subject, a rule, or everyone, for a while.

``Revocations.check`` is the one question every user-facing use case asks right after
authentication (issuance for ``/v1/tokens`` and ``/v1/mcp``, admission for ``/v1/precheck`` and
``/v1/mcp``): is this principal, or a rule it would be served under, revoked? It costs a dict
truthiness test while nothing is revoked.

``revoke`` purges the cached tokens concerned (this replica's memory at once; with Redis the
shared records too) and refuses the scope until ``until``. Other replicas learn of it through a
sequence number in Redis that they poll (``sync``), then purge their own memory.

What this cannot do: a token already handed out stays valid at Smithery until it expires.
Smithery has no revocation; short token lifetimes are the real control.

Subjects never appear in clear in Redis: scopes are named by keyed hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import msgspec
from opentelemetry import trace

from broker.cache import CachedToken, CacheKey, TokenCache
from broker.errors import BrokerError, ForbiddenError
from broker.identity import Principal
from broker.metrics import Metrics
from broker.sharedcache import SharedCache
from broker.sharedstore import SharedStoreDown
from broker.telemetry import Telemetry, audit, deny

logger = logging.getLogger("broker.revocation")

SHARED_ENTRY_KEEP_SECONDS: Final = 60.0
"""A revocation entry stays in Redis at least this long, so every replica sees it (and purges its
memory) even when its refusal period is 0."""
ALL: Final = "all"

Namer = Callable[..., str]
"""``(purpose, *parts) -> opaque name``: a keyed hash (``Keyring.name`` with Redis)."""


class AccessRevokedError(ForbiddenError):
    code = "access_revoked"
    title = "Access revoked"


class SharedRevocationError(BrokerError):
    """The revocation was applied on this replica, but Redis could not take all of it: the
    detail says which of the shared steps were done."""

    status = 503
    code = "revocation_not_shared"
    title = "Revocation not shared"


class RevocationEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: str
    """``subject``, ``rule`` or ``all``."""
    at: float
    """When it was revoked (Unix seconds); recorded a second time, a moment later, once Redis is
    purged (``Revocations.revoke``). A replica applies an entry whenever it changes."""
    until: float
    """Refused until then (equal to ``at``: purge only). Redis keeps the latest ``until`` recorded
    for the scope: a later, shorter revocation never ends a longer one early."""


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(RevocationEntry)

_NOT_SHARED: Final = (
    "Revoked on this replica, but Redis did not confirm the record, so the other replicas may "
    "not apply it: Redis is unavailable or slow. Retry the request.",
    "Revoked on this replica and recorded in Redis (the other replicas apply it too), but the "
    "tokens stored in Redis may not all be purged: Redis is unavailable or slow. Retry the "
    "request.",
    "Revoked on this replica, recorded in Redis and the tokens stored there purged, but the "
    "other replicas may keep tokens they read back from Redis meanwhile: Redis is unavailable "
    "or slow. Retry the request.",
)
"""The 503's detail by the number of shared steps confirmed (``Revocations.revoke``); a step
whose reply was lost may have been done too, and doing any of them again is harmless."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What to revoke: exactly one of a subject (optionally of one issuer), a rule, or all."""

    subject: str | None = None
    issuer: str | None = None
    rule: str | None = None
    everyone: bool = False

    @property
    def kind(self) -> str:
        return "subject" if self.subject is not None else "rule" if self.rule is not None else ALL


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str
    until: float
    purged_local: int
    purged_shared: int | None
    """None without Redis."""


def random_namer() -> Namer:
    """Keyed hashes with a per-process key: scope names for a broker without Redis."""
    key = os.urandom(32)

    def name(purpose: str, *parts: str) -> str:
        mac = hmac.new(key, purpose.encode(), hashlib.sha256)
        for part in parts:
            data = part.encode()
            mac.update(len(data).to_bytes(4, "big") + data)
        return mac.hexdigest()

    return name


class Revocations:
    def __init__(
        self,
        *,
        cache: TokenCache,
        clock: Callable[[], float],
        default_seconds: int,
        namer: Namer | None = None,
        shared: SharedCache | None = None,
        telemetry: Telemetry | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._cache = cache
        self._clock = clock
        self._default_seconds = default_seconds
        self._name = namer or random_namer()
        self._shared = shared
        self._telemetry = telemetry or Telemetry()
        self._metrics = metrics or Metrics()
        self._refusing: dict[str, float] = {}
        """Scope field → refused until (only scopes still refusing)."""
        self._applied: dict[str, tuple[float, float]] = {}
        """Scope field → ``at`` and ``until`` of the entry already applied here (purge once per
        entry; apply again when Redis merged a longer ``until`` into it)."""
        self._sequence = 0
        self.refused = 0

    @property
    def sequence(self) -> int:
        """The last revocation sequence seen in Redis (shared records are stored under it)."""
        return self._sequence

    def __len__(self) -> int:
        return len(self._refusing)

    # --- the check -------------------------------------------------------------------------

    def check(
        self, principal: Principal, rule_ids: Iterable[str] = (), *, record: bool = True
    ) -> None:
        """Raise ``AccessRevokedError`` when the principal, or one of the rules it would be
        served under, is revoked. Fail closed: this runs before any token is served.

        A refusal marks the current span denied and, with ``record``, writes the decision's
        ``access.revoked`` audit line (a caller that records its own decisions passes False)."""
        if not self._refusing:
            return
        now = self._clock()
        for field in self._fields(principal.issuer, principal.subject, rule_ids):
            until = self._refusing.get(field)
            if until is None:
                continue
            if until > now:
                self.refused += 1
                self._metrics.inc("broker_revoked_requests_total")
                scope = field.split(":", 1)[0]
                deny(trace.get_current_span(), AccessRevokedError.code, {"scope": scope})
                if record:
                    audit(
                        "access.revoked",
                        subject=self._telemetry.enduser(principal.subject),
                        issuer=principal.issuer,
                        result="deny",
                        reason=AccessRevokedError.code,
                        scope=scope,
                    )
                raise AccessRevokedError("Access for this user has been revoked by an operator.")
            del self._refusing[field]

    def _fields(self, issuer: str, subject: str, rule_ids: Iterable[str]) -> list[str]:
        return [
            ALL,
            self._subject_field(issuer, subject),
            self._subject_field(None, subject),
            *(f"rule:{rule}" for rule in rule_ids),
        ]

    def _subject_field(self, issuer: str | None, subject: str) -> str:
        if issuer is None:
            return "subject-any:" + self._name("revoked-subject", subject)
        return "subject:" + self._name("revoked-subject-of", issuer, subject)

    # --- revoking --------------------------------------------------------------------------

    async def revoke(self, scope: Scope, seconds: int | None = None) -> Outcome:
        """Refuse ``scope`` for ``seconds`` (the configured period by default, never ending a
        longer refusal of the same scope early) and purge the cached tokens concerned, here at
        once and in Redis. Raises ``SharedRevocationError`` when Redis is unavailable or too slow
        for a step (its detail says which steps were done; retrying is harmless)."""
        now = self._clock()
        period = self._default_seconds if seconds is None else seconds
        entry = RevocationEntry(kind=scope.kind, at=now, until=now + period)
        if scope.subject is not None:
            field = self._subject_field(scope.issuer, scope.subject)
        elif scope.rule is not None:
            field = f"rule:{scope.rule}"
        else:
            field = ALL
        purged_local = self._apply(field, entry)
        audit(
            "admin.revoke",
            scope=scope.kind,
            subject=None if scope.subject is None else self._telemetry.enduser(scope.subject),
            issuer=scope.issuer,
            rule=scope.rule,
            seconds=period,
        )
        self._metrics.inc("broker_revocations_total", (("scope", scope.kind),))
        purged_shared: int | None = None
        shared = self._shared
        if shared is not None:
            done = 0
            try:
                # Three steps, in this order:
                # 1. record the entry, which moves the sequence: a mint already running anywhere
                #    (under the old sequence) can no longer store its token, however late it
                #    lands, and a replica that polls from now on refuses and purges its memory
                #    (one that polled between a bare sequence move and the record would have
                #    taken the new sequence without the entry, and stored a token under it);
                # 2. purge the records concerned: nothing can put an old token back now;
                # 3. record the entry again, marked later: every replica, this one included,
                #    purges its memory once more, dropping any old token it read back from
                #    Redis between its first purge and step 2.
                await shared.store.add_revocation(field, _ENCODER.encode(entry))
                done = 1
                purged_shared = await shared.purge(scope.subject, scope.rule)
                done = 2
                again = msgspec.structs.replace(entry, at=max(self._clock(), entry.at) + 1e-6)
                await shared.store.add_revocation(field, _ENCODER.encode(again))
            except SharedStoreDown:
                raise SharedRevocationError(_NOT_SHARED[done]) from None
            self._apply(field, again)
        # A longer refusal of the same scope already known here goes on (as it does in Redis).
        until = max(entry.until, self._refusing.get(field, entry.until))
        return Outcome(scope.kind, until, purged_local, purged_shared)

    def _apply(self, field: str, entry: RevocationEntry) -> int:
        """Start refusing (when the period has not ended) and purge this replica's memory."""
        self._applied[field] = (entry.at, entry.until)
        if entry.until > self._clock():
            self._refusing[field] = max(entry.until, self._refusing.get(field, 0.0))
        return self._cache.purge(self._matcher(field))

    def _matcher(self, field: str) -> Callable[[CacheKey, CachedToken], bool] | None:
        """Which cached tokens a revocation concerns (None: all of them). A rule revocation
        takes the tokens carrying that rule, and any whose rules were not recorded."""
        kind, _, name = field.partition(":")
        if kind == "subject":
            return lambda key, _: self._subject_field(key.issuer, key.subject) == field
        if kind == "subject-any":
            return lambda key, _: self._subject_field(None, key.subject) == field
        if kind == "rule":
            return lambda _, entry: not entry.rules or name in entry.rules
        return None

    # --- other replicas' revocations -------------------------------------------------------

    async def sync(self) -> None:
        """Apply the revocations other replicas recorded in Redis since the last call; forget
        the ones whose time is over. Raises ``SharedStoreDown`` when Redis is unavailable."""
        shared = self._shared
        if shared is None:
            return
        sequence = await shared.store.sequence()
        if sequence == self._sequence:
            return
        entries = await shared.store.revocations()
        now = self._clock()
        # Entries to drop, with the value read: Redis drops each only if it was not recorded
        # again since (the same scope revoked anew between this read and the drop).
        over: dict[str, bytes] = {}
        for field, raw in entries.items():
            try:
                entry = _DECODER.decode(raw)
            except msgspec.DecodeError:
                logger.warning("revocation: an unreadable entry in Redis was dropped")
                over[field] = raw
                continue
            if max(entry.until, entry.at + SHARED_ENTRY_KEEP_SECONDS) < now:
                over[field] = raw
                continue
            if self._applied.get(field) != (entry.at, entry.until):
                purged = self._apply(field, entry)
                logger.info("revocation: applied a %s revocation (%d purged)", entry.kind, purged)
        for field in [f for f in self._applied if f not in entries or f in over]:
            del self._applied[field]
        self._sequence = sequence
        await shared.store.drop_revocations(over)
