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

    def describe(self) -> str:
        cs = ", ".join(f"c={c}" for c in self.concurrencies)
        return (
            f"{self.name}: {self.runs} run(s) x {self.duration_s} s per app at {cs} "
            f"(wrk -t{self.threads}), warm-up {self.warmup_s} s; R5 {self.bursts} burst(s) of "
            f"{self.burst_size}; R6 {self.memory_entries} tokens"
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
)

SMOKE = Plan(
    name="smoke",
    runs=1,
    duration_s=2,
    warmup_s=1,
    concurrencies=(8,),
    threads=1,
    burst_size=50,
    bursts=1,
    memory_entries=2_000,
)
