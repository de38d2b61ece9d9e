"""The benchmarks' verdicts and their results for scripts (bench/_common.py): what a reader of a
benchmark run relies on, checked without running a benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _common import LatencyRow, Rate, RateRow, print_rates, results_for_scripts


def test_a_ratio_is_of_the_means_and_its_range_of_the_cycles() -> None:
    row = RateRow("hot", Rate((50.0, 90.0)), Rate((100.0, 100.0)), target=0.6)
    assert row.ratio == pytest.approx(0.7)
    assert row.cycle_range == pytest.approx((0.5, 0.9))
    assert row.verdict == "ok"
    assert RateRow("hot", Rate((50.0, 60.0)), Rate((100.0, 100.0)), target=0.6).verdict == "MISSED"


def test_a_measure_not_taken_has_no_ratio_and_no_verdict_of_ok() -> None:
    missing = RateRow("PostgREST", None, Rate((100.0,)), target=0.5)
    assert (missing.ratio, missing.cycle_range, missing.verdict) == (None, None, "n/a")
    assert RateRow("yardstick", Rate((100.0,))).verdict is None


def test_the_table_counts_missed_targets(capsys: pytest.CaptureFixture[str]) -> None:
    spread = Rate((100.0, 100.0))
    rows = [
        RateRow("spread", spread),
        RateRow("hot", Rate((50.0, 52.0)), spread, 0.6),
        RateRow("purchases", Rate((90.0, 95.0)), spread, 0.8),
    ]
    assert print_rates(rows) == 1
    table = capsys.readouterr().out
    assert "0.50 to 0.52" in table and "MISSED" in table


def test_a_latency_that_could_not_be_timed_is_not_a_pass() -> None:
    row = LatencyRow("history at depth", 0.001, None, None, 1.5)
    assert row.verdict == "n/a"
    assert row.as_dict()["second_ms"] is None
    assert LatencyRow("balance", 0.001, 0.0011, 1.1, 1.2).verdict == "ok"
    assert LatencyRow("balance", 0.001, 0.002, 2.0, 1.2).verdict == "MISSED"


def test_json_results_go_alone_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    with results_for_scripts(as_json=True) as results:
        print("cycle 1 done")
        results["throughput"] = [RateRow("hot", Rate((50.0,)), Rate((100.0,)), 0.6).as_dict()]
    captured = capsys.readouterr()
    assert "cycle 1 done" in captured.err
    assert json.loads(captured.out) == {
        "throughput": [
            {
                "measure": "hot",
                "per_second": 50.0,
                "ratio": 0.5,
                "ratio_in_a_cycle": [0.5, 0.5],
                "target_at_least": 0.6,
                "verdict": "MISSED",
            }
        ]
    }


def test_without_json_everything_goes_to_stdout_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    with results_for_scripts(as_json=False) as results:
        print("cycle 1 done")
        results["x"] = 1
    assert capsys.readouterr().out == "cycle 1 done\n"
