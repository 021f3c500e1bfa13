"""Prometheus metrics: a few counters and a histogram, rendered in the text exposition format.

Deliberately small and dependency-free: the request path only increments a dict entry; counts
that other components already keep (token cache, JWKS refreshes, policy reloads) are read at
scrape time instead of being counted twice. Label values are route templates, outcomes and
reason codes: never subjects, tokens or raw paths, so cardinality stays bounded.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

Labels = tuple[tuple[str, str], ...]
LATENCY_BUCKETS_SECONDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS_SECONDS
    counts: dict[Labels, list[int]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value


@dataclass
class Metrics:
    """Counters by name and labels; ``collectors`` add lines computed at scrape time."""

    counters: dict[str, dict[Labels, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    histograms: dict[str, Histogram] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)
    collectors: list[Callable[[], Iterable[tuple[str, str, Labels, float]]]] = field(
        default_factory=list
    )
    """Each yields (metric name, type, labels, value) when scraped."""

    def inc(self, name: str, labels: Labels = (), amount: float = 1.0) -> None:
        self.counters[name][labels] += amount

    def observe(self, name: str, labels: Labels, value: float) -> None:
        histogram = self.histograms.get(name)
        if histogram is None:
            histogram = self.histograms[name] = Histogram()
        histogram.observe(labels, value)

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self.counters):
            lines.extend(self._header(name, "counter"))
            for labels, value in sorted(self.counters[name].items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        for name in sorted(self.histograms):
            histogram = self.histograms[name]
            lines.extend(self._header(name, "histogram"))
            for labels, counts in sorted(histogram.counts.items()):
                running = 0
                for bound, count in zip((*histogram.buckets, float("inf")), counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else _number(bound)
                    lines.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(histogram.sums[labels])}")
                lines.append(f"{name}_count{_labels(labels)} {running}")
        seen: set[str] = set()
        for collect in self.collectors:
            for name, kind, labels, value in collect():
                if name not in seen:
                    seen.add(name)
                    lines.extend(self._header(name, kind))
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"

    def _header(self, name: str, kind: str) -> list[str]:
        text = self.help.get(name)
        return ([f"# HELP {name} {text}"] if text else []) + [f"# TYPE {name} {kind}"]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
