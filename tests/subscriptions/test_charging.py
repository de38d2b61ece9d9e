"""rpc/charge_due_subscriptions through PostgREST: periods paid when they end and the next held at
the price of the moment, a batch behind catching up, credits running out (grace, suspension,
cancellation) and a top-up resuming; overlapping batches, side by side by provider, and busy
accounts left to a later call; the backlog it leaves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import pairwise
from typing import Any

import psycopg
import pytest
from psycopg.rows import TupleRow

from cli.dev.stack import LocalStack
from tests.support import Api, User, body
from tests.support.marketplace import (
    Call,
    D,
    MakeUser,
    account,
    audit_is_clean,
    buyer,
    fund,
    list_product,
    race,
)
from tests.support.subscriptions import (
    account_held,
    backdate,
    charge,
    charge_all_due,
    due_subscription,
    events,
    overdue_subscriptions,
    periods,
    renewed_once,
    start,
    stop,
    stop_all,
    subscribe,
    subscription,
    subscription_config,
)

Conn = psycopg.Connection[TupleRow]


def test_an_ended_period_is_paid_and_the_next_held_at_the_new_price(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="2", unit="hour")
    started = start(alice, product["id"])
    # A price change applies from the next period: the running one keeps its price.
    assert provider.api.patch("/products", {"price": "3"}, id=f"eq.{product['id']}").status_code == 200
    earned_before = account(provider)[0]
    backdate(db, started["id"], "1 hour")

    done = charge(service_api)
    assert done["renewed"] >= 1 and done["done"] is True
    first, second = periods(alice.api, started["id"])
    assert (first["status"], D(str(first["charged_amount"])), D(str(first["unit_price"]))) == (
        "charged",
        D("2"),
        D("2"),
    )
    assert (second["seq"], second["status"], D(str(second["amount"]))) == (2, "held", D("3"))
    assert second["starts_at"] == first["ends_at"]  # contiguous, however late the batch ran
    assert subscription(alice.api, started["id"])["paid_until"] == second["ends_at"]
    assert account(alice) == (D("5"), D("3"))
    assert account(provider)[0] == earned_before + D("2") - D(str(first["fee_amount"]))
    assert events(provider.api, started["id"]) == ["started", "renewed"]
    stop_all(service_api, (alice, started))


def test_a_batch_behind_catches_up_period_by_period_within_its_budget(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    started = subscribe(alice, provider)
    backdate(db, started["id"], "3 hours")  # three periods have ended

    one_step = charge(service_api, max_periods=1)
    assert (one_step["renewed"], one_step["periods_charged"], one_step["done"]) == (1, 1, False)
    rest = charge(service_api)
    assert (rest["renewed"], rest["periods_charged"], rest["done"]) == (2, 2, True)
    rows = periods(alice.api, started["id"])
    assert [(row["seq"], row["status"]) for row in rows] == [
        (1, "charged"),
        (2, "charged"),
        (3, "charged"),
        (4, "held"),
    ]
    assert all(later["starts_at"] == earlier["ends_at"] for earlier, later in pairwise(rows))
    assert datetime.fromisoformat(rows[-1]["ends_at"]) > datetime.fromisoformat(rest["as_of"])
    assert account(alice) == (D("6"), D("1"))
    # Nothing is due any more: a batch again charges nothing.
    assert charge(service_api)["periods_charged"] == 0
    stop_all(service_api, (alice, started))


def test_credits_running_out_mean_grace_then_suspension_and_a_top_up_resumes(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "1")
    with subscription_config(service_api, grace_period="2 hours", suspension_period="3 hours"):
        started = subscribe(alice, provider)
        backdate(db, started["id"], "1 hour")
        assert charge(service_api)["grace"] >= 1
        unpaid = subscription(alice.api, started["id"])
        assert unpaid["status"] == "grace"
        assert unpaid["grace_since"] == periods(alice.api, started["id"])[0]["ends_at"]
        assert account(alice) == (D("0"), D("0"))  # the first period paid; nothing held

        backdate(db, started["id"], "2 hours")  # the grace is over
        assert charge(service_api)["suspended"] >= 1
        suspended = subscription(provider.api, started["id"])
        assert suspended["status"] == "suspended"

        # Two hours of grace ran unpaid, and the next period needs one more credit: 2 are not enough.
        fund(service_api, alice, "2")
        assert charge(service_api)["resumed"] == 0
        assert subscription(alice.api, started["id"])["status"] == "suspended"
        fund(service_api, alice, "1")
        assert charge(service_api)["resumed"] == 1

        resumed = subscription(alice.api, started["id"])
        assert resumed["status"] == "active" and resumed["grace_since"] is None
        rows = periods(alice.api, started["id"])
        assert [(r["seq"], r["kind"], r["status"], D(str(r["amount"]))) for r in rows] == [
            (1, "period", "charged", D("1")),
            (2, "arrears", "charged", D("2")),
            (3, "period", "held", D("1")),
        ]
        # The arrears: from the last period paid to the suspension, when the workload stopped.
        assert rows[1]["starts_at"] == rows[0]["ends_at"] and rows[1]["ends_at"] == suspended["suspended_at"]
        assert account(alice) == (D("0"), D("1"))
        assert events(alice.api, started["id"]) == ["started", "grace", "suspended", "resumed"]
        stop(alice.api, started["id"])
    audit_is_clean(service_api)


def test_an_unpaid_subscription_is_cancelled_settling_what_the_balance_can(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "1")
    with subscription_config(service_api, grace_period="1 hour", suspension_period="1 hour"):
        started = subscribe(alice, provider)
        backdate(db, started["id"], "1 hour")
        charge(service_api)
        backdate(db, started["id"], "1 hour")
        charge(service_api)
        assert subscription(alice.api, started["id"])["status"] == "suspended"
        fund(service_api, alice, "0.5")  # not enough to resume
        backdate(db, started["id"], "1 hour")
        assert charge(service_api)["cancelled"] >= 1

    ended = subscription(alice.api, started["id"])
    assert ended["status"] == "cancelled" and ended["due_at"] is None
    arrears = periods(alice.api, started["id"])[-1]
    # An hour of grace was owed; the balance paid what it could, the rest is never charged.
    assert (arrears["kind"], D(str(arrears["charged_amount"]))) == ("arrears", D("0.5"))
    assert account(alice) == (D("0"), D("0"))
    assert events(provider.api, started["id"]) == ["started", "grace", "suspended", "cancelled"]
    refused = alice.api.rpc("stop_subscription", subscription_id=started["id"])
    assert refused.status_code == 409 and body(refused)["code"] == "invalid_transition"
    audit_is_clean(service_api)


def test_a_product_off_sale_is_not_renewed(service_api: Api, make_user: MakeUser, db: Conn) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="1", unit="hour")
    started = start(alice, product["id"])
    assert provider.api.patch("/products", {"active": False}, id=f"eq.{product['id']}").status_code == 200
    backdate(db, started["id"], "1 hour")
    assert charge(service_api)["cancelled"] >= 1
    assert subscription(alice.api, started["id"])["status"] == "cancelled"
    assert account(alice) == (D("9"), D("0"))  # the period that ran, paid; nothing held
    audit_is_clean(service_api)


@contextmanager
def batch_in_flight(stack: LocalStack, max_periods: int) -> Iterator[dict[str, Any]]:
    """A batch's answer, its transaction still open for the block and committed after it."""
    with psycopg.connect(stack.superuser_db_url) as batch:
        row = batch.execute("select public.charge_due_subscriptions(now(), %s)", (max_periods,)).fetchone()
        assert row is not None
        yield dict(row[0])


