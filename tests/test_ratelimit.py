"""Per-subject rate limits: a burst from one user gets 429s while another user is unaffected."""

from __future__ import annotations

import math
from typing import Any

import pytest

from broker.ratelimit import ConcurrencyLimit, RateLimitedError, RateLimiter, SharedRateLimiter
from tests.inprocess import harness


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_second=2, burst=3, clock=clock, what="requests")
    for _ in range(3):
        limiter.check("iss", "alice")
    with pytest.raises(RateLimitedError) as caught:
        limiter.check("iss", "alice")
    assert caught.value.retry_after_seconds == 1
    limiter.check("iss", "bob")  # other users have their own bucket
    clock.now += 0.5  # one token back at 2/s
    limiter.check("iss", "alice")
    with pytest.raises(RateLimitedError):
        limiter.check("iss", "alice")


def test_clock_step_back_does_not_drain_an_idle_users_bucket() -> None:
    """The clock is the wall clock: an NTP step back of 10 minutes left the next request of an
    idle user refused for 10 minutes (the Lua bucket in Redis already clamps at 0)."""
    clock = Clock()
    clock.now = 1_000_000.0
    limiter = RateLimiter(rate_per_second=1, burst=100, clock=clock, what="requests")
    limiter.check("iss", "alice")
    clock.now -= 600
    for _ in range(99):
        limiter.check("iss", "alice")
    with pytest.raises(RateLimitedError) as caught:
        limiter.check("iss", "alice")
    assert caught.value.retry_after_seconds == 1
    clock.now += 1  # refills from the new time on
    limiter.check("iss", "alice")


class Taking:
    """A shared store whose bucket refuses with a given wait (as Redis' reply was read)."""

    def __init__(self, wait: float) -> None:
        self.wait = wait

    async def take(self, name: str, rate_per_second: float, burst: int) -> float:
        return self.wait


@pytest.mark.parametrize(
    ("wait", "retry_after"),
    [
        (0.3, 1),
        (1.5, 2),
        (4.0, 4),  # the longest at 0.25/s: one token from empty
        (math.inf, 4),
        (math.nan, 4),
        (1e300, 4),
        (-5.0, 4),
    ],
)
async def test_garbled_wait_from_redis_is_a_bounded_retry_after(
    wait: float, retry_after: int
) -> None:
    """A garbled reply (something else answering at Redis' address) gave a 500 (OverflowError
    for inf, ValueError for NaN) or a 301-digit Retry-After (1e300)."""
    store: Any = Taking(wait)
    limiter = SharedRateLimiter(
        store=store,
        name=lambda *parts: "|".join(parts),
        rate_per_second=0.25,
        burst=5,
        clock=Clock(),
        what="requests",
    )
    with pytest.raises(RateLimitedError) as caught:
        await limiter.acquire("iss", "alice")
    assert caught.value.retry_after_seconds == retry_after


def test_zero_rate_disables() -> None:
    limiter = RateLimiter(rate_per_second=0, burst=1, clock=Clock(), what="requests")
    for _ in range(100):
        limiter.check("iss", "alice")


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(rate_per_second=1, burst=1, clock=Clock(), what="r", max_subjects=10)
    for index in range(1000):
        limiter.check("iss", f"user-{index}")
    assert len(limiter._buckets) == 10


async def test_burst_from_one_subject_is_429_while_another_is_unaffected() -> None:
    async with harness(max_body_bytes=1024 * 1024) as h:
        from broker.ratelimit import RateLimiter as Limiter

        h.state.request_limit = Limiter(
            rate_per_second=1, burst=5, clock=h.state.clock, what="requests"
        )
        body = {
            "namespace": "my-app",
            "metadata": {"userId": "x"},
            "request": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        }
        noisy = h.auth("noisy", email_verified=True)
        statuses = [
            (await h.client.post("/v1/precheck", json=body, headers=noisy)).status_code
            for _ in range(8)
        ]
        assert statuses[:5] == [200] * 5
        assert set(statuses[5:]) == {429}
        refused = await h.client.post("/v1/precheck", json=body, headers=noisy)
        assert refused.json()["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        quiet = await h.client.post(
            "/v1/precheck", json=body, headers=h.auth("quiet", email_verified=True)
        )
        assert quiet.status_code == 200


async def test_mint_limit_applies_to_mints_not_cache_hits() -> None:
    async with harness() as h:
        from broker.ratelimit import RateLimiter as Limiter

        h.state.issuance.mint_limit = Limiter(
            rate_per_second=0.001, burst=1, clock=h.state.clock, what="token mints"
        )
        auth = h.auth("alice", email_verified=True)
        assert (await h.client.post("/v1/tokens", headers=auth)).status_code == 200
        for _ in range(5):  # cached: not limited
            assert (await h.client.post("/v1/tokens", headers=auth)).status_code == 200
        narrowed = await h.client.post(
            "/v1/tokens", headers=auth, json={"rules": ["own-connections"]}
        )
        assert narrowed.status_code == 200  # same constraints: same cached token
        other = h.auth("alice", email_verified=True, groups=["support"])  # new rules: new mint
        response = await h.client.post("/v1/tokens", headers=other)
        assert response.status_code == 429
        assert response.json()["code"] == "rate_limited"


async def test_limits_are_wired_from_settings() -> None:
    async with harness() as h:
        assert h.state.request_limit is not None
        assert h.state.request_limit.enabled
        assert h.state.issuance.mint_limit is not None
        assert h.state.issuance.mint_limit.enabled


def test_mcp_calls_in_progress_are_limited_per_user() -> None:
    calls = ConcurrencyLimit(2)
    first = calls.acquire("iss", "alice")
    calls.acquire("iss", "alice")
    with pytest.raises(RateLimitedError) as caught:
        calls.acquire("iss", "alice")
    assert caught.value.retry_after_seconds == 1
    assert caught.value.status == 429
    bob = calls.acquire("iss", "bob")  # another user is not held back
    calls.acquire("other-iss", "alice")  # nor the same name from another issuer
    calls.release(first)
    calls.acquire("iss", "alice")  # a call ended: a place again
    calls.release(bob)
    assert calls._held == {("iss", "alice"): 2, ("other-iss", "alice"): 1}
