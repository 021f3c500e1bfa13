"""How calls to an upstream survive its faults: bounded retries with jittered exponential backoff
under one total deadline, a circuit breaker, and a cap on concurrent calls.

* Retried: connection failures, timeouts, 429 and 5xx (``UpstreamUnavailableError`` and
  ``UpstreamTimeoutError``). Never retried: Smithery's refusals (400/401/403) and malformed
  answers; they would fail again.
* ``Retry-After`` from the server is honoured: a retry waits at least that long, and if that
  does not fit in the deadline the call gives up at once with the server's value.
* The breaker opens after ``failure_threshold`` consecutive failed calls: then calls fail at once
  with 503 and ``Retry-After`` until ``open_seconds`` have passed; one probe call is let through
  (half-open), and its outcome closes or reopens the breaker. Any answer from Smithery counts as
  its being up, a refusal or a 404 too; a probe that ends with no answer (the caller went away,
  an unexpected error) lets the next call probe instead, so the breaker never stays open.

Time and sleeping are injected, so tests run every path without waiting. No HTTP here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from broker.errors import CallerError, UpstreamError, UpstreamTimeoutError, UpstreamUnavailableError

logger = logging.getLogger("broker.resilience")
T = TypeVar("T")
RETRYABLE: Final = (UpstreamUnavailableError, UpstreamTimeoutError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    """Extra attempts after the first one."""
    base_delay_seconds: float = 0.2
    max_delay_seconds: float = 2.0
    deadline_seconds: float = 10.0
    """Total time for one call, attempts and waits included."""
    failure_threshold: int = 5
    open_seconds: float = 10.0
    max_concurrent_calls: int = 64


@dataclass(slots=True)
class CircuitBreaker:
    """closed → (threshold consecutive failures) → open → (open_seconds) → half-open → ..."""

    failure_threshold: int
    open_seconds: float
    clock: Callable[[], float]
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False
    opened_count: int = 0

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at < self.open_seconds:
            return "open"
        return "half_open"

    def before_call(self) -> bool:
        """Raise at once while open (or while the half-open probe is already out); True when
        this call is the half-open probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        assert self.opened_at is not None
        wait = self.open_seconds - (self.clock() - self.opened_at)
        raise UpstreamUnavailableError(
            "Smithery is failing; the broker is not calling it for now.",
            retry_after_seconds=max(1, math.ceil(wait)),
        )

    def release_probe(self) -> None:
        """The probe ended without an answer either way: the next call probes."""
        self.probing = False

    def success(self) -> None:
        if self.opened_at is not None:
            logger.warning("circuit to Smithery closed again")
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.failure_threshold:
            if self.opened_at is None or self.probing:
                logger.warning("circuit to Smithery opened after %d failure(s)", self.failures)
                self.opened_count += 1
            self.opened_at, self.probing = self.clock(), False


@dataclass(slots=True)
class ResilientCaller:
    """Runs one upstream operation with the retry policy, the breaker and the concurrency cap."""

    policy: RetryPolicy
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    jitter: Callable[[], float] = random.random
    breaker: CircuitBreaker = field(init=False)
    slots: asyncio.Semaphore = field(init=False)
    retries_made: int = 0

    def __post_init__(self) -> None:
        self.breaker = CircuitBreaker(
            self.policy.failure_threshold, self.policy.open_seconds, self.clock
        )
        self.slots = asyncio.Semaphore(self.policy.max_concurrent_calls)

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        deadline = self.clock() + self.policy.deadline_seconds
        probe = self.breaker.before_call()
        settled = False
        try:
            tries = 0
            while True:
                tries += 1
                try:
                    result = await self._attempt(attempt, deadline)
                except RETRYABLE as exc:
                    delay = self._delay(tries, exc)
                    if tries > self.policy.retries or self.clock() + delay >= deadline:
                        settled = True
                        self.breaker.failure()
                        raise
                    self.retries_made += 1
                    await self.sleep(delay)
                    continue
                except (UpstreamError, CallerError):
                    # A refusal, a malformed answer, a 404: Smithery is up; no retry, no trip.
                    settled = True
                    self.breaker.success()
                    raise
                settled = True
                self.breaker.success()
                return result
        finally:
            if probe and not settled:  # cancelled, or an unexpected error: no verdict
                self.breaker.release_probe()

    async def _attempt(self, attempt: Callable[[], Awaitable[T]], deadline: float) -> T:
        remaining = deadline - self.clock()
        if remaining <= 0:
            raise UpstreamTimeoutError("Smithery did not answer in time.")
        try:
            async with asyncio.timeout(remaining):
                async with self.slots:
                    return await attempt()
        except TimeoutError:
            raise UpstreamTimeoutError("Smithery did not answer in time.") from None

    def _delay(self, tries: int, exc: UpstreamError) -> float:
        backoff: float = min(
            self.policy.max_delay_seconds, self.policy.base_delay_seconds * 2.0 ** (tries - 1)
        )
        delay: float = backoff * (0.5 + self.jitter() / 2)  # "equal jitter": never zero, never over
        server = exc.server_retry_after if isinstance(exc, UpstreamUnavailableError) else None
        return max(delay, float(server)) if server else delay
