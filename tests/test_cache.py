"""Token cache: refresh margin with an injected clock, revisions, LRU bound, single-flight."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from broker.cache import CacheKey, TokenCache
from broker.errors import UpstreamProtocolError, UpstreamUnavailableError


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Minted:
    token: str
    expires_at: float


def key(subject: str = "alice", revision: str = "rev1") -> CacheKey:
    return CacheKey("https://idp.example", subject, b"digest", revision)


class Minter:
    def __init__(self, clock: Clock, lifetime: float = 900.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def __call__(self) -> Minted:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return Minted(f"tok-{self.calls}", self.clock() + self.lifetime)


async def test_second_request_is_a_hit() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock)
    first, hit1 = await cache.get_or_mint(key(), mint)
    second, hit2 = await cache.get_or_mint(key(), mint)
    assert (hit1, hit2) == (False, True)
    assert first.token == second.token == "tok-1"
    assert mint.calls == 1


@pytest.mark.parametrize(
    ("lifetime", "elapsed", "served"),
    [
        # margin = max(60 s, 20 % of lifetime)
        (900, 719, True),  # 181 s left, margin 180 s
        (900, 720, True),  # exactly the margin left
        (900, 721, False),
        (3600, 2879, True),  # margin 720 s
        (3600, 2881, False),
        (200, 139, True),  # margin 60 s (20 % would be 40 s)
        (200, 141, False),
    ],
)
async def test_refresh_margin_honoured(lifetime: float, elapsed: float, served: bool) -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, refresh_ahead=False)
    mint = Minter(clock, lifetime)
    await cache.get_or_mint(key(), mint)
    clock.now += elapsed
    _, hit = await cache.get_or_mint(key(), mint)
    assert hit is served
    assert mint.calls == (1 if served else 2)


async def test_never_serves_past_margin_even_when_never_refreshed() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, margin_seconds=0, margin_ratio=0)
    mint = Minter(clock, lifetime=100)
    await cache.get_or_mint(key(), mint)
    clock.now += 100  # expired exactly now
    assert cache.lookup(key()) is None
    assert len(cache) == 0  # the stale entry was dropped


async def test_token_shorter_than_margin_is_returned_but_not_cached() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock, lifetime=30)  # below the 60 s margin
    entry, _ = await cache.get_or_mint(key(), mint)
    assert entry.token == "tok-1"
    assert len(cache) == 0


async def test_a_token_minted_already_expired_is_an_upstream_error() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    with pytest.raises(UpstreamProtocolError):
        await cache.get_or_mint(key(), Minter(clock, lifetime=0))
    assert len(cache) == 0


async def test_policy_revision_change_never_serves_old_token() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock)
    old, _ = await cache.get_or_mint(key(revision="rev1"), mint)
    new, hit = await cache.get_or_mint(key(revision="rev2"), mint)
    assert not hit
    assert new.token != old.token


async def test_lru_bound_evicts_least_recently_used() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, max_entries=2)
    mint = Minter(clock)
    await cache.get_or_mint(key("a"), mint)
    await cache.get_or_mint(key("b"), mint)
    await cache.get_or_mint(key("a"), mint)  # a is now most recent
    await cache.get_or_mint(key("c"), mint)  # evicts b
    assert cache.lookup(key("a")) is not None
    assert cache.lookup(key("b")) is None
    assert cache.stats.evictions == 1
    assert len(cache) == 2


async def test_concurrent_misses_share_one_mint() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock)
    mint.gate = asyncio.Event()
    tasks = [asyncio.create_task(cache.get_or_mint(key(), mint)) for _ in range(50)]
    await asyncio.sleep(0)  # let every task reach the in-flight mint
    mint.gate.set()
    results = await asyncio.gather(*tasks)
    assert mint.calls == 1
    assert {entry.token for entry, _ in results} == {"tok-1"}
    assert cache.stats.waits == 49
    # One mint, one request that started it: the audit's cache_hit is False once, not 50 times.
    assert sorted(hit for _, hit in results) == [False] + [True] * 49


async def test_failed_mint_wakes_every_waiter_and_is_not_cached() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock)
    mint.gate = asyncio.Event()
    mint.error = UpstreamUnavailableError("down")
    tasks = [asyncio.create_task(cache.get_or_mint(key(), mint)) for _ in range(10)]
    await asyncio.sleep(0)
    mint.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UpstreamUnavailableError) for r in results)
    assert mint.calls == 1
    assert len(cache) == 0
    mint.error = None
    entry, hit = await cache.get_or_mint(key(), mint)  # the next request tries again
    assert not hit
    assert entry.token == "tok-2"


async def test_cancelled_caller_does_not_cancel_shared_mint() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock)
    mint.gate = asyncio.Event()
    leader = asyncio.create_task(cache.get_or_mint(key(), mint))
    follower = asyncio.create_task(cache.get_or_mint(key(), mint))
    await asyncio.sleep(0)
    leader.cancel()
    mint.gate.set()
    entry, _ = await follower
    assert entry.token == "tok-1"
    assert leader.cancelled()


def test_cached_token_repr_hides_token() -> None:
    from broker.cache import CachedToken

    assert "secret-token" not in repr(CachedToken("secret-token", 1.0, 0.0))


async def test_refresh_ahead_prepares_next_token_before_the_margin() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock, lifetime=900)  # margin 180 s; refresh-ahead inside 360 s
    await cache.get_or_mint(key(), mint)
    clock.now += 500  # 400 s left: not yet due
    entry, hit = await cache.get_or_mint(key(), mint)
    assert (entry.token, hit, mint.calls) == ("tok-1", True, 1)
    clock.now += 100  # 300 s left: due; served the current token, next one minted behind
    entry, hit = await cache.get_or_mint(key(), mint)
    assert (entry.token, hit) == ("tok-1", True)
    await asyncio.sleep(0)  # let the background mint run
    await asyncio.sleep(0)
    assert mint.calls == 2
    assert cache.stats.refreshes_ahead == 1
    entry, hit = await cache.get_or_mint(key(), mint)
    assert (entry.token, hit) == ("tok-2", True)


async def test_refresh_ahead_runs_refresh_and_misses_run_mint() -> None:
    """With Redis, ``mint`` takes the user's mint limit; refresh-ahead must not spend it, so it
    runs its own ``refresh`` (in memory ``before_mint`` is not run for it either)."""
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint, refresh = Minter(clock), Minter(clock)
    limited: list[str] = []
    await cache.get_or_mint(key(), mint, lambda: limited.append("miss"), refresh=refresh)
    clock.now += 600  # 300 s left: due; served, the next token prepared behind
    _, hit = await cache.get_or_mint(key(), mint, lambda: limited.append("hit"), refresh=refresh)
    assert hit
    clock.now += 200  # past the first token's margin: this miss joins the refresh under way
    entry, hit = await cache.get_or_mint(
        key(), mint, lambda: limited.append("join"), refresh=refresh
    )
    assert (hit, entry.expires_at) == (True, clock.now + 900)  # no mint of its own
    assert (mint.calls, refresh.calls, limited) == (1, 1, ["miss"])


async def test_valid_token_served_when_refresh_fails_never_past_expiry() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, refresh_ahead=False)
    mint = Minter(clock, lifetime=900)
    await cache.get_or_mint(key(), mint)
    mint.error = UpstreamUnavailableError("down")
    clock.now += 800  # past the margin, 100 s before expiry
    entry, hit = await cache.get_or_mint(key(), mint)
    assert (entry.token, hit) == ("tok-1", True)
    assert cache.stats.stale_served == 1
    clock.now += 100  # expired now: nothing valid to fall back on
    with pytest.raises(UpstreamUnavailableError):
        await cache.get_or_mint(key(), mint)
    assert entry.expires_at <= clock.now


async def test_a_token_purged_while_its_refresh_fails_is_not_served_stale() -> None:
    """A revocation purges the cache while the refresh mint is in flight; the mint then fails.
    The purged token must not come back as the stale fallback."""
    clock = Clock()
    cache = TokenCache(clock=clock, refresh_ahead=False)
    mint = Minter(clock, lifetime=900)
    await cache.get_or_mint(key(), mint)
    clock.now += 800  # past the margin: the next call mints, and could fall back on tok-1
    mint.gate = asyncio.Event()
    mint.error = UpstreamUnavailableError("down")
    waiting = asyncio.ensure_future(cache.get_or_mint(key(), mint))
    await asyncio.sleep(0)  # the call has started its mint and waits on the gate
    assert cache.purge(lambda k, _: k.subject == "alice") == 1
    mint.gate.set()
    with pytest.raises(UpstreamUnavailableError):
        await waiting
    assert cache.stats.stale_served == 0


async def test_stale_token_served_even_when_smithery_refuses_a_new_mint() -> None:
    from broker.errors import UpstreamRejectedError

    clock = Clock()
    cache = TokenCache(clock=clock, refresh_ahead=False)
    mint = Minter(clock, lifetime=900)
    await cache.get_or_mint(key(), mint)
    clock.now += 800
    mint.error = UpstreamRejectedError(401, "unauthorized")
    entry, _ = await cache.get_or_mint(key(), mint)  # still valid: served (Smithery refused)
    assert entry.token == "tok-1"


async def test_entries_remember_their_rules_and_a_purge_can_select_by_them() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock)
    mint = Minter(clock)
    alice, _ = await cache.get_or_mint(key("alice"), mint, rules=("own", "support"))
    bob, _ = await cache.get_or_mint(key("bob"), mint, rules=("own", "support"))
    await cache.get_or_mint(key("carol"), mint, rules=("own",))
    assert alice.rules == ("own", "support")
    assert alice.rules is bob.rules  # one shared tuple per distinct rule set
    assert cache.purge(lambda _, entry: "support" in entry.rules) == 2
    assert len(cache) == 1
    assert cache.peek(key("carol")) is not None
