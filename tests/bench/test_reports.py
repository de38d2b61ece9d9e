"""The benchmarks' verdicts, their latency rows and their results for scripts (bench/_*.py),
bench/client.py's sign-in measure, skipped without Auth, bench/flood.py's floods and bench/soak.py's
windows: what a reader of a benchmark run relies on, checked without running a benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from rich.console import Console

from bench._cycles import Rate, in_protocol, yardstick_name
from bench._load import Protocol, WrkTotals, lua_locals
from bench._percentiles import PercentileRow, Percentiles
from bench._results import results_for_scripts
from bench._verdicts import LatencyRow, RateRow, print_rates
from bench.client import PLAIN_READ, SIGN_IN_READ, auth_unavailable, print_sign_in
from bench.flood import FloodRow, print_rows
from bench.ledger import throughput_rows
from bench.soak import Memory, Window, growths, memory_of, print_report, report, window_of, with_children


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


def test_percentiles_stay_within_the_samples() -> None:
    latency = Percentiles.of([0.001 * n for n in range(1, 21)])
    assert latency.p50 == pytest.approx(0.0105)
    assert 0.019 < latency.p99 <= 0.020


def test_sign_in_is_compared_with_the_plain_read_at_each_percentile() -> None:
    plain = Percentiles(0.002, 0.004)
    row = PercentileRow(SIGN_IN_READ, Percentiles(0.080, 0.100), plain)
    assert row.ratios() == pytest.approx((40.0, 25.0))
    assert row.as_dict() == {
        "measure": SIGN_IN_READ,
        "status": "measured",
        "reason": None,
        "p50_ms": pytest.approx(80.0),
        "p99_ms": pytest.approx(100.0),
        "ratio_p50": pytest.approx(40.0),
        "ratio_p99": pytest.approx(25.0),
    }
    assert PercentileRow(PLAIN_READ, plain).ratios() == (None, None)


def test_a_skipped_measure_has_no_latency_and_says_why() -> None:
    row = PercentileRow(SIGN_IN_READ, None, Percentiles(0.002, 0.004), skipped="no Auth")
    assert row.ratios() == (None, None)
    assert row.as_dict() == {
        "measure": SIGN_IN_READ,
        "status": "skipped",
        "reason": "no Auth",
        "p50_ms": None,
        "p99_ms": None,
        "ratio_p50": None,
        "ratio_p99": None,
    }
    with pytest.raises(ValueError):
        PercentileRow(SIGN_IN_READ, None)
    with pytest.raises(ValueError):
        PercentileRow(SIGN_IN_READ, Percentiles(0.08, 0.1), skipped="no Auth")


def gateway_answer(status: int, content: str) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1/auth/v1/admin/users")
    return httpx.Response(status, content=content, request=request)


def test_the_skip_quotes_the_gateway_without_auth() -> None:
    message = "Supabase Auth (GoTrue) is not part of the local stack; set auth_upstream in the stack"
    answer = gateway_answer(503, json.dumps({"message": message}))
    assert auth_unavailable(answer) == f'the gateway\'s /auth/v1/ answered 503: "{message}"'
    assert auth_unavailable(gateway_answer(503, "busy\n")) == 'the gateway\'s /auth/v1/ answered 503: "busy"'


def test_an_auth_server_that_answers_is_measured_even_when_it_refuses() -> None:
    # Only the gateway's 503 means "no Auth here"; any other answer is Auth's, and a refusal fails
    # the benchmark rather than passing for a skip.
    assert auth_unavailable(gateway_answer(200, '{"id": "x"}')) is None
    assert auth_unavailable(gateway_answer(502, "Bad Gateway")) is None
    assert auth_unavailable(gateway_answer(401, '{"message": "invalid JWT"}')) is None


def test_a_skipped_sign_in_is_one_line_beside_the_plain_read(capsys: pytest.CaptureFixture[str]) -> None:
    reason = (
        'the gateway\'s /auth/v1/ answered 503: "no [Auth] here, set auth_upstream to the URL of a server"'
    )
    plain = Percentiles(0.002, 0.004)
    print_sign_in(
        Console(width=120),
        [PercentileRow(PLAIN_READ, plain), PercentileRow(SIGN_IN_READ, None, plain, reason)],
    )
    lines = capsys.readouterr().out.splitlines()
    assert f"{SIGN_IN_READ}: skipped, {reason}" in lines
    assert any(PLAIN_READ in line and "2.00 ms" in line for line in lines)
    assert not any(SIGN_IN_READ in line for line in lines if "skipped" not in line)


def test_a_flood_is_judged_by_the_victims_p99_under_it_against_its_p99_idle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    idle = Percentiles(0.004, 0.010)
    held = FloodRow("anon", idle, Percentiles(0.005, 0.025), {"ok": 10, "refused": 90})
    assert held.flood_vs_idle_p99 == pytest.approx(2.5)
    assert held.verdict == "ok"
    assert held.as_dict() == {
        "measure": "anon",
        "status": "measured",
        "reason": None,
        "p50_ms": pytest.approx(5.0),
        "p99_ms": pytest.approx(25.0),
        "ratio_p50": pytest.approx(1.25),
        "ratio_p99": pytest.approx(2.5),
        "idle_p50_ms": pytest.approx(4.0),
        "idle_p99_ms": pytest.approx(10.0),
        "flood_vs_idle_p99": pytest.approx(2.5),
        "target_below": 3.0,
        "verdict": "ok",
        "flooders": {"ok": 10, "refused": 90},
    }
    # Three times as slow is not under three times.
    assert FloodRow("anon", idle, Percentiles(0.005, 0.030), {}).verdict == "MISSED"
    untimed = FloodRow("anon", idle, None, {})
    assert (untimed.flood_vs_idle_p99, untimed.verdict) == (None, "n/a")
    assert untimed.as_dict()["reason"]

    assert print_rows([held, FloodRow("long", idle, Percentiles(0.1, 1.0), {"failed": 2}), untimed]) == 1
    table = capsys.readouterr().out
    assert "100.00" in table and "MISSED" in table and "flooders got: failed 2" in table


def test_lua_data_holds_strings_arrays_and_tables_by_key() -> None:
    assert lua_locals(key='a"b', ids=["x", "y"], tokens={"p1": ["t1", "t2"]}) == (
        'local key = "a\\"b"\nlocal ids = {"x","y"}\nlocal tokens = {["p1"] = {"t1","t2"}}\n'
    )


WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:48503
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.10ms    4.02ms  80.11ms   91.20%
    Req/Sec   650.00    40.00   700.00     70.00%
  12000 requests in 10.00s, 9.00MB read
  Socket errors: connect 0, read 0, write 0, timeout 3
  Non-2xx or 3xx responses: 17
Requests/sec:   1200.00
Transfer/sec:    921.60KB
latency p50: 5012
latency p99: 21450.5
count sent_balance: 3000
count sent_order: 3000
count sent_fulfil: 2000
count ok: 11983
count rate_limited: 12
count refused: 4
count failed: 1
refusal: 400 {"code":"insufficient_balance"}
"""


