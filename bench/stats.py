"""Latency summaries and result printing shared by the benchmarks."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Figures:
    name: str
    events: int
    seconds: float
    latencies_s: Sequence[float] = ()

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_s:
            return None
        if len(self.latencies_s) == 1:
            return self.latencies_s[0] * 1000
        cuts = statistics.quantiles(self.latencies_s, n=100, method="inclusive")
        return cuts[round(q) - 1] * 1000


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:8.2f}"


def print_table(title: str, rows: Sequence[Figures]) -> None:
    print(f"\n== {title}")
    print(f"{'run':<38} {'events':>8} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(
            f"{r.name:<38} {r.events:>8} {r.rate:>10.0f} "
            f"{_ms(r.percentile_ms(50))} {_ms(r.percentile_ms(99))}"
        )


def print_ratio(label: str, value: float, goal: float) -> None:
    verdict = "meets" if value >= goal else "BELOW"
    print(f"{label}: {value:.2f}x ({verdict} the goal of {goal:.2f}x)")
