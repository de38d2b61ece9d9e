"""Latencies of calls timed one by one: their p50 and p99, and rows that compare two of them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench._verdicts import ratio


@dataclass(frozen=True)
class Percentiles:
    """A latency's p50 and p99, in seconds."""

    p50: float
    p99: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles:
        # Inclusive: with fewer than 99 samples the exclusive method puts p99 past the slowest call.
        cuts = statistics.quantiles(seconds, n=100, method="inclusive")
        return cls(cuts[49], cuts[98])


@dataclass(frozen=True)
class PercentileRow:
    """A latency to show and, where it is compared with another (`against`), how many times that
    one it takes at p50 and at p99. A measure that could not be taken has no `latency` and says
    why in `skipped`."""

    name: str
    latency: Percentiles | None
    against: Percentiles | None = None
    skipped: str | None = None

    def __post_init__(self) -> None:
        if (self.latency is None) != (self.skipped is not None):
            raise ValueError(f"{self.name}: a latency is either measured or skipped, saying why")

    def ratios(self) -> tuple[float | None, float | None]:
        """(at p50, at p99); None where either side was not measured."""
        if self.latency is None or self.against is None:
            return None, None
        return ratio(self.latency.p50, self.against.p50), ratio(self.latency.p99, self.against.p99)

    def as_dict(self) -> dict[str, Any]:
        at_p50, at_p99 = self.ratios()
        return {
            "measure": self.name,
            "status": "measured" if self.skipped is None else "skipped",
            "reason": self.skipped,
            "p50_ms": None if self.latency is None else self.latency.p50 * 1e3,
            "p99_ms": None if self.latency is None else self.latency.p99 * 1e3,
            "ratio_p50": at_p50,
            "ratio_p99": at_p99,
        }