def test_wrk_totals_count_its_failures_and_read_its_units() -> None:
    assert WrkTotals.parse(WRK_OUTPUT) == WrkTotals(calls=12000, seconds=10.0, failed=20)
    assert WrkTotals.parse("  36000 requests in 1.00m, 9.00MB read") == WrkTotals(36000, 60.0, 0)
    assert WrkTotals.parse("wrk: connection refused") is None


def soak_window(start: float, p99: float, postgresql_mib: int, rate_limited: int = 0) -> Window:
    memory = {
        "postgresql": Memory(rss=4 * postgresql_mib * 2**20, private=postgresql_mib * 2**20),
        "postgrest": Memory(rss=60 * 2**20, private=40 * 2**20),
    }
    answers = {"ok": 6000, "rate_limited": rate_limited, "refused": 0, "failed": 0}
    return Window(start, 10.0, 6000, Percentiles(0.004, p99), {"balance": 6000}, answers, 0, memory)


def test_a_soak_window_is_read_from_wrk_and_its_script() -> None:
    memory = {"postgresql": Memory(200, 100), "postgrest": Memory(50, 40)}
    window = window_of(20.0, WrkTotals.parse(WRK_OUTPUT) or WrkTotals(0, 1, 0), WRK_OUTPUT, memory)
    assert window.per_second == pytest.approx(1200.0)
    assert (window.latency.p50, window.latency.p99) == pytest.approx((0.005012, 0.0214505))
    assert window.answers == {"ok": 11983, "rate_limited": 12, "refused": 4, "failed": 1}
    assert window.socket_errors == 3
    assert window.sent["order"] == 3000 and window.sent["cancel"] == 0
    assert window.refusal == '400 {"code":"insufficient_balance"}'
    shown = window.as_dict()
    assert (shown["start_s"], shown["p99_ms"]) == (20.0, pytest.approx(21.4505))
    assert shown["memory"]["postgresql"] == {"rss_bytes": 200, "private_bytes": 100}


