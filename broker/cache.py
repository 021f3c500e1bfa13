"""The service-token cache, single-flight minting, and the broker's other bounded caches.
The only module that imports cachetools.

Tokens are keyed by (issuer, subject, constraints digest, policy revision), so a policy change or
a different rule selection can never serve an old token. A token is served only while its
remaining life is at least the refresh margin: the larger of ``margin_seconds`` and
``margin_ratio`` of its lifetime; within one more margin of that, the next token is minted in the
background (refresh-ahead). When a refresh fails, a token past its margin but not expired is
served rather than an error, never past its expiry. The cache is bounded (LRU). Concurrent
misses for one key share one upstream call; a failed mint is not cached and every waiter
receives the same error.

Time comes from the injected ``clock``. This module knows nothing of HTTP or Smithery.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Generic, NamedTuple, Protocol, TypeVar

import cachetools

from broker.errors import UpstreamError, UpstreamProtocolError

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_MAX_ENTRIES: Final = 10_000
DEFAULT_MARGIN_SECONDS: Final = 60.0
DEFAULT_MARGIN_RATIO: Final = 0.2
MAX_RULE_SETS: Final = 4096
"""Distinct rule-id sets shared between cache entries; beyond that, entries keep their own."""


class CacheKey(NamedTuple):
    issuer: str
    subject: str
    digest: bytes
    """SHA-256 of the canonical constraint list (raw bytes: half the memory of hex)."""
    revision: str


class Minted(Protocol):
    @property
    def token(self) -> str: ...

    @property
    def expires_at(self) -> float: ...


class CachedToken:
    """One service token with the facts needed to decide whether it may still be served, and
    the ids of the rules it carries (so a rule revocation can purge just those; empty: not
    known, and such a token is purged by every rule revocation)."""

    __slots__ = ("expires_at", "minted_at", "rules", "token")

    def __init__(
        self, token: str, expires_at: float, minted_at: float, rules: tuple[str, ...] = ()
    ) -> None:
        self.token = token
        self.expires_at = expires_at
        self.minted_at = minted_at
        self.rules = rules

    def __repr__(self) -> str:  # the token itself must never reach a log
        return f"CachedToken(expires_at={self.expires_at!r}, minted_at={self.minted_at!r})"


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    mints: int = 0
    mint_failures: int = 0
    waits: int = 0
    """Requests that joined another request's in-flight mint."""
    evictions: int = 0
    refreshes_ahead: int = 0
    """Background mints started before a served token reached its margin."""
    stale_served: int = 0
    """Tokens served past their margin (never past expiry) because a refresh failed."""