def test_overlapping_batches_take_different_subscriptions_and_charge_each_period_once(
    service_api: Api, make_user: MakeUser, db: Conn, stack: LocalStack
) -> None:
    charge_all_due(service_api)
    started = []
    for _ in range(2):
        provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
        started.append((alice, subscribe(alice, provider)))
    backdate(db, started[0][1]["id"], "70 minutes")  # the first is due first
    backdate(db, started[1][1]["id"], "1 hour")

    with batch_in_flight(stack, max_periods=1) as first_batch:
        assert first_batch["renewed"] == 1
        # While the first batch holds its subscription, the second takes the other one.
        assert charge(service_api)["renewed"] == 1
    assert charge(service_api)["periods_charged"] == 0
    assert all(renewed_once(alice.api, sub["id"]) for alice, sub in started)
    stop_all(service_api, *started)
    audit_is_clean(service_api)


def test_batches_side_by_side_charge_different_providers(
    service_api: Api, make_user: MakeUser, db: Conn, stack: LocalStack
) -> None:
    charge_all_due(service_api)
    first_provider, second_provider = make_user("farmer"), make_user("farmer")
    started = [
        (subscriber, subscribe(subscriber, provider), ago)
        for subscriber, provider, ago in (
            (buyer(service_api, make_user, "10"), first_provider, "70 minutes"),
            (buyer(service_api, make_user, "10"), second_provider, "65 minutes"),
            (buyer(service_api, make_user, "10"), first_provider, "1 hour"),
        )
    ]
    for _, sub, ago in started:
        backdate(db, sub["id"], ago)

    with batch_in_flight(stack, max_periods=2) as first_batch:
        # The first batch claims the first provider, whose two subscriptions fill it: not the
        # two due first overall, which would have held both providers' accounts.
        assert first_batch["renewed"] == 2
        # A second batch does not wait for it: it charges the other provider's subscription.
        assert charge(service_api)["renewed"] == 1
    assert charge(service_api)["periods_charged"] == 0
    assert all(renewed_once(subscriber.api, sub["id"]) for subscriber, sub, _ in started)
    stop_all(service_api, *((subscriber, sub) for subscriber, sub, _ in started))
    audit_is_clean(service_api)


