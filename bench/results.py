"""The result model (what every scenario returns) and the statistics used on it.

Medians of runs, and ratios broker/baseline of medians taken in the same harness run: absolute
numbers drift between runs on shared machines, ratios far less.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

App = Literal["baseline", "broker"]
Status = Literal["measured", "not yet measured", "failed"]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


@dataclass(slots=True)
class Run:
    """One measured run of one app (a wrk run, or one burst)."""

    app: App
    label: str
    index: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    """Server CPU time (user + system) per request, in µs; NaN when not measured."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AppSummary:
    runs: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float

    @classmethod
    def of(cls, runs: Sequence[Run]) -> AppSummary:
        return cls(
            runs=len(runs),
            rps=median([r.rps for r in runs]),
            p50_ms=median([r.p50_ms for r in runs]),
            p99_ms=median([r.p99_ms for r in runs]),
            cpu_us=median([r.cpu_us for r in runs if not math.isnan(r.cpu_us)]),
        )


@dataclass(slots=True)
class Comparison:
    """Broker next to baseline for one load shape (e.g. ``c=32``, or R4's paced load), from
    alternated runs."""

    label: str
    load: str
    baseline: AppSummary
    broker: AppSummary
    ratio: float
    """Median broker req/s divided by median baseline req/s."""
    pair_ratios: list[float]
    """broker/baseline req/s of each alternated pair, to show the spread."""

    @classmethod
    def of(cls, label: str, load: str, runs: Sequence[Run]) -> Comparison:
        base = [r for r in runs if r.app == "baseline" and r.label == label]
        brok = [r for r in runs if r.app == "broker" and r.label == label]
        if not base or not brok:
            raise ValueError(f"no runs for {label}")
        baseline, broker = AppSummary.of(base), AppSummary.of(brok)
        pairs = [b.rps / a.rps for a, b in zip(base, brok, strict=False) if a.rps > 0]
        ratio = broker.rps / baseline.rps if baseline.rps > 0 else math.nan
        return cls(label, load, baseline, broker, ratio, pairs)


@dataclass(slots=True)
class Check:
    """A harness correctness check; a failed one makes the harness exit non-zero."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class ScenarioResult:
    id: str
    title: str
    measures: str
    target: str
    status: Status
    target_met: bool | None = None
    """Reported, never asserted. None when there is no number to compare."""
    summary: str = ""
    """One line for the report (the headline number when there is no comparison)."""
    comparisons: list[Comparison] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    note: str = ""
    """A paragraph for the report when the summary cannot say enough: how the target is judged
    and why (R4)."""

    @property
    def broken(self) -> bool:
        return self.status == "failed" or any(not check.ok for check in self.checks)