def test_a_soak_is_judged_by_its_last_window_against_its_first(capsys: pytest.CaptureFixture[str]) -> None:
    steady = [soak_window(0, 0.020, 100), soak_window(10, 0.040, 110), soak_window(20, 0.029, 119)]
    assert [(row.name, row.verdict) for row in growths(steady)] == [
        ("p99 latency", "ok"),
        ("postgresql private memory", "ok"),
        ("postgrest private memory", "ok"),
    ]
    assert print_report(steady) == 0
    assert "429" in capsys.readouterr().out.splitlines()[0]

    # p99 one and a half times the first's, memory a fifth more: both missed.
    worse = [soak_window(0, 0.020, 100, rate_limited=5), soak_window(10, 0.030, 120)]
    assert [row.verdict for row in growths(worse)] == ["MISSED", "MISSED", "ok"]
    assert print_report(worse) == 2
    out = capsys.readouterr().out
    assert "rate limit answered 5 calls 429" in out
    assert report(worse, 2)["rate_limited"] == 5
    judged = report(worse, 2)["last_against_first"][1]
    assert judged == {
        "measure": "postgresql private memory",
        "first_mib": pytest.approx(100.0),
        "last_mib": pytest.approx(120.0),
        "ratio": pytest.approx(1.2),
        "target_below": 1.2,
        "verdict": "MISSED",
    }


def test_a_servers_memory_is_summed_over_its_processes_and_peaks_per_window() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            family = with_children(os.getpid())
            assert family[0] == os.getpid() and child.pid in family
            alone, together = memory_of([os.getpid()]), memory_of(family)
            assert 0 < alone.private < together.private <= together.rss
        finally:
            child.kill()
    # A process gone meanwhile counts for nothing.
    assert memory_of([child.pid]) == Memory(0, 0)
    assert Memory.peak([Memory(rss=10, private=5), Memory(rss=30, private=2)]) == Memory(30, 5)


def test_the_ledgers_ratios_compare_measures_sent_alike_and_only_prepared_ones_have_targets() -> None:
    sent: dict[Protocol, float] = {"prepared": 1000.0, "simple": 800.0}
    rates = {yardstick_name(protocol): Rate((rate,)) for protocol, rate in sent.items()}
    for protocol, rate in sent.items():
        rates[in_protocol("rest_transfer", protocol)] = Rate((rate * 0.6,))
        rates[in_protocol("rest_purchase", protocol)] = Rate((rate * 0.6,))
    rates["http_transfer"] = Rate((300.0,))
    prepared = {row.name: row for row in throughput_rows(rates, "prepared")}
    transfers = prepared["PostgREST-shaped transfers, 1,000 accounts"]
    assert transfers.ratio == pytest.approx(0.6)
    assert (transfers.target, transfers.verdict) == (0.8, "MISSED")
    assert prepared["PostgREST-shaped purchases"].ratio == pytest.approx(1.0)
    # Through HTTP against the PostgREST-shaped direct SQL, which PostgREST sends prepared.
    assert prepared["PostgREST transfers"].ratio == pytest.approx(0.5)
    assert prepared["PostgREST purchases"].verdict == "n/a"
    simple = throughput_rows(rates, "simple")
    assert simple[1].ratio == pytest.approx(0.6)
    assert all(row.target is None for row in simple)
    assert not any(row.name.startswith("PostgREST ") for row in simple)


def test_memory_is_judged_by_its_peaks_over_a_fifth_of_the_windows_at_each_end() -> None:
    # Peaks of 44 then 55 MiB, minute after minute (as PostgREST's heap did): flat, whichever
    # minute the run starts or ends with.
    sawtooth = [soak_window(60 * n, 0.020, 44 if n % 2 else 55) for n in range(11)]
    for run in (sawtooth[:10], sawtooth[1:], sawtooth[1:10]):
        assert growths(run)[1].ratio == pytest.approx(1.0)
    # Two MiB a minute: the peaks of the last two minutes are 30% above those of the first two.
    leak = [soak_window(60 * n, 0.020, 50 + 2 * n) for n in range(10)]
    assert (growths(leak)[1].first, growths(leak)[1].last) == (52.0, 68.0)
    assert growths(leak)[1].verdict == "MISSED"
