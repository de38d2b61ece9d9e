"""Concurrency through PostgREST: racing orders never over-hold or oversell, racing transitions
move credits once, and any mix of orders, cancels, failures, captures and refunds (providers
buying from each other, so locks are taken in both directions) leaves the ledger sound."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
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


def order_call(user: User, product: dict[str, Any], quantity: int = 1, key: str | None = None) -> Call:
    args: dict[str, Any] = {"items": [{"product_id": product["id"], "quantity": quantity}]}
    if key:
        args["idempotency_key"] = key
    return user, "place_order", args


def reasons(results: list[tuple[int, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status, payload in results:
        key = "ok" if status == 200 else f"{status} {payload.get('code')}"
        out[key] = out.get(key, 0) + 1
    return out


def test_one_buyers_racing_orders_never_hold_more_than_the_balance(
    stack: LocalStack, service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="1")
    results = race(stack, [order_call(alice, product) for _ in range(30)])
    assert reasons(results) == {"ok": 10, "409 insufficient_credits": 20}
    assert account(alice) == (D(0), D("10"))
    audit_is_clean(service_api)


def test_racing_orders_never_oversell_a_capacity(
    stack: LocalStack, service_api: Api, make_user: MakeUser
) -> None:
    provider = make_user("farmer")
    node = list_product(provider, category="node", price="1", capacity=5)
    buyers = [buyer(service_api, make_user, "5") for _ in range(20)]
    results = race(stack, [order_call(b, node) for b in buyers])
    assert reasons(results) == {"ok": 5, "409 capacity_exceeded": 15}
    assert body(provider.api.get("/products", id=f"eq.{node['id']}"))[0]["units_in_use"] == 5
    audit_is_clean(service_api)


def test_racing_retries_of_one_order_place_it_once(
    stack: LocalStack, service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "10")
    product = list_product(provider, price="3")
    results = race(stack, [order_call(alice, product, 2, key="checkout-42") for _ in range(8)])
    assert {status for status, _ in results} == {200}
    assert len({payload["id"] for _, payload in results}) == 1
    assert account(alice) == (D("4"), D("6"))


def test_racing_transitions_move_credits_once(
    stack: LocalStack, service_api: Api, make_user: MakeUser
) -> None:
    provider, alice = make_user("farmer"), buyer(service_api, make_user, "100")
    product = list_product(provider, price="2")
    orders = [
        body(alice.api.rpc("place_order", items=[{"product_id": product["id"], "quantity": 1}]))
        for _ in range(8)
    ]
    calls: list[Call] = []
    for order in orders:
        calls += [
            (provider, "fulfil_order", {"order_id": order["id"]}),
            (provider, "fulfil_order", {"order_id": order["id"]}),
            (alice, "cancel_order", {"order_id": order["id"]}),
            (provider, "fail_order", {"order_id": order["id"], "reason": "race"}),
        ]
    results = race(stack, calls)
    # Per order one transition wins; a second fulfil may replay the win, everything else is refused.
    outcomes = [results[i : i + 4] for i in range(0, len(results), 4)]
    for outcome in outcomes:
        won = {payload["status"] for status, payload in outcome if status == 200}
        assert len(won) == 1, outcome
        assert all(
            status == 200 or (status, payload["code"]) == (409, "invalid_transition")
            for status, payload in outcome
        )
    refunds = race(
        stack,
        [
            (provider, "refund_order", {"order_id": o["id"], "reason": "race"})
            for o in orders
            for _ in range(3)
        ],
    )
    fulfilled = sum(1 for outcome in outcomes if any(p.get("status") == "fulfilled" for _, p in outcome))
    assert reasons(refunds).get("ok", 0) == fulfilled
    assert account(alice) == (D("100"), D(0)) and account(provider) == (D(0), D(0))
    audit_is_clean(service_api)


def test_any_mix_of_order_operations_keeps_the_ledger_sound(
    stack: LocalStack, service_api: Api, make_user: MakeUser, db: psycopg.Connection[TupleRow]
) -> None:
    rng = random.Random(4)
    providers = [make_user("farmer") for _ in range(3)]
    for provider in providers:
        fund(service_api, provider, "40")  # providers buy from each other too
    buyers = [buyer(service_api, make_user, "40") for _ in range(5)] + providers
    products = [
        list_product(p, price=rng.choice(["0.5", "1.25", "3.333333"])) for p in providers for _ in range(2)
    ]
    products.append(list_product(providers[0], category="node", price="2", capacity=4))

    def random_order() -> Call:
        who = rng.choice(buyers)
        product = rng.choice([p for p in products if p["provider_id"] != who.id])
        return order_call(who, product, rng.randint(1, 3))

    by_id = {u.id: u for u in buyers}
    first = race(stack, [random_order() for _ in range(60)])
    assert all(status < 500 for status, _ in first), reasons(first)
    orders = [payload for status, payload in first if status == 200]

    def action(order: dict[str, Any]) -> Call:
        provider, owner = by_id[order["provider_id"]], by_id[order["buyer_id"]]
        choice: Callable[[], Call] = rng.choice(
            [
                lambda: (provider, "fulfil_order", {"order_id": order["id"]}),
                lambda: (provider, "fulfil_order", {"order_id": order["id"]}),
                lambda: (owner, "cancel_order", {"order_id": order["id"]}),
                lambda: (provider, "fail_order", {"order_id": order["id"], "reason": "mix"}),
            ]
        )
        return choice()

    second = race(stack, [action(o) for o in orders for _ in range(2)] + [random_order() for _ in range(30)])
    assert all(status < 500 for status, _ in second), reasons(second)
    captured = [p for status, p in second if status == 200 and p.get("status") == "fulfilled"]

    def refund(order: dict[str, Any]) -> Call:
        amount = rng.choice([None, "0.1", "0.333333", str(D(str(order["total"])) / 2)])
        args: dict[str, Any] = {"order_id": order["id"], "reason": "mix"}
        if amount is not None:
            args["amount"] = amount
        return by_id[order["provider_id"]], "refund_order", args

    third = race(stack, [refund(o) for o in captured for _ in range(2)] + [random_order() for _ in range(30)])
    assert all(status < 500 for status, _ in third), reasons(third)
    audit_is_clean(service_api)
    held: dict[str, Decimal] = {
        str(u): D(str(h))
        for u, h in db.execute(
            "select buyer_id::text, sum(held_amount) from public.orders where buyer_id = any(%s::uuid[]) "
            "and status = 'pending' group by 1",
            ([u.id for u in buyers],),
        )
    }
    for user in buyers:
        assert account(user)[1] == held.get(user.id, 0)
