"""CI's smoke of the soak benchmark (bench/soak.py): a short run on a stack of its own, its --json
report checked for its shape and for traffic that worked (every kind of call sent and answered,
memory sampled, the ledger sound), never for its speed."""

from __future__ import annotations

import pytest

from bench.soak import KINDS, MEMORY_GROWTH_TARGET, P99_GROWTH_TARGET, SERVERS
from tests.support.bench import bench_report


@pytest.mark.slow
def test_a_short_soak_reports_every_window_and_its_verdicts() -> None:
    report = bench_report("soak", "--duration", "30", "--window", "10", timeout=240)

    windows = report["windows"]
    assert [window["start_s"] for window in windows] == [0, 10, 20]
    for window in windows:
        assert window["calls"] > 0 and window["p50_ms"] <= window["p99_ms"]
        # The mix is made of calls that succeed: a refusal or a server error is a broken call.
        assert window["answers"]["refused"] == window["answers"]["failed"] == 0, window["refusal"]
        for server in SERVERS:
            assert window["memory"][server]["private_bytes"] > 0
    # Orders placed were followed up, so every kind of call, cancel and fulfil too, was made.
    assert all(sum(window["sent"][kind] for window in windows) > 0 for kind in KINDS)

    verdicts = report["last_against_first"]
    assert [(row["measure"], row["target_below"]) for row in verdicts] == [
        ("p99 latency", P99_GROWTH_TARGET),
        *((f"{server} private memory", MEMORY_GROWTH_TARGET) for server in SERVERS),
    ]
    assert report["audit_problems"] == 0
    missed = sum(row["verdict"] == "MISSED" for row in verdicts)
    assert report["targets_missed"] == missed
    assert report["rate_limited"] == sum(window["answers"]["rate_limited"] for window in windows)