class LRU(Generic[K, V]):
    """A bounded least-recently-used map on ``OrderedDict`` (C): on the request path a hit is two
    C calls, and an entry costs one ordered-dict node (cachetools' LRU keeps three containers per
    entry and runs its bookkeeping in Python, which R1 and R6 in ``bench/`` measured)."""

    __slots__ = ("_data", "_maxsize", "on_evict")

    def __init__(self, maxsize: int, on_evict: Callable[[], None] | None = None) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._maxsize = maxsize
        self.on_evict = on_evict

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict()

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._data.pop(key, default)

    def clear(self) -> None:
        self._data.clear()

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the entries, oldest first."""
        return list(self._data.items())


class TokenCache:
    """Bounded LRU of service tokens with refresh margins and per-key single-flight."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        margin_seconds: float = DEFAULT_MARGIN_SECONDS,
        margin_ratio: float = DEFAULT_MARGIN_RATIO,
        refresh_ahead: bool = True,
        clock: Callable[[], float],
    ) -> None:
        self.stats = CacheStats()
        self._refresh_ahead = refresh_ahead
        self._entries: LRU[CacheKey, CachedToken] = LRU(max_entries, self._count_eviction)
        self._margin_seconds = margin_seconds
        self._margin_ratio = margin_ratio
        self._clock = clock
        self._inflight: dict[CacheKey, asyncio.Task[CachedToken]] = {}
        self._generation = 0
        """Moved by ``purge``: a mint that started before a purge does not refill the cache."""
        self._rule_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
        """One shared tuple per distinct set of rule ids, so an entry pays a pointer for them."""

    def __len__(self) -> int:
        return len(self._entries)

    def _count_eviction(self) -> None:
        self.stats.evictions += 1

    def servable(self, entry: CachedToken, now: float) -> bool:
        """True while the remaining life is at least the refresh margin (and never once expired)."""
        lifetime = entry.expires_at - entry.minted_at
        margin = max(self._margin_seconds, self._margin_ratio * lifetime)
        remaining = entry.expires_at - now
        return remaining > 0 and remaining >= margin

    def lookup(self, key: CacheKey) -> CachedToken | None:
        """A servable token for ``key``, or None (a stale entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.servable(entry, self._clock()):
            return entry
        self._entries.pop(key, None)
        return None

    def peek(self, key: CacheKey) -> CachedToken | None:
        """The entry for ``key`` whatever its state (no LRU update, nothing dropped)."""
        return self._entries.get(key)

    def purge(self, match: Callable[[CacheKey, CachedToken], bool] | None = None) -> int:
        """Drop the entries ``match`` selects (all without one); the number dropped. Mints
        already in flight still answer their waiters but are not cached (they may predate the
        reason for the purge, e.g. a revocation)."""
        self._generation += 1
        if match is None:
            count = len(self._entries)
            self._entries.clear()
            return count
        doomed = [key for key, entry in self._entries.items() if match(key, entry)]
        for key in doomed:
            self._entries.pop(key)
        return len(doomed)

    async def get_or_mint(
        self,
        key: CacheKey,
        mint: Callable[[], Awaitable[Minted]],
        before_mint: Callable[[], None] | None = None,
        *,
        rules: tuple[str, ...] = (),
        refresh: Callable[[], Awaitable[Minted]] | None = None,
    ) -> tuple[CachedToken, bool]:
        """The cached token for ``key`` or a freshly minted one; the flag is True when this call
        started no mint: a hit, or a join of the mint already in flight for ``key`` (the audit's
        ``cache_hit``: a burst of requests for one new token has one False, not one per request).

        The mint runs in its own task, so a caller that goes away does not cancel it for the
        others waiting on the same key. ``before_mint`` runs only when this call starts a mint
        (not on hits, joins or refresh-ahead). ``rules``: the ids of the rules a token for
        ``key`` carries (the same for every token of a key: the key holds their digest).
        ``refresh``: what refresh-ahead runs instead of ``mint``, for a ``mint`` that does more
        than mint (with Redis it takes the per-user mint limit, which refresh-ahead must not
        spend, as ``before_mint`` is not run for it).
        """
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            self._entries.pop(key)
            entry = None
        if entry is not None and self.servable(entry, now):
            self.stats.hits += 1
            if self._refresh_ahead and key not in self._inflight and self._due(entry, now):
                # Mint the next token now, in the background, so it is ready before this one
                # reaches its margin; this request is served the current one.
                self.stats.refreshes_ahead += 1
                self._start(key, refresh or mint, rules)
            return entry, True
        self.stats.misses += 1
        task = self._inflight.get(key)
        joined = task is not None
        if task is None:
            if before_mint is not None:
                before_mint()  # e.g. a per-user mint limit; raising stops the mint
            task = self._start(key, mint, rules)
        else:
            self.stats.waits += 1
        try:
            return await asyncio.shield(task), joined
        except UpstreamError:
            # Smithery failed; a token past its refresh margin but not yet expired is still a
            # valid token: serve it rather than fail (never past its expiry, and never once a
            # purge, such as a revocation while the mint ran, has taken it out).
            if (
                entry is not None
                and self._entries.get(key) is entry
                and entry.expires_at > self._clock()
            ):
                self.stats.stale_served += 1
                return entry, True
            raise

    def _due(self, entry: CachedToken, now: float) -> bool:
        """Within one more margin of the refresh margin: time to prepare the next token."""
        lifetime = entry.expires_at - entry.minted_at
        margin = max(self._margin_seconds, self._margin_ratio * lifetime)
        return entry.expires_at - now < 2 * margin

    def _start(
        self, key: CacheKey, mint: Callable[[], Awaitable[Minted]], rules: tuple[str, ...]
    ) -> asyncio.Task[CachedToken]:
        if len(self._rule_sets) < MAX_RULE_SETS:
            rules = self._rule_sets.setdefault(rules, rules)
        task = asyncio.ensure_future(self._mint(key, mint, rules))
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._finish(key, done))
        return task

    async def _mint(
        self, key: CacheKey, mint: Callable[[], Awaitable[Minted]], rules: tuple[str, ...]
    ) -> CachedToken:
        minted_at = self._clock()
        generation = self._generation
        try:
            minted = await mint()
        except BaseException:
            self.stats.mint_failures += 1
            raise
        self.stats.mints += 1
        # A token another replica minted (read from a shared tier) says when it was minted, so
        # its margins are computed on its real lifetime.
        entry = CachedToken(
            minted.token,
            minted.expires_at,
            getattr(minted, "minted_at", None) or minted_at,
            rules,
        )
        if entry.expires_at <= self._clock():  # useless to anyone: say so, do not hand it out
            raise UpstreamProtocolError("Smithery answered with a token that has already expired.")
        if generation == self._generation and self.servable(entry, minted_at):
            self._entries[key] = entry
        return entry

    def _finish(self, key: CacheKey, task: asyncio.Task[CachedToken]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            # Mark the outcome as retrieved: every waiter re-raises it already, and a failure
            # nobody waited for must not be reported again by the event loop at shutdown.
            task.exception()

    def clear(self) -> None:
        self._entries.clear()


class ExpiringCache(Generic[V]):
    """A bounded LRU whose entries each expire at their own time (``expires_at`` on the injected
    clock). Remembers verified JWTs by hash until their ``exp``; never serves past it. It sits on
    every request's path, so it is the ``OrderedDict`` LRU, not cachetools' TLRU (which R1 in
    ``bench/`` measured at several µs per hit)."""

    def __init__(self, *, max_entries: int, clock: Callable[[], float]) -> None:
        self._enabled = max_entries > 0
        self._entries: LRU[bytes, tuple[float, V]] = LRU(max(1, max_entries))
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if self._clock() >= expires_at:
            self._entries.pop(key)
            return None
        return value

    def put(self, key: bytes, value: V, expires_at: float) -> None:
        if self._enabled and expires_at > self._clock():
            self._entries[key] = (expires_at, value)

    def discard(self, key: bytes) -> None:
        self._entries.pop(key)


class TimedCache(Generic[K, V]):
    """Values reused for a fixed time (e.g. a connection's metadata read from Smithery):
    cachetools' ``TTLCache`` with the injected clock as its timer."""

    def __init__(self, *, max_entries: int, ttl_seconds: float, clock: Callable[[], float]) -> None:
        self._enabled = max_entries > 0 and ttl_seconds > 0
        self._entries: cachetools.TTLCache[K, V] = cachetools.TTLCache(
            maxsize=max(1, max_entries), ttl=max(ttl_seconds, 1e-9), timer=clock
        )

    def get(self, key: K) -> V | None:
        return self._entries.get(key) if self._enabled else None

    def put(self, key: K, value: V) -> None:
        if self._enabled:
            self._entries[key] = value

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)


class BoundedCache(Generic[K, V]):
    """A plain bounded LRU for derived, immutable values (e.g. compiled constraints by digest)."""

    def __init__(self, max_entries: int) -> None:
        self._entries: LRU[K, V] = LRU(max_entries)

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
