"""Helpers for the subscription tests: started subscriptions, their periods and events as a party
reads them, the batch, and time passing (a subscription's clock moved back, which only a
superuser can write)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from cli.dev.clock import pass_time
from cli.dev.stack import LocalStack
from tests.support import Api, User, body
from tests.support.marketplace import D, MakeUser, account, audit_is_clean, buyer, list_product

Conn = psycopg.Connection[TupleRow]


def start(user: User, product_id: str, quantity: int = 1, key: str | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"product_id": product_id, "quantity": quantity}
    if key is not None:
        args["idempotency_key"] = key
    reply = user.api.rpc("start_subscription", **args)
    assert reply.status_code == 200, reply.text
    subscription: dict[str, Any] = body(reply)
    return subscription


def subscribe(subscriber: User, provider: User, price: str = "1", unit: str = "hour") -> dict[str, Any]:
    """`subscriber`'s subscription to a new product of `provider`: hourly at 1 credit unless told."""
    return start(subscriber, list_product(provider, price=price, unit=unit)["id"])


def two_buyers(service_api: Api, make_user: MakeUser, usd: str = "10") -> tuple[User, User, User]:
    """A provider and two buyers of `usd` credits each."""
    return make_user("farmer"), buyer(service_api, make_user, usd), buyer(service_api, make_user, usd)


def two_buyers_due(
    service_api: Api, make_user: MakeUser, db: Conn, first_ago: str, second_ago: str
) -> tuple[tuple[User, dict[str, Any]], tuple[User, dict[str, Any]]]:
    """Two buyers of 10 credits, each with an hourly subscription to the same provider, started
    `first_ago` and `second_ago`."""
    provider, first, second = two_buyers(service_api, make_user)
    subscriptions = (first, subscribe(first, provider)), (second, subscribe(second, provider))
    for (_, started), ago in zip(subscriptions, (first_ago, second_ago), strict=True):
        backdate(db, started["id"], ago)
    return subscriptions


def stop(api: Api, subscription_id: str) -> dict[str, Any]:
    reply = api.rpc("stop_subscription", subscription_id=subscription_id)
    assert reply.status_code == 200, reply.text
    subscription: dict[str, Any] = body(reply)
    return subscription


def stop_all(service_api: Api, *started: tuple[User, dict[str, Any]]) -> None:
    """Each (subscriber, subscription) stopped by its subscriber, then the ledger audited."""
    for subscriber, sub in started:
        stop(subscriber.api, sub["id"])
    audit_is_clean(service_api)


def stop_gives_back_to_the_lot(user: User, subscription_id: str, price: Decimal, expires: datetime) -> None:
    """A stop of `user`'s subscription of `price` a period, held from a promotional lot expiring at
    `expires`: it charges part of the period and gives the rest back to the lot, with its expiry;
    nothing stays held and the credits bought are untouched."""
    bought, _ = account(user)
    charged = D(str(stop(user.api, subscription_id)["period"]["charged_amount"]))
    assert D("0") < charged < price
    lots = body(user.api.get("/credit_lots", select="remaining,expires_at", live="is.true"))
    assert [D(str(lot["remaining"])) for lot in lots] == [price - charged]
    assert datetime.fromisoformat(lots[0]["expires_at"]) == expires
    assert account(user) == (bought + price - charged, D("0"))


def periods(api: Api, subscription_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = body(
        api.get("/subscription_periods", subscription_id=f"eq.{subscription_id}", order="seq")
    )
    return rows


def renewed_once(api: Api, subscription_id: str) -> bool:
    """Whether the subscription's first period is charged and its second held."""
    return [(p["seq"], p["status"]) for p in periods(api, subscription_id)] == [(1, "charged"), (2, "held")]


@contextmanager
def account_held(stack: LocalStack, user_id: str) -> Iterator[None]:
    """Another transaction holds the user's credit account (as a transfer does) for the block."""
    with psycopg.connect(stack.superuser_db_url) as holder:
        holder.execute("select from public.credit_accounts where user_id = %s for no key update", (user_id,))
        yield


def events(api: Api, subscription_id: str) -> list[str]:
    rows = body(api.get("/subscription_events", subscription_id=f"eq.{subscription_id}", order="id"))
    return [row["event"] for row in rows]


def subscription(api: Api, subscription_id: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = body(api.get("/subscriptions", id=f"eq.{subscription_id}"))
    assert len(rows) == 1, rows
    return rows[0]


def charge(service_api: Api, **args: Any) -> dict[str, Any]:
    reply = service_api.rpc("charge_due_subscriptions", **args)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = body(reply)
    return result


def charge_all_due(service_api: Api) -> None:
    """Whatever earlier tests left due, so that a test's batch finds its own subscriptions."""
    while not charge(service_api, max_periods=10000)["done"]:
        pass


def backdate(db: Conn, subscription_id: str, interval: str) -> None:
    """`interval` passes for the subscription: every time it and its periods hold moves back."""
    pass_time(db, subscription_id, interval)


def due_subscription(service_api: Api, make_user: MakeUser, db: Conn, hours: int = 2) -> tuple[User, str]:
    """A buyer and their hourly subscription whose period ended `hours` ago (overdue past the
    backlog's 15 minutes of grace), with credits to renew it."""
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    started = start(alice, list_product(provider, price="1", unit="hour")["id"])
    backdate(db, started["id"], f"{hours} hours")
    return alice, started["id"]


def overdue_subscriptions(service_api: Api) -> int:
    """What rpc/upkeep_backlog counts overdue for the subscriptions' batch."""
    rows = body(service_api.rpc("upkeep_backlog"))
    return int(next(row["overdue"] for row in rows if row["job"] == "charge_due_subscriptions"))


@contextmanager
def subscription_config(service_api: Api, **settings: str) -> Iterator[None]:
    """Known grace and suspension periods for the block, put back afterwards."""
    before = body(service_api.get("/subscription_config"))[0]
    reply = service_api.rpc("set_subscription_config", **settings)
    assert reply.status_code == 200, reply.text
    try:
        yield
    finally:
        service_api.rpc("set_subscription_config", **{name: before[name] for name in settings})
