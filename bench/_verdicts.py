"""Verdicts: ratios against their targets, and the tables that show them (throughput rows,
latency rows); each table returns how many targets it missed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench._cycles import Rate
from bench._load import PROTOCOLS, Protocol


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def verdict(value: float | None, target: float, below: bool = False) -> str:
    if value is None:
        return "n/a"
    good = value < target if below else value >= target
    return "ok" if good else "MISSED"


@dataclass(frozen=True)
class RateRow:
    """A throughput to show and, where it is compared with another (`against`), their ratio: the
    ratio of the means, and the lowest and highest ratio within one cycle, where both sides ran
    seconds apart; that range shows how far the machine's noise moves the ratio. `target` is the
    least ratio wanted (None: shown for information)."""

    name: str
    rate: Rate | None
    against: Rate | None = None
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.rate is None or self.against is None or not self.against.mean:
            return None
        return self.rate.mean / self.against.mean

    @property
    def cycle_range(self) -> tuple[float, float] | None:
        if self.rate is None or self.against is None:
            return None
        pairs = [a / b for a, b in zip(self.rate.samples, self.against.samples, strict=True) if b]
        return (min(pairs), max(pairs)) if pairs else None

    @property
    def verdict(self) -> str | None:
        return None if self.target is None else verdict(self.ratio, self.target)

    def as_dict(self) -> dict[str, Any]:
        return {
            "measure": self.name.strip(" ()"),
            "per_second": None if self.rate is None else self.rate.mean,
            "ratio": self.ratio,
            "ratio_in_a_cycle": self.cycle_range,
            "target_at_least": self.target,
            "verdict": self.verdict,
        }


def print_rates(rows: list[RateRow]) -> int:
    """The throughput table; returns how many targets were missed."""
    print(f"{'measure':44} {'per second':>12} {'ratio':>8} {'in a cycle':>14} {'target':>8}  verdict")
    missed = 0
    for row in rows:
        shown = "n/a" if row.rate is None else f"{row.rate.mean:,.0f}"
        ratio_text = "" if row.ratio is None else f"{row.ratio:.3f}"
        band = row.cycle_range
        band_text = "" if band is None else f"{band[0]:.2f} to {band[1]:.2f}"
        goal_text = "" if row.target is None else f">= {row.target}"
        mark = row.verdict or ""
        missed += mark == "MISSED"
        print(f"{row.name:44} {shown:>12} {ratio_text:>8} {band_text:>14} {goal_text:>8}  {mark}")
    return missed


PROTOCOL_TITLES: dict[Protocol, str] = {
    "prepared": "prepared statements (pgbench -M prepared; PostgREST prepares its queries): the targets",
    "simple": "simple protocol (pgbench's default; for comparison, no targets)",
}


def print_rates_by_protocol(rows_of: Callable[[Protocol], list[RateRow]]) -> tuple[int, list[dict[str, Any]]]:
    """One throughput table per protocol of PROTOCOLS, `rows_of` giving its rows (each ratio
    comparing two measures sent in that protocol); how many targets were missed, and every row for
    the results, its protocol named."""
    missed = 0
    throughput: list[dict[str, Any]] = []
    for protocol in PROTOCOLS:
        rows = rows_of(protocol)
        print(f"\n{PROTOCOL_TITLES[protocol]}")
        missed += print_rates(rows)
        throughput += [{**row.as_dict(), "protocol": protocol} for row in rows]
    return missed, throughput


@dataclass(frozen=True)
class LatencyRow:
    """A read timed in two situations (median seconds) and how much slower the second is (`ratio`,
    against the REFERENCE read where the two were timed minutes apart); it must stay under
    `target`. `second` is None where it could not be timed."""

    name: str
    first: float
    second: float | None
    ratio: float | None
    target: float

    @property
    def verdict(self) -> str:
        return verdict(self.ratio, self.target, below=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.name,
            "first_ms": self.first * 1e3,
            "second_ms": None if self.second is None else self.second * 1e3,
            "ratio": self.ratio,
            "target_below": self.target,
            "verdict": self.verdict,
        }


def print_latencies(rows: list[LatencyRow], header: tuple[str, str, str] | None = None) -> int:
    """Latency rows under an optional header (title, first, second); returns how many missed."""
    if header:
        title, first, second = header
        print(f"{title:44} {first:>12} {second:>12} {'ratio':>8} {'target':>8}  verdict")
    for row in rows:
        second = "n/a" if row.second is None else f"{row.second * 1e3:.3f}ms"
        shown_ratio = "n/a" if row.ratio is None else f"{row.ratio:.3f}"
        print(
            f"{row.name:44} {row.first * 1e3:>10.3f}ms {second:>12} "
            f"{shown_ratio:>8} {f'< {row.target:g}':>8}  {row.verdict}"
        )
    return sum(row.verdict == "MISSED" for row in rows)
