"""Helpers for the subscription tests: started subscriptions, their periods and events as a party
reads them, the batch, and time passing (a subscription's clock moved back, which only a
superuser can write)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from tests.support import Api, User, body

Conn = psycopg.Connection[TupleRow]


def start(user: User, product_id: str, quantity: int = 1, key: str | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"product_id": product_id, "quantity": quantity}
    if key is not None:
        args["idempotency_key"] = key
    reply = user.api.rpc("start_subscription", **args)
    assert reply.status_code == 200, reply.text
    subscription: dict[str, Any] = body(reply)
    return subscription


def stop(api: Api, subscription_id: str) -> dict[str, Any]:
    reply = api.rpc("stop_subscription", subscription_id=subscription_id)
    assert reply.status_code == 200, reply.text
    subscription: dict[str, Any] = body(reply)
    return subscription


def periods(api: Api, subscription_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = body(
        api.get("/subscription_periods", subscription_id=f"eq.{subscription_id}", order="seq")
    )
    return rows


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
    db.execute(
        "update public.subscriptions set created_at = created_at - %(i)s::interval,"
        " paid_until = paid_until - %(i)s::interval, due_at = due_at - %(i)s::interval,"
        " grace_since = grace_since - %(i)s::interval, suspended_at = suspended_at - %(i)s::interval"
        " where id = %(id)s",
        {"i": interval, "id": subscription_id},
    )
    db.execute(
        "update public.subscription_periods set starts_at = starts_at - %(i)s::interval,"
        " ends_at = ends_at - %(i)s::interval where subscription_id = %(id)s",
        {"i": interval, "id": subscription_id},
    )


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
