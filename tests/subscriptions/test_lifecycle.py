"""Subscriptions through PostgREST: started with a period held in advance, stopped by the started
hour with the rest given back, each movement an ordinary ledger movement, the ledger sound."""

from __future__ import annotations

import calendar
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import psycopg
from psycopg.rows import TupleRow

from tests.support import Api, body
from tests.support.marketplace import (
    D,
    MakeUser,
    account,
    audit_is_clean,
    buyer,
    failure,
    grant_promotion,
    list_product,
)
from tests.support.subscriptions import (
    backdate,
    events,
    periods,
    start,
    stop,
    stop_gives_back_to_the_lot,
    subscribe,
    subscription_config,
)


def month_after(moment: datetime) -> datetime:
    """PostgreSQL's `+ interval '1 month'` in UTC: the same day next month, or that month's last."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def split(charged: Decimal, fee_percent: Decimal) -> tuple[Decimal, Decimal]:
    """(provider's earning, platform's fee) of a charge."""
    fee = (charged * fee_percent / 100).quantize(D("0.000001"), ROUND_HALF_UP)
    return charged - fee, fee


def test_an_hourly_subscription_holds_its_period_and_a_stop_charges_the_started_hour(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "100")
    product = list_product(provider, price="2.5", unit="hour")
    started = start(alice, product["id"], quantity=3)
    assert (started["status"], started["buyer_id"], started["provider_id"]) == (
        "active",
        alice.id,
        provider.id,
    )
    period = started["period"]
    assert (period["seq"], period["kind"], period["status"]) == (1, "period", "held")
    assert D(str(period["unit_price"])) == D("2.5") and D(str(period["amount"])) == D("7.5")
    assert datetime.fromisoformat(period["ends_at"]) - datetime.fromisoformat(
        period["starts_at"]
    ) == timedelta(hours=1)
    assert account(alice) == (D("92.5"), D("7.5"))
    before = account(provider)[0]

    stopped = stop(alice.api, started["id"])
    assert stopped["status"] == "stopped" and stopped["due_at"] is None
    charged = stopped["period"]
    # An hourly period is one hour: started, it is charged whole.
    assert (charged["status"], D(str(charged["charged_amount"])), D(str(charged["held_amount"]))) == (
        "charged",
        D("7.5"),
        D("0"),
    )
    earning, fee = split(D("7.5"), D(str(charged["fee_percent"])))
    assert D(str(charged["fee_amount"])) == fee
    assert account(alice) == (D("92.5"), D("0"))
    assert account(provider)[0] == before + earning
    assert events(alice.api, started["id"]) == ["started", "stopped"]
    # A stop again is a retry: nothing more moves.
    assert stop(alice.api, started["id"])["status"] == "stopped"
    assert account(alice) == (D("92.5"), D("0"))
    audit_is_clean(service_api)


def test_a_monthly_subscription_stopped_is_prorated_by_the_started_hour(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "1000")
    product = list_product(provider, price="100", unit="month")
    started = start(alice, product["id"], quantity=2)
    assert account(alice) == (D("800"), D("200"))
    backdate(db, started["id"], "90 minutes")  # the second hour has started
    period = periods(alice.api, started["id"])[0]
    starts = datetime.fromisoformat(period["starts_at"]).astimezone(UTC)
    hours = Decimal(int((month_after(starts) - starts).total_seconds()) // 3600)
    assert datetime.fromisoformat(period["ends_at"]) == month_after(starts)

    charged = stop(provider.api, started["id"])["period"]  # the provider may stop it too
    expected = (D("200") * 2 / hours).quantize(D("0.000001"), ROUND_HALF_UP)
    assert D(str(charged["charged_amount"])) == expected
    assert account(alice) == (D("1000") - expected, D("0"))
    assert events(provider.api, started["id"]) == ["started", "stopped"]
    audit_is_clean(service_api)


def test_expiring_credits_pay_first_and_come_back_with_their_expiry(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "5")
    expires = datetime.now(UTC) + timedelta(days=30)
    grant_promotion(service_api, alice, "744", expires)
    started = subscribe(alice, provider, price="744", unit="month")
    lots = body(alice.api.get("/credit_lots", select="remaining", live="is.true"))
    assert lots == [] and account(alice) == (D("5"), D("744"))  # the lot paid all of it

    backdate(db, started["id"], "1 minute")
    stop_gives_back_to_the_lot(alice, started["id"], D("744"), expires)
    audit_is_clean(service_api)


def test_a_retry_with_the_same_key_returns_the_same_subscription(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="1", unit="hour")
    key = f"sub-{uuid.uuid4()}"
    first = start(alice, product["id"], quantity=2, key=key)
    assert start(alice, product["id"], quantity=2, key=key)["id"] == first["id"]
    assert account(alice) == (D("8"), D("2"))
    reused = alice.api.rpc("start_subscription", product_id=product["id"], quantity=3, idempotency_key=key)
    failure(reused, 409, "duplicate_reference")
    assert account(alice) == (D("8"), D("2"))


def test_what_cannot_be_subscribed_to_is_refused_and_moves_nothing(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")

    def refused(product_id: str, status: int, reason: str, quantity: int = 1) -> None:
        failure(alice.api.rpc("start_subscription", product_id=product_id, quantity=quantity), status, reason)

    refused(list_product(provider, unit="once")["id"], 409, "not_subscribable")
    refused(list_product(provider, unit="hour", capacity=5)["id"], 409, "not_subscribable")
    hourly = list_product(provider, price="4", unit="hour")
    refused(hourly["id"], 400, "invalid_quantity", quantity=0)
    refused(hourly["id"], 400, "invalid_quantity", quantity=10001)
    refused(hourly["id"], 409, "insufficient_credits", quantity=3)
    refused(str(uuid.uuid4()), 404, "product_not_found")
    off_sale = list_product(provider, price="1", unit="hour")
    assert provider.api.patch("/products", {"active": False}, id=f"eq.{off_sale['id']}").status_code == 200
    refused(off_sale["id"], 409, "product_inactive")
    failure(provider.api.rpc("start_subscription", product_id=hourly["id"]), 400, "own_product")
    assert account(alice) == (D("10"), D("0"))
    assert body(alice.api.get("/subscriptions")) == []
    audit_is_clean(service_api)


def test_a_stop_after_the_paid_period_ended_charges_the_time_run_since(
    service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    started = start(alice, list_product(provider, price="1.5", unit="hour")["id"])
    backdate(db, started["id"], "90 minutes")  # paid until half an hour ago; no batch since

    stop(alice.api, started["id"])
    rows = periods(alice.api, started["id"])
    assert [(r["kind"], D(str(r["charged_amount"]))) for r in rows] == [
        ("period", D("1.5")),
        ("arrears", D("1.5")),
    ]
    assert rows[1]["starts_at"] == rows[0]["ends_at"]
    assert account(alice) == (D("7"), D("0"))
    audit_is_clean(service_api)


def test_a_balance_lasting_under_the_threshold_is_warned_once_in_it(
    service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    hourly = list_product(provider, price="1", unit="hour")
    with subscription_config(service_api, low_balance_hours="0"):  # never
        start(alice, hourly["id"])
    assert body(alice.api.get("/low_balance_warnings")) == []
    with subscription_config(service_api, low_balance_hours="24"):
        start(alice, hourly["id"])  # 2 credits an hour, 8 left: 4 hours
        start(alice, hourly["id"])  # fewer still, but warned within the last 24 hours
    warnings = body(alice.api.get("/low_balance_warnings"))
    assert [
        (D(str(w["cost_per_hour"])), D(str(w["balance"])), D(str(w["runway_hours"])), w["threshold_hours"])
        for w in warnings
    ] == [(D("2"), D("8"), D("4"), 24)]
    assert body(provider.api.get("/low_balance_warnings")) == []  # the buyer's alone
