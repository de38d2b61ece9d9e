"""What providers and buyers learn as it happens, read as Supabase Realtime authorizes it (the
policies on realtime.messages, and joins through the Realtime double behind the gateway): the
provider's feed of subscription events, the buyer's low-balance warning, balance changes with the
burn rate and runway, and the same two in the balance read. Also: a provider who lost their role
sells no new subscription, and subscription income counts in the provider's earnings and in the
buyer's spending."""

from __future__ import annotations

import datetime
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from tests.support import Api, User, body
from tests.support.client import Doubles
from tests.support.marketplace import D, MakeUser, buyer, failure, list_product, placed, setting
from tests.support.realtime import join_reply, readable_messages
from tests.support.subscriptions import backdate, charge, charge_all_due, start, stop, subscription_config

USAGE_PRICES = {"usage_prices": {"egress_gb": "0.5"}}


def decimals(row: dict[str, Any], *columns: str) -> tuple[Any, ...]:
    return tuple(D(str(row[column])) for column in columns)


def payloads(db: psycopg.Connection[TupleRow], viewer: str, topic: str, event: str) -> list[dict[str, Any]]:
    return [payload for _, name, payload in readable_messages(db, viewer, topic) if name == event]


def test_a_provider_reads_the_events_of_their_subscriptions_and_no_one_else_does(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, other_provider = make_user("farmer"), make_user("farmer")
    alice, bob = buyer(service_api, make_user, "20"), buyer(service_api, make_user, "20")
    product = list_product(provider, price="2", unit="hour")
    started = start(alice, product["id"], quantity=2)
    start(bob, list_product(other_provider, price="1", unit="hour")["id"])
    stop(alice.api, started["id"])

    topic = f"subscriptions:{provider.id}"
    messages = readable_messages(db, provider.id, topic)
    # The rows the provider reads, each with what starting or stopping the workload needs.
    rows = body(provider.api.get("/subscription_events", subscription_id=f"eq.{started['id']}", order="id"))
    assert [(name, message["id"], message["event"]) for _, name, message in messages] == [
        ("subscription_event", row["id"], row["event"]) for row in rows
    ]
    assert [row["event"] for row in rows] == ["started", "stopped"]
    assert {name for name, *_ in messages} == {topic}
    first = messages[0][2]
    assert (first["product_id"], first["quantity"], first["unit"]) == (product["id"], 2, "hour")
    assert D(str(first["amount"])) == 4 and first["buyer_id"] == alice.id

    # Another provider's topic carries theirs only; nobody else reads this one.
    assert [
        p["provider_id"]
        for p in payloads(db, other_provider.id, f"subscriptions:{other_provider.id}", "subscription_event")
    ] == [other_provider.id]
    for viewer in (alice.id, other_provider.id, None):
        assert readable_messages(db, viewer, topic) == []
    # A user's own balance topic does not open their subscriptions topic, nor the reverse.
    assert payloads(db, provider.id, f"balance:{provider.id}", "subscription_event") == []
    assert payloads(db, alice.id, f"subscriptions:{alice.id}", "balance_changed") == []


def test_only_the_provider_joins_their_subscriptions_topic(
    stack: LocalStack, make_user: MakeUser, doubles: Doubles
) -> None:
    provider, stranger = make_user("farmer"), make_user()
    topic = f"subscriptions:{provider.id}"
    url, anon_key = stack.api_url, stack.anon_key
    assert join_reply(url, anon_key, topic, provider.token)["status"] == "ok"
    for token in (stranger.token, anon_key):
        refused = join_reply(url, anon_key, topic, token)
        assert refused["status"] == "error", refused
        assert "You do not have permissions to read from this Channel topic" in refused["response"]["reason"]


def test_a_low_balance_warning_is_broadcast_to_the_buyer_alone(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    with subscription_config(service_api, low_balance_hours="24"):
        start(alice, list_product(provider, price="1", unit="hour")["id"], quantity=2)  # 8 left: 4 hours
    warnings = body(alice.api.get("/low_balance_warnings"))
    broadcast = payloads(db, alice.id, f"balance:{alice.id}", "low_balance")
    assert [w["id"] for w in broadcast] == [w["id"] for w in warnings] and len(warnings) == 1
    assert {k: D(str(broadcast[0][k])) for k in ("balance", "cost_per_hour", "runway_hours")} == {
        "balance": D("8"),
        "cost_per_hour": D("2"),
        "runway_hours": D("4"),
    }
    assert broadcast[0]["threshold_hours"] == 24
    assert payloads(db, provider.id, f"balance:{alice.id}", "low_balance") == []


def balance_read(user: User) -> dict[str, Any]:
    rows: list[dict[str, Any]] = body(user.api.get("/credit_balances"))
    assert [row["user_id"] for row in rows] == [user.id]
    return rows[0]


def test_balance_changes_and_reads_carry_the_burn_rate_and_the_runway(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "40")
    assert (balance_read(alice)["burn_rate"], balance_read(alice)["runway_hours"]) == (0, None)
    hourly = list_product(provider, price="2", unit="hour", attributes={"location": "BE", **USAGE_PRICES})
    started = start(alice, hourly["id"], quantity=2)  # 4 an hour, 36 left: 9 hours

    # The hold's change already counts the subscription it pays for.
    changes = payloads(db, alice.id, f"balance:{alice.id}", "balance_changed")
    assert [(D(str(c["balance"])), D(str(c["burn_rate"])), c["runway_hours"]) for c in changes] == [
        (D("40"), D("0"), None),  # the purchase
        (D("36"), D("4"), 9),
    ]
    read = balance_read(alice)
    assert [D(str(read[k])) for k in ("burn_rate", "runway_hours", "expiring")] == [D("4"), D("9"), D("0")]

    # Metered usage counts at its rate of the last 24 hours: 3 GB at 0.5 within the first hour.
    reply = provider.api.rpc(
        "report_usage", subscription_id=started["id"], unit="egress_gb", quantity="3", idempotency_key="u-1"
    )
    assert reply.status_code == 200, reply.text
    read = balance_read(alice)
    assert (D(str(read["burn_rate"])), D(str(read["runway_hours"]))) == (D("5.5"), D("6.54"))  # 36 / 5.5
    rate = body(alice.api.rpc("subscription_burn_rate"))[0]
    assert (D(str(rate["cost_per_hour"])), D(str(rate["runway_hours"]))) == (D("5.5"), D("6.54"))
    # Nobody else reads it: RLS keeps the view to one's own account.
    assert [row["user_id"] for row in body(provider.api.get("/credit_balances"))] == [provider.id]

    stop(alice.api, started["id"])
    assert (balance_read(alice)["burn_rate"], balance_read(alice)["runway_hours"]) == (0, None)
    last = payloads(db, alice.id, f"balance:{alice.id}", "balance_changed")[-1]
    assert (D(str(last["burn_rate"])), last["runway_hours"]) == (D("0"), None)


def test_a_batch_tells_each_provider_and_buyer_once_and_the_feed_has_every_renewal(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "40")
    product = list_product(provider, price="2", unit="hour")
    started = [start(alice, product["id"], quantity=quantity) for quantity in (2, 1)]  # 6 an hour: 34 left
    for sub in started:
        backdate(db, sub["id"], "1 hour")
    changes_before = len(payloads(db, alice.id, f"balance:{alice.id}", "balance_changed"))
    assert charge(service_api)["renewed"] == 2  # both periods paid, the next held: 28 left

    # The provider is signalled once, with the batch's last renewal; the feed has both.
    feed = body(provider.api.get("/subscription_events", event="eq.renewed", order="id"))
    assert sorted(row["subscription_id"] for row in feed) == sorted(sub["id"] for sub in started)
    signals = [
        p
        for p in payloads(db, provider.id, f"subscriptions:{provider.id}", "subscription_event")
        if p["event"] == "renewed"
    ]
    assert [(p["id"], p["subscription_id"], p["period_id"]) for p in signals] == [
        (feed[-1]["id"], feed[-1]["subscription_id"], feed[-1]["period_id"])
    ]
    quantity = next(sub["quantity"] for sub in started if sub["id"] == feed[-1]["subscription_id"])
    assert (signals[0]["product_id"], signals[0]["quantity"], signals[0]["unit"]) == (
        product["id"],
        quantity,
        "hour",
    )
    # The buyer's balance once, its final state with the burn rate and the runway: 28 / 6.
    changes = payloads(db, alice.id, f"balance:{alice.id}", "balance_changed")[changes_before:]
    assert [decimals(c, "balance", "held", "burn_rate", "runway_hours") for c in changes] == [
        (D("28"), D("6"), D("6"), D("4.66"))
    ]
    for sub in started:
        stop(alice.api, sub["id"])


def test_a_provider_without_the_role_starts_no_subscription(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "20")
    product = list_product(provider, price="1", unit="hour")
    assert service_api.rpc("revoke_role", user_id=provider.id, role="farmer").status_code == 200
    failure(alice.api.rpc("start_subscription", product_id=product["id"]), 409, "provider_not_selling")
    assert body(alice.api.get("/subscriptions")) == []
    assert D(str(balance_read(alice)["balance"])) == 20


def test_subscription_income_counts_in_the_providers_earnings(service_api: Api, make_user: MakeUser) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "100")
    product = list_product(provider, price="3", unit="hour")
    with setting(service_api, "marketplace_config", "platform_fee_percent", "10"):
        stop(alice.api, start(alice, product["id"], quantity=2)["id"])  # one started hour: 6, fee 0.6
    today = datetime.datetime.now(datetime.UTC).date()
    expected = {
        "orders": 0,
        "periods": 1,
        "gross": D("6"),
        "fee": D("0.6"),
        "refunded": D("0"),
        "net": D("5.4"),
    }

    def figures(row: dict[str, Any]) -> dict[str, Any]:
        return {k: row[k] if k in ("orders", "periods") else D(str(row[k])) for k in expected}

    daily = body(provider.api.get("/provider_earnings_daily"))
    assert isinstance(daily, list), daily
    assert [(row["day"], figures(row)) for row in daily] == [(today.isoformat(), expected)]
    monthly = body(provider.api.get("/provider_earnings_monthly"))
    assert [(row["month"], figures(row)) for row in monthly] == [(today.replace(day=1).isoformat(), expected)]
    by_product = body(provider.api.get("/provider_earnings_by_product"))
    assert [(row["product_id"], row["product_name"], row["units"], figures(row)) for row in by_product] == [
        (product["id"], product["name"], 0, expected)
    ]
    # The ledger agrees: the provider received the net.
    assert D(str(balance_read(provider)["balance"])) == expected["net"]
    # Nobody else's earnings show them.
    for view in ("provider_earnings_daily", "provider_earnings_by_product"):
        assert body(alice.api.get(f"/{view}")) == []


def test_subscription_periods_count_in_the_buyers_spending(service_api: Api, make_user: MakeUser) -> None:
    provider, alice, bob = make_user("farmer"), buyer(service_api, make_user, "100"), make_user()
    slice_ = list_product(provider, price="10")
    order = placed(alice, (slice_["id"], 1))
    assert provider.api.rpc("fulfil_order", order_id=order["id"]).status_code == 200
    hourly = list_product(provider, price="3", unit="hour", attributes={"location": "BE", **USAGE_PRICES})
    running = start(alice, hourly["id"], quantity=2)
    reply = provider.api.rpc(
        "report_usage", subscription_id=running["id"], unit="egress_gb", quantity="1", idempotency_key="u-1"
    )
    assert reply.status_code == 200, reply.text
    with setting(service_api, "marketplace_config", "platform_fee_percent", "10"):
        stop(alice.api, running["id"])  # one started hour: 6, and the usage: 0.5, fee or not
    start(alice, hourly["id"])  # held, not charged: not spent yet
    # Taken off sale, the product is hidden from its buyer; what was paid for it stays spent.
    off_sale = body(provider.api.patch("/products", {"active": False}, id=f"eq.{hourly['id']}"))
    assert [product["active"] for product in off_sale] == [False]
    assert body(alice.api.get("/products", id=f"eq.{hourly['id']}")) == []

    rows, money = body(alice.api.get("/buyer_spending_by_category")), ("paid", "refunded", "spent")
    counts = ("buyer_id", "category", "orders", "units", "periods")
    assert [(*(row[column] for column in counts), *decimals(row, *money)) for row in rows] == [
        (alice.id, "compute", 1, 1, 2, D("16.5"), D("0"), D("16.5"))
    ]
    # Nobody else's spending shows them; an admin's shows them too.
    for other in (provider, bob):
        assert body(other.api.get("/buyer_spending_by_category")) == []
    admin = make_user("admin")
    everyone = body(admin.api.get("/buyer_spending_by_category", buyer_id=f"eq.{alice.id}"))
    assert [(row["periods"], D(str(row["spent"]))) for row in everyone] == [(2, D("16.5"))]
