"""Throughput measured in cycles: the pgbench yardstick and every measure in short slices, in turn,
many times over; each measure keeps one rate a cycle (`Rate`)."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from bench._load import PROTOCOLS, WORKERS, Protocol, pgbench_database, tpcb_rate


@dataclass(frozen=True)
class Rate:
    """One measure's rates per second, one a cycle."""

    samples: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


def add_cycle_options(parser: argparse.ArgumentParser, cycles: int) -> None:
    """--seconds and --cycles: the slices of `cycled_rates`."""
    parser.add_argument("--seconds", type=int, default=2, help="length of one throughput slice")
    parser.add_argument(
        "--cycles", type=int, default=cycles, help="slices per throughput measure (their mean is kept)"
    )


def yardstick_name(protocol: Protocol) -> str:
    """The tpcb-like yardstick's name among cycled_rates' measures: `tpcb` in pgbench's default
    simple protocol, `tpcb_prepared` in the prepared one."""
    return "tpcb" if protocol == "simple" else f"tpcb_{protocol}"


def in_protocol(name: str, protocol: Protocol) -> str:
    """A direct-SQL measure's name among cycled_rates' measures when sent in `protocol`."""
    return f"{name}@{protocol}"


def in_protocols(measures: Mapping[str, Callable[[Protocol], float]]) -> dict[str, Callable[[], float]]:
    """Each direct-SQL measure (given the protocol to send it in) once in every protocol of
    PROTOCOLS, named by in_protocol: each compares with the yardstick sent alike (`cycled_rates`
    with yardsticks=PROTOCOLS)."""
    return {
        in_protocol(name, protocol): partial(measure, protocol)
        for protocol in PROTOCOLS
        for name, measure in measures.items()
    }


def cycled_rates(
    admin_url: str,
    pgbench_scale: int,
    cycles: int,
    seconds: float,
    measures: dict[str, Callable[[], float]],
    yardsticks: Sequence[Protocol] = ("simple",),
) -> dict[str, Rate]:
    """The tpcb-like yardstick in each protocol of `yardsticks` (named by yardstick_name) and each
    measure, `seconds` each, cycled `cycles` times after one unmeasured warm-up cycle, every other
    cycle in reverse order.
    Short slices cycled many times spread a shared machine's bursts of outside load and its slow
    drifts (checkpoints, a growing ledger) over both sides of every ratio alike, and the reversed
    cycles cancel a steady drift between neighbours. (The best of a few long rounds did not: two
    sides of a ratio measured a minute apart each caught a different moment.)"""
    names = [*map(yardstick_name, yardsticks), *measures]
    samples: dict[str, list[float]] = {name: [] for name in names}
    with pgbench_database(admin_url, pgbench_scale) as yardstick:
        run: dict[str, Callable[[], float]] = {
            yardstick_name(protocol): partial(tpcb_rate, admin_url, yardstick, seconds, protocol)
            for protocol in yardsticks
        }
        run.update(measures)
        slices = f"{WORKERS} clients, {seconds:.0f}s a slice"
        print(f"{cycles} cycles after a warm-up ({slices}): " + ", ".join(names), flush=True)
        for cycle in range(cycles + 1):
            order = names if cycle % 2 == 0 else names[::-1]
            for name in order:
                rate = run[name]()
                if cycle:
                    samples[name].append(rate)
            print(f"    cycle {cycle or 'warm-up'} done", flush=True)
    for name, values in samples.items():
        print(
            f"    {name}: mean {statistics.fmean(values):,.0f} per second "
            f"(slices {min(values):,.0f} to {max(values):,.0f})",
            flush=True,
        )
    return {name: Rate(tuple(values)) for name, values in samples.items()}
