"""CI's smoke of where a transfer's time goes (bench/profile_ledger.py): a small run on a stack of its
own, its --json report checked for what docs/performance.md reads from it (each bound against the
yardstick, each part against the whole transfer, the statements and WAL of one transfer) and for
the books the bounds' transfers leave, theirs and the ledger's; never for its speed."""

from __future__ import annotations

import pytest

from tests.support.bench import bench_report

BOUNDS = [
    "bound: the shape calling nothing",
    "bound: the shape, the least double-entry transfer",
    "bound: that, and an idempotency key",
    "bound: that, and the balances broadcast",
    "bound: that, one row a movement instead of three",
    "bound: the keyed steps on the ledger's tables",
    "bound: that, without the ledger's broadcast",
]
PARTS = ["without the broadcast trigger", "without the idempotency key", "without the pre-request"]


@pytest.mark.slow
def test_a_small_profile_prices_the_bounds_and_the_parts_and_keeps_the_books() -> None:
    report = bench_report(
        "profile_ledger",
        *("--seconds", "1", "--slice", "1", "--cycles", "1", "--pgbench-scale", "1"),
        timeout=600,
    )
    # Measures as the table names them (as_dict strips the parentheses at their ends).
    rows = {row["measure"]: row for row in report["parts"]}
    tpcb = rows["pgbench tpcb-like, prepared (tps"]["per_second"]
    whole = rows["PostgREST-shaped transfers"]
    assert tpcb > 0 and whole["ratio"] == pytest.approx(whole["per_second"] / tpcb)
    for name in BOUNDS:
        assert rows[name]["per_second"] > 0
        assert rows[name]["ratio"] == pytest.approx(rows[name]["per_second"] / tpcb), name
    for name in PARTS:
        assert rows[name]["ratio"] == pytest.approx(rows[name]["per_second"] / whole["per_second"]), name

    calls = [row for row in report["statements"]["rest_transfer"] if row["toplevel"]]
    assert any("public.transfer_credits(" in row["query"] for row in calls)
    assert report["wal_per_transaction"]["rest_transfer"]["records"] > 0

    assert report["books_problems"] == {"bounds": 0, "ledger": 0}
    assert report["targets_missed"] == 0
