"""rpc/charge_due_subscriptions renews plain subscriptions set-based
(sql/20261203030000_metering_speed.sql) and leaves the rest to its step function: at the edges of
that split, every rule holds. A buyer short of one of two renewals, a budget smaller than what is
due, renewals beside a subscription several periods behind, expiring credits paying a renewal, and
each account updated (and broadcast) once a batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from tests.support import Api, body
from tests.support.marketplace import (
    D,
    MakeUser,
    account,
    audit_is_clean,
    buyer,
    grant_promotion,
    list_product,
)
from tests.support.realtime import readable_messages
from tests.support.subscriptions import (
    backdate,
    charge,
    charge_all_due,
    events,
    periods,
    start,
    stop_all,
    stop_gives_back_to_the_lot,
    subscribe,
    subscription,
    two_buyers,
    two_buyers_due,
)

Conn = psycopg.Connection[TupleRow]


def balance_changes(db: Conn, user_id: str) -> list[dict[str, Any]]:
    """The balance changes broadcast to the user, oldest first."""
    messages = readable_messages(db, user_id, f"balance:{user_id}")
    return [payload for _, event, payload in messages if event == "balance_changed"]


def test_a_buyer_short_of_one_of_two_renewals_renews_the_one_due_first(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "3")
    first, second = subscribe(alice, provider), subscribe(alice, provider)
    backdate(db, first["id"], "70 minutes")
    backdate(db, second["id"], "1 hour")

    # One credit left: the renewal due first takes it, the other goes into grace (as one step at
    # a time would have done), rather than both or neither.
    done = charge(service_api)
    assert (done["renewed"], done["grace"], done["periods_charged"]) == (1, 1, 2)
    assert subscription(alice.api, first["id"])["status"] == "active"
    assert subscription(alice.api, second["id"])["status"] == "grace"
    assert account(alice) == (D("0"), D("1"))
    assert events(alice.api, second["id"]) == ["started", "grace"]
    stop_all(service_api, (alice, first), (alice, second))


def test_a_budget_smaller_than_the_renewals_due_renews_the_oldest_first(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    (alice, older), (bob, younger) = two_buyers_due(service_api, make_user, db, "70 minutes", "1 hour")

    one = charge(service_api, max_periods=1)
    assert (one["renewed"], one["periods_charged"], one["done"]) == (1, 1, False)
    assert [p["status"] for p in periods(alice.api, older["id"])] == ["charged", "held"]
    assert [p["status"] for p in periods(bob.api, younger["id"])] == ["held"]
    rest = charge(service_api)
    assert (rest["renewed"], rest["periods_charged"], rest["done"]) == (1, 1, True)
    assert [p["status"] for p in periods(bob.api, younger["id"])] == ["charged", "held"]
    stop_all(service_api, (alice, older), (bob, younger))


def test_renewals_beside_a_subscription_behind_stay_within_the_budget_and_charge_each_period_once(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    # Three periods ended for Alice's: the step function's.
    (alice, behind), (bob, plain) = two_buyers_due(service_api, make_user, db, "3 hours", "1 hour")

    steps = []
    while True:
        done = charge(service_api, max_periods=2)
        steps.append(done["periods_charged"])
        if done["done"]:
            break
    assert all(step <= 2 for step in steps) and sum(steps) == 4
    for user, started, held in ((alice, behind, 4), (bob, plain, 2)):
        rows = periods(user.api, started["id"])
        assert [(p["seq"], p["status"]) for p in rows] == [
            *((seq, "charged") for seq in range(1, held)),
            (held, "held"),
        ]
        assert all(later["starts_at"] == earlier["ends_at"] for earlier, later in pairwise(rows))
    assert account(alice) == (D("6"), D("1")) and account(bob) == (D("8"), D("1"))
    stop_all(service_api, (alice, behind), (bob, plain))


def test_expiring_credits_pay_a_renewal_first_and_a_stop_gives_them_back_with_their_expiry(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "5")
    expires = datetime.now(UTC) + timedelta(days=90)
    grant_promotion(service_api, alice, "1488", expires)
    started = subscribe(alice, provider, price="744", unit="month")
    backdate(db, started["id"], "32 days")  # the first month has ended, the second has not

    assert charge(service_api)["renewed"] == 1
    # The lot paid the second month too; the bought credits are untouched.
    assert body(alice.api.get("/credit_lots", select="remaining", live="is.true")) == []
    assert account(alice) == (D("5"), D("744"))
    stop_gives_back_to_the_lot(alice, started["id"], D("744"), expires)
    audit_is_clean(service_api)


def test_a_batch_of_renewals_updates_and_broadcasts_each_account_once(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "20")
    started = [subscribe(alice, provider, price=price) for price in ("2", "3")]
    for sub in started:
        backdate(db, sub["id"], "1 hour")
    before = {user.id: len(balance_changes(db, user.id)) for user in (alice, provider)}

    assert charge(service_api)["renewed"] == 2
    # The captures of the ended periods and the holds of the next ones, made in one batch
    # (create_transfers): one change for the buyer and one for the provider, the batch's final state.
    changes = balance_changes(db, alice.id)[before[alice.id] :]
    assert (
        [(D(str(c["balance"])), D(str(c["held"]))) for c in changes]
        == [account(alice)]
        == [(D("10"), D("5"))]
    )
    assert len(balance_changes(db, provider.id)[before[provider.id] :]) == 1
    stop_all(service_api, *((alice, sub) for sub in started))


def test_a_buyer_paying_with_expiring_credits_renews_in_the_batch_of_plain_buyers(
    service_api: Api, make_user: MakeUser, db: Conn
) -> None:
    charge_all_due(service_api)
    provider, alice, bob = two_buyers(service_api, make_user, "5")
    grant_promotion(service_api, alice, "4", datetime.now(UTC) + timedelta(days=90))
    product = list_product(provider, price="1", unit="hour")["id"]
    started = [start(alice, product), start(bob, product)]
    for sub in started:
        backdate(db, sub["id"], "1 hour")
    earned_before = account(provider)[0]

    # One batch, one create_transfers call: Alice's movements through the single path (her lot
    # spent first), Bob's set-based, the provider paid by both.
    assert charge(service_api)["renewed"] == 2
    assert body(alice.api.get("/credit_lots", select="remaining", live="is.true")) == [{"remaining": 2}]
    assert account(alice) == (D("7"), D("1"))
    assert account(bob) == (D("3"), D("1"))
    paid = [p for user, sub in zip((alice, bob), started, strict=True) for p in periods(user.api, sub["id"])]
    earned = sum(
        D(str(p["charged_amount"])) - D(str(p["fee_amount"])) for p in paid if p["status"] == "charged"
    )
    assert account(provider)[0] - earned_before == earned > 0
    stop_all(service_api, *zip((alice, bob), started, strict=True))
