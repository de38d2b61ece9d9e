"""Provider earnings, buyer spending and the credit analytics, with orders in them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tests.support import Api, body
from tests.support.marketplace import D, MakeUser, buyer, list_product, placed, setting


@pytest.fixture
def fee_percent(service_api: Api) -> Iterator[Decimal]:
    with setting(service_api, "marketplace_config", "platform_fee_percent", "20") as fee:
        yield fee


def decimals(row: dict[str, Any], *columns: str) -> tuple[Decimal, ...]:
    return tuple(D(str(row[c])) for c in columns)


def test_earnings_by_day_month_and_product_with_fees_and_refunds(
    service_api: Api, make_user: MakeUser, fee_percent: Decimal
) -> None:
    provider, alice, bob = make_user("farmer"), buyer(service_api, make_user, "100"), make_user()
    slice_, node = list_product(provider, price="10"), list_product(provider, category="node", price="5")
    first = placed(alice, (slice_["id"], 1), (node["id"], 2))  # 20, fee 4
    second = placed(alice, (slice_["id"], 1))  # 10, fee 2, then refunded 5 (1 of it fee)
    placed(alice, (node["id"], 1))  # pending: not earned
    for order in (first, second):
        assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200
    refund = provider.api.rpc("refund_order", order_id=second["id"], reason="late", amount="5")
    assert refund.status_code == 200

    today = dt.datetime.now(dt.UTC).date()
    daily = body(provider.api.get("/provider_earnings_daily"))
    assert [(r["day"], r["orders"]) for r in daily] == [(today.isoformat(), 2)]
    assert decimals(daily[0], "gross", "fee", "refunded", "fee_refunded", "net") == (
        D(30),
        D(6),
        D(5),
        D(1),
        D(20),
    )
    monthly = body(provider.api.get("/provider_earnings_monthly"))
    assert monthly[0]["month"] == today.replace(day=1).isoformat()
    assert decimals(monthly[0], "gross", "net") == (D(30), D(20))
    by_product = {r["product_id"]: r for r in body(provider.api.get("/provider_earnings_by_product"))}
    assert decimals(by_product[slice_["id"]], "units", "gross", "fee", "refunded", "net") == (
        D(2),
        D(20),
        D(4),
        D(5),
        D(12),
    )
    assert decimals(by_product[node["id"]], "units", "gross", "fee", "refunded", "net") == (
        D(2),
        D(10),
        D(2),
        D(0),
        D(8),
    )
    # What the provider's account shows is what the views say they keep.
    assert D(str(body(provider.api.get("/credit_accounts"))[0]["balance"])) == 20

    spending = {r["category"]: r for r in body(alice.api.get("/buyer_spending_by_category"))}
    assert decimals(spending["compute"], "paid", "refunded", "spent") == (D(20), D(5), D(15))
    assert decimals(spending["node"], "paid", "spent") == (D(10), D(10))
    # Each side sees only its own rows.
    assert body(alice.api.get("/provider_earnings_daily")) == []
    assert body(provider.api.get("/buyer_spending_by_category")) == []
    assert body(bob.api.get("/provider_earnings_by_product")) == []
    admin = make_user("admin")
    assert any(r["provider_id"] == provider.id for r in body(admin.api.get("/provider_earnings_daily")))


def test_credit_analytics_include_orders(service_api: Api, make_user: MakeUser, fee_percent: Decimal) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "100")
    summary_before = body(service_api.rpc("platform_credit_summary"))
    today_before = body(service_api.rpc("platform_daily_stats"))[-1]
    product = list_product(provider, price="10")
    paid, cancelled = placed(alice, (product["id"], 1)), placed(alice, (product["id"], 2))
    pending = placed(alice, (product["id"], 3))
    assert provider.api.rpc("fulfil_order", order_id=paid["id"]).status_code == 200
    assert alice.api.rpc("cancel_order", order_id=cancelled["id"]).status_code == 200
    assert provider.api.rpc("refund_order", order_id=paid["id"], reason="x", amount="5").status_code == 200

    summary = body(service_api.rpc("platform_credit_summary"))
    delta = {
        k: D(str(summary[k])) - D(str(summary_before[k]))
        for k in ("spent", "platform_revenue", "held", "circulation")
    }
    assert delta == {"spent": 5, "platform_revenue": 1, "held": 30, "circulation": -1}
    today = body(service_api.rpc("platform_daily_stats"))[-1]
    assert D(str(today["spent"])) - D(str(today_before["spent"])) == 5
    assert D(str(today["platform_revenue"])) - D(str(today_before["platform_revenue"])) == 1
    # Circulation counts credits held for open orders on the users' side: only the fee left it.
    assert D(str(today["circulation"])) - D(str(today_before["circulation"])) == -1

    mine = body(alice.api.get("/credit_daily_activity"))[0]
    assert decimals(mine, "spent", "received") == (D(40), D(5))  # held for the open order counts as spent
    theirs = body(provider.api.get("/credit_daily_activity"))[0]
    assert decimals(theirs, "received") == (D(8) - D(4),)
    spenders = {
        r["user_id"]: D(str(r["total"])) for r in body(service_api.rpc("top_credit_users", max_rows=1000))
    }
    assert spenders[alice.id] == 35
    earners = body(service_api.rpc("top_credit_users", direction="earners", max_rows=1000))
    assert {r["user_id"]: D(str(r["total"])) for r in earners}[provider.id] == 4
    assert pending["status"] == "pending"
