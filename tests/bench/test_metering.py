"""CI's smoke of the metering benchmark (bench/metering.py): a small run on a stack of its own, its
--json report checked for its shape and for a charging run that worked (every subscription renewed
once, nothing left due, the ledger sound, reads timed on both sides), never for its speed."""

from __future__ import annotations

import pytest

from bench.metering import BATCH_TARGET, READ_P99_TARGET
from cli.upkeep import CHARGING_WORKERS
from tests.support.bench import bench_report


@pytest.mark.slow
def test_a_small_metering_run_charges_every_subscription_once_and_reports_its_ratios() -> None:
    subscriptions = 1200
    report = bench_report("metering", "--subscriptions", str(subscriptions), "--seconds", "1", timeout=300)

    # Each subscription had one period due: each was charged and renewed once, by the batch.
    assert report["subscriptions"] == subscriptions
    assert report["periods_charged"] == report["renewed"] == subscriptions
    assert report["left_due"] == 0 and report["audit_problems"] == 0
    assert (
        report["charge_all_seconds"] > 0 and report["batch_calls"] >= subscriptions // report["max_periods"]
    )

    batch = report["throughput"][1]
    assert (batch["target_at_least"], batch["ratio"]) == (BATCH_TARGET, report["batch_vs_single"])
    assert report["batch_vs_single"] == pytest.approx(
        report["charges_per_second"] / report["transfers_per_second"]
    )
    assert report["transfers_per_second_most_clients"] > 0 and report["chargers"] == CHARGING_WORKERS
    read = report["read"]
    assert read["target_below"] == READ_P99_TARGET
    assert read["idle_reads"] > 0 and read["charging_reads"] > 0
    assert read["ratio"] == pytest.approx(read["second_ms"] / read["first_ms"])
    # The slowest 1% of each side's reads, their time at or past the p99, and their waits for a CPU
    # (/proc, the reader and its backend on this machine).
    assert read["idle_slowest_ms"] >= read["first_ms"] and read["charging_slowest_ms"] >= read["second_ms"]
    assert read["idle_slowest_cpu_wait_ms"] >= 0 and read["charging_slowest_cpu_wait_ms"] >= 0

    missed = (batch["verdict"] == "MISSED") + (read["verdict"] == "MISSED")
    assert report["targets_missed"] == missed
