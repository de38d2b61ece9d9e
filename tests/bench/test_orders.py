"""CI's smoke of the marketplace benchmark (bench/orders.py): a small run on a stack of its own, its
--json report checked for its shape and for what a reader relies on (each direct-SQL ratio against
the yardstick sent in the same protocol, targets only where PostgREST's protocol is, orders through
PostgREST against direct SQL sent prepared, the ledger sound), never for its speed."""

from __future__ import annotations

import pytest

from bench._cycles import in_protocol, yardstick_name
from bench._load import PROTOCOLS
from tests.support.bench import bench_report


@pytest.mark.slow
def test_a_small_orders_run_compares_each_protocol_with_its_own_yardstick() -> None:
    products = 2000
    report = bench_report(
        "orders",
        *("--buyers", "50", "--products", str(products), "--cycles", "1", "--seconds", "1", "--repeat", "5"),
        timeout=600,
    )
    rates = {name: rate["mean"] for name, rate in report["rates"].items()}

    for protocol in PROTOCOLS:
        # Measures as the table names them (as_dict strips the parentheses at their ends).
        rows = {row["measure"]: row for row in report["throughput"] if row["protocol"] == protocol}
        tpcb = rates[yardstick_name(protocol)]
        many, popular = rates[in_protocol("sql_many", protocol)], rates[in_protocol("sql_popular", protocol)]
        assert tpcb > 0 and many > 0 and popular > 0
        assert rows["pgbench tpcb-like (tps"]["per_second"] == tpcb
        assert rows["direct SQL orders, 50 providers"]["ratio"] == pytest.approx(many / tpcb)
        assert rows["direct SQL orders, one popular provider"]["ratio"] == pytest.approx(popular / many)
        # Targets where PostgREST's protocol is, and the calls through PostgREST there alone.
        through_postgrest = [row for name, row in rows.items() if name.startswith("PostgREST")]
        if protocol == "prepared":
            assert rows["direct SQL orders, one popular provider"]["target_at_least"] == 0.6
            http = rows["PostgREST orders, 50 providers"]
            assert http["ratio"] == pytest.approx(rates["http_many"] / many)
        else:
            assert all(row["target_at_least"] is None for row in rows.values())
            assert through_postgrest == []

    assert len(report["search_pages"]) >= 5 and report["audit_problems"] == 0
    verdicts = [row["verdict"] for row in report["throughput"] + report["search_pages"]]
    assert report["targets_missed"] == verdicts.count("MISSED")
