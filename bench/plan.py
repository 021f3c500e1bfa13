"""How much to measure: the full plan (``make bench``) and the smoke plan (``make bench-smoke``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Plan:
    """Durations are whole seconds (wrk's unit); every count and duration is bounded."""

    name: str
    runs: int
    """Measured runs per app and concurrency, alternated baseline, broker, baseline, ..."""
    duration_s: int
    warmup_s: int
    """One untimed run per app before measuring (it also fills the broker's token cache)."""
    concurrencies: tuple[int, ...]
    threads: int
    burst_size: int
    bursts: int
    """R5 bursts per app, alternated; every broker burst is for a new user."""
    memory_entries: int
    jwt_pool: int
    """R2: distinct JWTs (one per user), each sent once to warm the service-token cache."""
    verified_cache_entries: int
    """The broker's verified-JWT cache size (``BROKER_AUTH_VERIFIED_CACHE_ENTRIES``); smaller
    than ``jwt_pool``, so R2's rotation never finds a JWT in it (see bench/README.md)."""
    proxy_concurrencies: tuple[int, ...]
    """R4's closed-loop concurrencies. c=1, when present, is one request at a time on an idle
    chain: its added p50 is judged. Above 1 the chain is saturated: the throughput ratio is
    judged there, the added p50 only reported (see bench/README.md, R4)."""
    proxy_paced_connections: int
    """R4's paced load, measured after the concurrencies: this many connections, each waiting
    a think time between its requests, so that the chain is busy but not saturated."""
    proxy_paced_utilisation: float
    """The share of the direct path's capacity (its req/s at the largest concurrency above)
    the paced load's think time is chosen to offer; the same think time is used for the broker."""
    proxy_interleaved_rounds: int
    """R4, one call at a time: rounds of one call to the direct path and one to the broker,
    alternated call by call (``bench/interleave.py``); the added p50 judged one call at a time
    is the median of their per-round differences."""
    micro_repeats: int
    """MICRO: timeit repeats (the median is reported), each of about ``MICRO_REPEAT_SECONDS``."""

    def describe(self) -> str:
        cs = ", ".join(f"c={c}" for c in self.concurrencies)
        proxy = ", ".join(f"c={c}" for c in self.proxy_concurrencies)
        paced = (
            f"then paced: {self.proxy_paced_connections} connections with a think time for "
            f"{self.proxy_paced_utilisation * 100:.0f} % of the direct path's capacity, then "
            f"{self.proxy_interleaved_rounds} interleaved rounds of one call at a time"
        )
        return (
            f"{self.name}: {self.runs} run(s) x {self.duration_s} s per app at {cs} "
            f"(R4 at {proxy}, {paced}; wrk -t{self.threads}), warm-up {self.warmup_s} s; "
            f"R2 pool of {self.jwt_pool} JWTs (verified-JWT cache {self.verified_cache_entries}); "
            f"R5 {self.bursts} burst(s) of {self.burst_size}; R6 {self.memory_entries} tokens; "
            f"MICRO {self.micro_repeats} repeats"
        )


FULL = Plan(
    name="full",
    runs=3,
    duration_s=10,
    warmup_s=3,
    concurrencies=(32, 64),
    threads=1,
    burst_size=500,
    bursts=3,
    memory_entries=100_000,
    jwt_pool=20_000,
    verified_cache_entries=10_000,
    proxy_concurrencies=(1, 8, 32),
    proxy_paced_connections=8,
    proxy_paced_utilisation=0.5,
    proxy_interleaved_rounds=2000,
    micro_repeats=7,
)

SMOKE = Plan(
    name="smoke",
    runs=1,
    duration_s=1,
    warmup_s=1,
    concurrencies=(8,),
    threads=1,
    burst_size=50,
    bursts=1,
    memory_entries=2_000,
    jwt_pool=400,
    verified_cache_entries=200,
    proxy_concurrencies=(8,),
    proxy_paced_connections=4,
    proxy_paced_utilisation=0.5,
    proxy_interleaved_rounds=50,
    micro_repeats=3,
)