@pytest.mark.parametrize("busy", ["buyer", "provider"])
def test_a_subscription_whose_buyer_or_provider_is_busy_waits_for_a_later_call(
    busy: str, service_api: Api, make_user: MakeUser, db: Conn, stack: LocalStack
) -> None:
    charge_all_due(service_api)
    alice, started = due_subscription(service_api, make_user, db, hours=1)
    held = alice.id if busy == "buyer" else subscription(alice.api, started)["provider_id"]

    with account_held(stack, held):
        # The batch waits for no account: it leaves the period due. A busy buyer's subscription
        # was taken and left (`done` false: call again); a busy provider is not claimed at all.
        left = charge(service_api)
        assert (left["periods_charged"], left["done"]) == (0, busy == "provider")
    done = charge(service_api)
    assert (done["renewed"], done["done"]) == (1, True)
    assert renewed_once(alice.api, started)
    stop(alice.api, started)
    audit_is_clean(service_api)


def test_the_backlog_counts_subscriptions_left_due(service_api: Api, make_user: MakeUser, db: Conn) -> None:
    charge_all_due(service_api)
    assert overdue_subscriptions(service_api) == 0
    alice, started = due_subscription(service_api, make_user, db)
    assert overdue_subscriptions(service_api) == 1
    charge(service_api)
    assert overdue_subscriptions(service_api) == 0
    stop(alice.api, started)


def test_a_stop_in_flight_keeps_the_batch_off_its_subscription(
    service_api: Api, make_user: MakeUser, db: Conn, stack: LocalStack
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    started = subscribe(alice, provider)
    backdate(db, started["id"], "1 hour")

    with psycopg.connect(stack.superuser_db_url) as stopping:
        stopping.execute("select public.stop_subscription(%s)", (started["id"],))
        # The stop holds the subscription: the batch skips it rather than charge its period too.
        assert charge(service_api)["periods_charged"] == 0
        stopping.commit()
    assert charge(service_api)["periods_charged"] == 0
    # The stop charged the period and the hour it had started since; the batch, nothing.
    assert [(p["kind"], p["status"]) for p in periods(alice.api, started["id"])] == [
        ("period", "charged"),
        ("arrears", "charged"),
    ]
    assert subscription(alice.api, started["id"])["status"] == "stopped"
    assert account(alice) == (D("8"), D("0"))
    audit_is_clean(service_api)


def test_racing_batches_and_stops_charge_every_period_once(
    service_api: Api, make_user: MakeUser, db: Conn, stack: LocalStack
) -> None:
    charge_all_due(service_api)
    providers = [make_user("farmer") for _ in range(3)]
    products = [list_product(provider, price="1", unit="hour") for provider in providers]
    # Providers subscribe to each other too: accounts are locked in both directions.
    for provider in providers:
        fund(service_api, provider, "20")
    subscribers = [buyer(service_api, make_user, "20") for _ in range(5)] + providers
    started = []
    for n, subscriber in enumerate(subscribers):
        for product in (products[n % 3], products[(n + 1) % 3]):
            if product["provider_id"] != subscriber.id:
                started.append((subscriber, start(subscriber, product["id"])))
    for _, sub in started:
        backdate(db, sub["id"], "3 hours")  # three periods due each

    service = User("service_role", "", stack.service_role_key, service_api)
    calls: list[Call] = [(service, "charge_due_subscriptions", {"max_periods": 4}) for _ in range(10)]
    calls += [
        (subscriber, "stop_subscription", {"subscription_id": sub["id"]}) for subscriber, sub in started[::3]
    ]
    results = race(stack, calls, workers=8)
    assert all(status == 200 for status, _ in results), results
    charge_all_due(service_api)

    for subscriber, sub in started:
        paid = [row for row in periods(subscriber.api, sub["id"]) if row["kind"] == "period"]
        assert all(later["starts_at"] == earlier["ends_at"] for earlier, later in pairwise(paid))
        if subscription(subscriber.api, sub["id"])["status"] == "active":
            assert len(paid) == 4 and paid[-1]["status"] == "held"
            stop(subscriber.api, sub["id"])
    audit_is_clean(service_api)
